"""Image / CompressedImage <-> numpy: views honouring step, every fault, decode, class map."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers_ros import camvid_card, image_message, read_rgb
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from dfanet_model.classes import CAMVID
from dfanet_ros.conversions import (
    BadImage,
    array_to_compressed,
    array_to_image,
    class_map_message,
    compressed_to_array,
    image_to_array,
)

pytestmark = pytest.mark.ros
RNG = np.random.default_rng(0)


@pytest.mark.parametrize("encoding, channels", [("rgb8", 3), ("bgr8", 3), ("rgba8", 4),
                                                ("bgra8", 4), ("mono8", 1), ("yuv422", 2),
                                                ("yuv422_yuy2", 2)])
@pytest.mark.parametrize("pad", [0, 5])
def test_image_to_array_is_a_view_honouring_step(encoding, channels, pad):
    pixels = RNG.integers(0, 256, (7, 10, channels), dtype=np.uint8)
    msg = image_message(pixels, encoding, (1, 2), pad=pad)
    assert msg.step == 10 * channels + pad
    view = image_to_array(msg)
    assert view.shape == (7, 10, channels) and np.array_equal(view, pixels)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


def _msg(**fields):
    msg = image_message(np.zeros((4, 6, 3), np.uint8), "rgb8", (0, 0))
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize("fields, fault, text", [
    ({"encoding": "rgb16"}, "encoding", "unsupported encoding 'rgb16'"),
    ({"encoding": ""}, "encoding", "unsupported encoding ''"),
    ({"width": 0}, "empty", "zero-size image 0x4"),
    ({"height": 0}, "empty", "zero-size image 6x0"),
    ({"width": 100000, "height": 100000}, "too_large", "above max_image_pixels"),
    ({"step": 17}, "step", "step 17 < width 6 x 3"),
    ({"data": [0] * 71}, "short_data", "71 data bytes < step 18 x height 4 = 72"),
    # padded rows: enough bytes for the pixels (72), not for the rows (80)
    ({"step": 20, "data": [0] * 78}, "short_data", "78 data bytes < step 20 x height 4 = 80"),
    ({"encoding": "yuv422", "width": 5, "step": 10}, "odd_width", "even width, got 5"),
])
def test_every_fault_is_named(fields, fault, text):
    with pytest.raises(BadImage) as info:
        image_to_array(_msg(**fields), max_pixels=1 << 24)
    assert info.value.fault == fault
    assert text in str(info.value)


def test_max_image_pixels_is_the_largest_frame_taken():
    msg = _msg()  # 6x4: 24 pixels
    assert image_to_array(msg, max_pixels=24).shape == (4, 6, 3)
    with pytest.raises(BadImage, match="24 pixels, above max_image_pixels 23"):
        image_to_array(msg, max_pixels=23)
    png = io.BytesIO()
    PILImage.fromarray(np.zeros((4, 6, 3), np.uint8)).save(png, format="PNG")
    compressed = CompressedImage(format="png", data=png.getvalue())
    assert compressed_to_array(compressed, max_pixels=24)[0].shape == (4, 6, 3)
    with pytest.raises(BadImage, match="above max_image_pixels 23"):
        compressed_to_array(compressed, max_pixels=23)


def test_longer_data_than_needed_is_fine():
    msg = _msg(data=[3] * 100)
    assert image_to_array(msg).shape == (4, 6, 3)


def test_array_to_image_round_trip():
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 5, 6
    for pixels, encoding in ((RNG.integers(0, 256, (5, 9, 3), dtype=np.uint8), "rgb8"),
                             (RNG.integers(0, 11, (5, 9), dtype=np.uint8), "mono8")):
        msg = array_to_image(pixels, encoding, header)
        assert (msg.height, msg.width, msg.encoding) == (5, 9, encoding)
        assert msg.step == pixels[0].size and msg.header == header
        back = image_to_array(msg)
        assert np.array_equal(back.reshape(pixels.shape), pixels)
    with pytest.raises(ValueError, match="uint8"):
        array_to_image(np.zeros((2, 2), np.float32), "mono8", header)


def test_compressed_round_trip(sample_camvid):
    rgb = read_rgb(sorted((sample_camvid / "test").glob("*.jpg"))[0])
    png = array_to_compressed(rgb, Header(), "png")
    pixels, encoding = compressed_to_array(png)
    assert encoding == "rgb8" and np.array_equal(pixels, rgb)
    jpeg = array_to_compressed(rgb, Header(), "jpeg", quality=95)
    pixels, encoding = compressed_to_array(jpeg)
    assert encoding == "rgb8" and np.abs(pixels.astype(int) - rgb).mean() < 3
    grey = array_to_compressed(rgb[..., 0], Header(), "png")
    pixels, encoding = compressed_to_array(grey)
    assert encoding == "mono8" and np.array_equal(pixels[..., 0], rgb[..., 0])
    # image_transport's long format string
    jpeg.format = "rgb8; jpeg compressed bgr8"
    assert compressed_to_array(jpeg)[0].shape == rgb.shape


def _gif() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize("fmt, data, fault, text", [
    ("jpeg", b"\xff\xd8\xff\xe0 not really a jpeg", "decode", "corrupt jpeg data"),
    ("png", b"", "empty", "without data"),
    ("tiff", b"II*\x00", "encoding", "unsupported compressed format 'tiff'"),
    ("png", _gif(), "decode", "data is neither JPEG nor PNG (starts with 47494638)"),
    ("jpeg", b"II*\x00" + bytes(100), "decode", "data is neither JPEG nor PNG"),
])
def test_compressed_faults(fmt, data, fault, text):
    with pytest.raises(BadImage) as info:
        compressed_to_array(CompressedImage(format=fmt, data=data))
    assert info.value.fault == fault and text in str(info.value)


def _encoded(pixels: np.ndarray, fmt: str, **save) -> bytes:
    """``pixels`` encoded by Pillow (mode from the array: L, LA, RGB, RGBA), or ``P``."""
    buf = io.BytesIO()
    image = PILImage.fromarray(pixels)
    if save.pop("palette", False):
        image = image.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=4)
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def _decoded(data: bytes, fmt: str, max_pixels: int = 1 << 30) -> tuple[np.ndarray, str]:
    return compressed_to_array(CompressedImage(format=fmt, data=data), max_pixels)


@pytest.mark.parametrize("ext", [".bmp", ".tiff", ".webp", ".ppm"])
def test_only_jpeg_and_png_reach_the_decoder(ext):
    """OpenCV decodes a dozen formats; a camera's data reaches it only when its first bytes
    are JPEG's or PNG's, whatever the message's format string says."""
    import cv2

    ok, data = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))
    assert ok and cv2.imdecode(data, cv2.IMREAD_COLOR) is not None  # OpenCV would decode it
    for fmt in ("jpeg", "png"):
        with pytest.raises(BadImage, match="data is neither JPEG nor PNG") as info:
            _decoded(data.tobytes(), fmt)
        assert info.value.fault == "decode"


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` grey pixels, followed by the compressed
    zeros of its first 100 rows only: a bomb's header without a bomb's cost to build."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes((width + 1) * 100), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with the size in its frame header rewritten."""
    data = bytearray(_encoded(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_the_pixel_limit_is_checked_from_the_header_before_any_decode():
    """A 30000x30000 PNG bomb (900 MB of pixels in ~1 MB) is refused from its header: the file
    here holds only 100 rows, so a refusal after decoding would read "decode" or allocate
    900 MB, never "too_large"."""
    bomb = _png_claiming(30000, 30000)
    assert len(bomb) < 10_000
    with pytest.raises(BadImage, match=r"30000x30000 is 900000000 pixels, above "
                                       r"max_image_pixels 16777216") as info:
        _decoded(bomb, "png", max_pixels=4096 * 4096)
    assert info.value.fault == "too_large"
    with pytest.raises(BadImage, match="60000x40000 is 2400000000 pixels") as info:
        _decoded(_jpeg_claiming(60000, 40000), "jpeg", max_pixels=4096 * 4096)
    assert info.value.fault == "too_large"
    with pytest.raises(BadImage, match="zero-size PNG image 0x5") as info:
        _decoded(_png_claiming(0, 5), "png")
    assert info.value.fault == "empty"
    # Within the limit, the same small PNG goes on to the decoder, which finds its data short.
    with pytest.raises(BadImage, match="corrupt png data") as info:
        _decoded(_png_claiming(300, 300), "png")
    assert info.value.fault == "decode"


def _asymmetric() -> np.ndarray:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: any channel or
    axis swap shows."""
    frame = np.zeros((16, 24, 3), np.uint8)
    frame[:8, :12] = (255, 0, 0)
    frame[:8, 12:] = (0, 255, 0)
    frame[8:, :12] = (0, 0, 255)
    frame[8:, 12:] = 255
    return frame


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_frames_come_out_in_rgb_order(fmt):
    frame = _asymmetric()
    pixels, encoding = _decoded(_encoded(frame, fmt, quality=95), fmt.lower())
    assert encoding == "rgb8" and pixels.shape == (16, 24, 3)
    # Corners away from the edges JPEG blurs: exact for PNG, within JPEG's error otherwise.
    assert np.abs(pixels[2:6, 2:10].astype(int) - frame[2:6, 2:10]).max() <= 8
    assert np.abs(pixels[10:14, 14:22].astype(int) - frame[10:14, 14:22]).max() <= 8
    assert np.abs(pixels[2:6, 14:22].astype(int) - frame[2:6, 14:22]).max() <= 8
    assert np.abs(pixels[10:14, 2:10].astype(int) - frame[10:14, 2:10]).max() <= 8


def test_opencv_without_direct_rgb_decodes_the_same():
    """OpenCV before 4.11 (a distribution's python3-opencv) decodes to BGR and converts."""
    from dfanet_ros.conversions import _decode

    for data in (_encoded(_asymmetric(), "PNG"), _encoded(_asymmetric(), "JPEG")):
        buf = np.frombuffer(data, np.uint8)
        np.testing.assert_array_equal(_decode(buf, False, False, direct_rgb=False),
                                      _decode(buf, False, False, direct_rgb=True))


def _pillow_reference(data: bytes) -> np.ndarray:
    """What the node decoded with Pillow before OpenCV: L, RGB and RGBA kept, the rest RGB."""
    with PILImage.open(io.BytesIO(data)) as im:
        im = im if im.mode in ("L", "RGB", "RGBA") else im.convert("RGB")
        pixels = np.asarray(im)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


@pytest.mark.parametrize("mode, fmt, encoding", [
    ("L", "PNG", "mono8"), ("RGBA", "PNG", "rgba8"), ("LA", "PNG", "rgb8"),
    ("P", "PNG", "rgb8"), ("L", "JPEG", "mono8")])
def test_grey_alpha_and_palette_frames_decode_as_before(mode, fmt, encoding):
    rgba = np.dstack([_asymmetric(), np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)])
    pixels = {"L": rgba[..., 0], "LA": rgba[..., [1, 3]], "RGBA": rgba, "P": rgba[..., :3]}[mode]
    data = _encoded(pixels, fmt, palette=mode == "P")
    decoded, got = _decoded(data, fmt.lower())
    assert got == encoding
    np.testing.assert_array_equal(decoded, _pillow_reference(data))


def test_exif_orientation_leaves_the_pixels_as_stored():
    """A camera frame keeps its stored layout: OpenCV would turn a JPEG whose EXIF says
    "rotate 90" on its side unless told not to."""
    exif = PILImage.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    data = _encoded(_asymmetric(), "JPEG", quality=95, exif=exif.tobytes())
    pixels, _ = _decoded(data, "jpeg")
    assert pixels.shape == (16, 24, 3)
    assert np.abs(pixels[2:6, 2:10].astype(int) - (255, 0, 0)).max() <= 8


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_cut_frames_are_decode_faults(fmt):
    data = _encoded(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), fmt, quality=90)
    for cut in (len(data) // 2, len(data) - 2):
        with pytest.raises(BadImage, match=f"corrupt {fmt.lower()} data") as info:
            _decoded(data[:cut], fmt.lower())
        assert info.value.fault == "decode"


def test_readme_lists_every_fault():
    import re
    from pathlib import Path

    from dfanet_ros.conversions import FAULTS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.search(r"Faults: (.*?)\.\n(?!  )", readme, re.S)
    assert listed, "README has no 'Faults:' list"
    names = re.findall(r"(?:^|, )([a-z_]+)", re.sub(r"\s*\([^)]*\)", "", listed.group(1)))
    assert names == list(FAULTS)


def test_truncated_jpeg_and_too_large():
    jpeg = array_to_compressed(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), Header())
    cut = CompressedImage(format="jpeg", data=bytes(jpeg.data)[:200])
    with pytest.raises(BadImage, match="decode"):
        compressed_to_array(cut)
    with pytest.raises(BadImage, match="4096 pixels, above max_image_pixels 100"):
        compressed_to_array(jpeg, max_pixels=100)


def test_class_map_message():
    msg = class_map_message(camvid_card(), "model.safetensors")
    assert list(msg.ids) == list(range(11)) and list(msg.names) == list(CAMVID.names)
    assert list(msg.colors[:6]) == [*CAMVID.colors[0], *CAMVID.colors[1]]
    assert len(msg.colors) == 33 and msg.ignore_index == 11
    assert (msg.model, msg.dataset) == ("model.safetensors", "camvid")


def test_conversions_import_neither_torch_nor_the_engine():
    """The node checks camera frames before any model is loaded: conversions stay light."""
    code = ("import sys, dfanet_ros.conversions; "
            "print(sorted(m for m in ('torch', 'dfanet_ros.engine', 'dfanet_model.checkpoint') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
