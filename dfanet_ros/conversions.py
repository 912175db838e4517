"""sensor_msgs Image / CompressedImage <-> numpy, and the node's own messages.

No cv_bridge (PyPI's is ROS 1 code): raw images become numpy views of the message buffer (no
copy, ``step`` padding honoured), compressed ones are decoded with Pillow.  Every refusal is a
``BadImage`` whose ``fault`` is one short word (counted per fault in the node's diagnostics)
and whose message says what is wrong.  No torch: the node checks frames without the engine.
"""
from __future__ import annotations

import array
import io
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


def compressed_to_array(msg: CompressedImage, max_pixels: int = 1 << 30
                        ) -> tuple[np.ndarray, str]:
    """Decode a JPEG or PNG CompressedImage; returns (H, W, C) uint8 and its encoding."""
    from PIL import Image as PILImage

    fmt = msg.format.lower()
    # image_transport writes e.g. "jpeg", "png" or "rgb8; jpeg compressed bgr8".
    if fmt and not any(f in fmt for f in COMPRESSED_FORMATS):
        raise BadImage("encoding", f"unsupported compressed format {msg.format!r} "
                                   f"(supported: {', '.join(COMPRESSED_FORMATS)})")
    if len(msg.data) == 0:
        raise BadImage("empty", "compressed image without data")
    data = bytes(msg.data[:8])
    kind = next((name for sig, name in _SIGNATURES.items() if data.startswith(sig)), None)
    if kind is None:
        raise BadImage("decode", f"data is neither JPEG nor PNG (starts with {data[:4].hex()})")
    try:
        with PILImage.open(io.BytesIO(msg.data), formats=[kind]) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise BadImage("too_large", f"{width}x{height} is {width * height} pixels, "
                                            f"above max_image_pixels {max_pixels}")
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            pixels = np.asarray(im)
    except BadImage:
        raise
    except Exception as e:  # Pillow raises many types for damaged data
        raise BadImage("decode", f"corrupt {msg.format or 'compressed'} data "
                                 f"({type(e).__name__}: {e})") from None
    if pixels.ndim == 2:
        return pixels[:, :, None], "mono8"
    return pixels, "rgba8" if pixels.shape[2] == 4 else "rgb8"


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
    data.frombytes(np.ascontiguousarray(pixels))
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
