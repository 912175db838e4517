"""Header stamps as nanoseconds, for rosbags and rclpy messages alike.

The bag tools, the benchmarks' camera and collector and the bag evaluation all key frames by
their header stamp; they share these two functions.
"""
from __future__ import annotations

from typing import Any


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds since the epoch as (sec, nanosec), as a ROS header holds it."""
    return stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000


def header_stamp_ns(msg: Any) -> int:
    """The header stamp of a message (rosbags or rclpy) in nanoseconds."""
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
