"""sensor_msgs Image / CompressedImage <-> numpy, and the node's own messages.

No cv_bridge (PyPI's is ROS 1 code): raw images become numpy views of the message buffer (no
copy, ``step`` padding honoured), compressed ones are decoded with OpenCV, as image_transport's
compressed plugin does, once their header has been read here.  Every refusal is a
``BadImage`` whose ``fault`` is one short word (counted per fault in the node's diagnostics)
and whose message says what is wrong.  No torch: the node checks frames without the engine.
"""
from __future__ import annotations

import array
import io
import struct
from typing import TYPE_CHECKING

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dfanet_ros.msg import ClassMap

from .encodings import ENCODING_CHANNELS, YUV422_LAYOUT

if TYPE_CHECKING:  # the card's module imports torch; conversions only read its fields
    from dfanet_model.checkpoint import ModelCard

# The faults a camera frame can have, as counted in diagnostics (``bad_<fault>``); "engine" is
# a frame the checks passed but the engine failed on (the node counts it and carries on).
FAULTS = ("encoding", "empty", "too_large", "step", "short_data", "odd_width", "decode",
          "engine")
COMPRESSED_FORMATS = ("jpeg", "png")
# The signatures that open each accepted format: data with any other start never reaches a
# decoder, so no other format's parser sees bytes from the network.
_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


class BadImage(ValueError):
    """A camera frame the node cannot use; ``fault`` is one of ``FAULTS``."""

    def __init__(self, fault: str, detail: str) -> None:
        self.fault = fault
        self.detail = detail
        super().__init__(f"{fault}: {detail}")


def check_image(msg: Image, max_pixels: int) -> int:
    """Validate an Image's fields (cheap: no pixel is read); returns its bytes per pixel."""
    channels = ENCODING_CHANNELS.get(msg.encoding)
    if channels is None:
        raise BadImage("encoding", f"unsupported encoding {msg.encoding!r} (supported: "
                                   f"{', '.join(ENCODING_CHANNELS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise BadImage("empty", f"zero-size image {width}x{height}")
    if height * width > max_pixels:
        raise BadImage("too_large", f"{width}x{height} is {height * width} pixels, above "
                                    f"max_image_pixels {max_pixels}")
    if step < width * channels:
        raise BadImage("step", f"step {step} < width {width} x {channels} byte(s) per pixel "
                               f"({msg.encoding})")
    if len(msg.data) < step * height:
        raise BadImage("short_data", f"{len(msg.data)} data bytes < step {step} x height "
                                     f"{height} = {step * height}")
    if msg.encoding in YUV422_LAYOUT and width % 2:
        raise BadImage("odd_width", f"{msg.encoding} needs an even width, got {width}")
    return channels


def image_to_array(msg: Image, max_pixels: int = 1 << 30) -> np.ndarray:
    """The pixels of ``msg`` as an (H, W, C) uint8 view of its buffer (row padding skipped)."""
    channels = check_image(msg, max_pixels)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, dtype=np.uint8, count=step * height)
    return data.reshape(height, step)[:, :width * channels].reshape(height, width, channels)


def _png_header(data: memoryview) -> tuple[int, int, bool, bool]:
    """(width, height, grey, alpha) from a PNG's IHDR chunk, which must come first."""
    if len(data) < 26 or bytes(data[12:16]) != b"IHDR":
        raise BadImage("decode", "corrupt png data (no IHDR header after the signature)")
    width, height = struct.unpack_from(">II", data, 16)
    colour_type = data[25]  # 0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA
    return width, height, colour_type == 0, colour_type == 6


