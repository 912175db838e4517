"""The camera image encodings the node accepts (names from sensor_msgs/image_encodings).

Plain tables, no torch and no ROS: the message conversions check frames against them without
loading the engine, and the engine reads its pixel layouts from them.
"""
from __future__ import annotations

# Bytes per pixel of each supported encoding (the C of an (H, W, C) frame).
ENCODING_CHANNELS: dict[str, int] = {
    "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1,
    # 4:2:2 YUV, two bytes per pixel: "yuv422" and "uyvy" are U Y0 V Y1, "yuv422_yuy2" and
    # "yuyv" are Y0 U Y1 V.
    "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2,
}
# Source channel of R, G, B for the byte-per-channel encodings.
RGB_ORDER: dict[str, tuple[int, int, int]] = {
    "rgb8": (0, 1, 2), "rgba8": (0, 1, 2), "bgr8": (2, 1, 0), "bgra8": (2, 1, 0),
    "mono8": (0, 0, 0),
}
# (luma byte, chroma byte) within each 2-byte pixel of the 4:2:2 YUV encodings, whose pixels
# come in pairs sharing one U and one V: their frames need an even width.
YUV422_LAYOUT: dict[str, tuple[int, int]] = {
    "yuv422": (1, 0), "uyvy": (1, 0), "yuv422_yuy2": (0, 1), "yuyv": (0, 1),
}
