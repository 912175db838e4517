"""Image / CompressedImage <-> numpy: views honouring step, every fault, decode, class map."""
from __future__ import annotations

import io
import subprocess
import sys
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


def test_no_parser_but_jpeg_and_png_sees_network_data():
    """Pillow would try every format it knows (TIFF, PSD, ICO, ...) on unrecognised bytes;
    only the JPEG and PNG decoders may see a camera's data.  A fresh interpreter shows which
    of Pillow's format plugins ran."""
    import subprocess
    import sys

    script = """
import io, sys
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage
from dfanet_ros.conversions import BadImage, compressed_to_array
# Headers of TIFF, Photoshop and ICO data (written by hand: saving with Pillow would load
# every plugin).
for head in (b"II*\\x00\\x08", b"8BPS", b"\\x00\\x00\\x01\\x00"):
    data = head + bytes(60)
    try:
        compressed_to_array(CompressedImage(format="png", data=data))
    except BadImage as e:
        assert e.fault == "decode", e
png = io.BytesIO()
PILImage.new("RGB", (4, 4)).save(png, format="PNG")
pixels, _ = compressed_to_array(CompressedImage(format="png", data=png.getvalue()))
assert pixels.shape == (4, 4, 3)
print(sorted(m for m in sys.modules if m.startswith("PIL.") and m.endswith("ImagePlugin")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    plugins = set(eval(out))  # noqa: S307 - our own printed list
    # Pillow's pre-initialisation imports these five; none of the other ~40 may load.
    assert plugins <= {"PIL.JpegImagePlugin", "PIL.PngImagePlugin", "PIL.BmpImagePlugin",
                       "PIL.GifImagePlugin", "PIL.PpmImagePlugin"}, plugins


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