# JPEG markers that stand alone (no length field follows): TEM, RST0-7.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not.
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: memoryview) -> tuple[int, int, bool]:
    """(width, height, grey) from a JPEG's frame header, found by walking the marker segments
    before it (an EXIF thumbnail inside APP1 is skipped with its segment)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height, data[pos + 9] == 1
        pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    raise BadImage("decode", "corrupt jpeg data (no frame header before the image data)")


def compressed_to_array(msg: CompressedImage, max_pixels: int = 1 << 30
                        ) -> tuple[np.ndarray, str]:
    """Decode a JPEG or PNG CompressedImage; returns (H, W, C) uint8 RGB order and its encoding.

    The size is read from the header and checked against ``max_pixels`` before any pixel is
    decoded, so a small file that claims a huge image never allocates it.
    """
    fmt = msg.format.lower()
    # image_transport writes e.g. "jpeg", "png" or "rgb8; jpeg compressed bgr8".
    if fmt and not any(f in fmt for f in COMPRESSED_FORMATS):
        raise BadImage("encoding", f"unsupported compressed format {msg.format!r} "
                                   f"(supported: {', '.join(COMPRESSED_FORMATS)})")
    if len(msg.data) == 0:
        raise BadImage("empty", "compressed image without data")
    data = memoryview(msg.data).cast("B")
    head = bytes(data[:8])
    kind = next((name for sig, name in _SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None:
        raise BadImage("decode", f"data is neither JPEG nor PNG (starts with {head[:4].hex()})")
    if kind == "PNG":
        width, height, grey, alpha = _png_header(data)
    else:
        (width, height, grey), alpha = _jpeg_header(data), False
    if width == 0 or height == 0:
        raise BadImage("empty", f"zero-size {kind} image {width}x{height}")
    if width * height > max_pixels:
        raise BadImage("too_large", f"{width}x{height} is {width * height} pixels, "
                                    f"above max_image_pixels {max_pixels}")
    pixels = _decode(np.frombuffer(data, np.uint8), grey, alpha)
    if isinstance(pixels, str) or pixels.shape[:2] != (height, width):
        why = pixels if isinstance(pixels, str) else "OpenCV decoded another size"
        raise BadImage("decode", f"corrupt {msg.format or kind.lower()} data ({why})")
    if pixels.ndim == 2:
        return pixels[:, :, None], "mono8"
    return pixels, "rgba8" if alpha else "rgb8"


def _decode(buf: np.ndarray, grey: bool, alpha: bool, direct_rgb: bool | None = None
            ) -> np.ndarray | str:
    """OpenCV's decode of a checked JPEG/PNG in RGB(A) order, or why it failed.

    Grey stays one channel and RGBA keeps its alpha (mono8, rgba8); palette and grey + alpha
    PNGs become RGB, as they did with Pillow.  EXIF orientation is ignored: a camera frame's
    pixels keep the layout its header states.  OpenCV decodes to BGR unless it has
    IMREAD_COLOR_RGB (4.11 on; ``direct_rgb`` None means "if it has"): older ones convert.
    """
    import cv2

    if direct_rgb is None:
        direct_rgb = hasattr(cv2, "IMREAD_COLOR_RGB")
    colour = cv2.IMREAD_COLOR_RGB if direct_rgb else cv2.IMREAD_COLOR
    flags = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_UNCHANGED if alpha else colour
    try:
        pixels = cv2.imdecode(buf, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as e:
        return str(e).strip().splitlines()[-1]
    if pixels is None:
        return "OpenCV could not decode it"
    if alpha:
        if pixels.dtype != np.uint8:  # 16 bits a channel: keep the high byte
            pixels = np.right_shift(pixels, 8).astype(np.uint8)
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
    return pixels if grey or direct_rgb else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def array_to_image(pixels: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image message holding a copy of ``pixels`` ((H, W) or (H, W, C) uint8)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W[, C]) uint8 array, got {pixels.dtype} "
                         f"{pixels.shape}")
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    msg = Image(header=header, height=height, width=width, encoding=encoding,
                is_bigendian=0, step=width * channels)
    # array.frombytes is one memcpy; assigning bytes or a list costs several times more.
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(pixels).data)
    msg.data = data
    return msg


def array_to_compressed(pixels: np.ndarray, header: Header, fmt: str = "jpeg",
                        quality: int = 90) -> CompressedImage:
    """A JPEG or PNG CompressedImage of an (H, W[, 3]) uint8 RGB or grey array."""
    from PIL import Image as PILImage

    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(COMPRESSED_FORMATS)}")
    buf = io.BytesIO()
    image = PILImage.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1
                               else pixels)
    image.save(buf, format="JPEG" if fmt == "jpeg" else "PNG", quality=quality)
    return CompressedImage(header=header, format=fmt, data=buf.getvalue())


def class_map_message(card: ModelCard, model: str, header: Header | None = None) -> ClassMap:
    """The ``dfanet_ros/ClassMap`` of a model card (ids, names, RGB colours)."""
    ignore = card.ignore_index if 0 <= card.ignore_index <= 255 else 255
    return ClassMap(header=header or Header(), ids=list(range(card.num_classes)),
                    names=list(card.class_names),
                    colors=[int(v) for rgb in card.class_colors for v in rgb],
                    ignore_index=ignore, model=model, dataset=card.dataset)
