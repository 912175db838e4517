"""What bag evaluation reads from a bag: the camera topic to replay, its frames, the ground truth.

Camera frames are decoded by the node's own ``conversions``, so a frame is bad here exactly when
the node would refuse it; ground-truth labels are mono8 class-id images matched by header stamp.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stamps import header_stamp_ns, split_stamp
from .io import (
    BAG_CAMERA_TOPIC,
    COMPRESSED_IMAGE,
    IMAGE,
    BagError,
    BagReader,
    normalize_topic,
    typestore,
)

CAMERA_TYPES = (IMAGE, COMPRESSED_IMAGE)
LABEL_ENCODINGS = ("mono8", "8UC1")


def stamp_str(stamp: int) -> str:
    """A header stamp in nanoseconds as ``sec.nanosec``, the way ROS tools print it."""
    sec, nanosec = split_stamp(stamp)
    return f"{sec}.{nanosec:09d}"


def resolve_camera_topic(reader: BagReader, requested: str | None, label_topic: str | None
                         ) -> str:
    """The camera topic to replay: the one asked for, else the default or the only image one."""
    if requested:
        return reader.require_topic(requested, CAMERA_TYPES, "camera").name
    if BAG_CAMERA_TOPIC in reader.topics:
        return reader.require_topic(BAG_CAMERA_TOPIC, CAMERA_TYPES, "camera").name
    label = normalize_topic(label_topic) if label_topic else None
    candidates = [t.name for t in reader.topics.values()
                  if t.msgtype in CAMERA_TYPES and t.name != label]
    if len(candidates) == 1:
        return candidates[0]
    what = "several image topics" if candidates else "no image topic"
    raise BagError(reader.path, f"{what}; choose one with --camera-topic. The bag has:\n"
                                f"{reader.describe_topics()}")


def _ros_message(raw: bytes, msgtype: str) -> Any:
    """The rclpy message of a bag's CDR bytes: decoded exactly as the node receives it."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    return deserialize_message(raw, Image if msgtype == IMAGE else CompressedImage)


def label_array(msg: Any) -> np.ndarray:
    """The (H, W) class ids of a mono8 label Image (rclpy), or ValueError naming the fault."""
    from dfanet_ros.conversions import image_to_array

    if msg.encoding not in LABEL_ENCODINGS:
        raise ValueError(f"encoding {msg.encoding!r}; expected {' or '.join(LABEL_ENCODINGS)} "
                         "class ids")
    return image_to_array(msg)[:, :, 0]


def read_ground_truth(reader: BagReader, topic: str) -> tuple[dict[int, np.ndarray], list[str]]:
    """Label images by header stamp, and warnings (duplicate stamps)."""
    name = reader.require_topic(topic, (IMAGE,), "ground-truth label").name
    labels: dict[int, np.ndarray] = {}
    duplicates = 0
    for _, raw in reader.raw_messages(name):
        msg = _ros_message(bytes(raw), IMAGE)
        stamp = header_stamp_ns(msg)
        if stamp in labels:
            duplicates += 1
            continue
        try:
            labels[stamp] = label_array(msg).copy()
        except ValueError as e:
            raise BagError(reader.path, f"ground-truth topic {name}, label at stamp "
                                        f"{stamp_str(stamp)}: {e}") from None
    warnings = []
    if duplicates:
        warnings.append(f"{duplicates} ground-truth label(s) repeat an earlier stamp; the "
                        "first of each was used")
    return labels, warnings


@dataclass
class CameraFrame:
    """One camera message of the bag: header stamp, bag receive time, CDR bytes, message."""

    stamp: int
    bag_time: int
    raw: bytes
    msg: Any  # the rosbags message (data views ``raw``)


def camera_frames(reader: BagReader, topic: str) -> Iterator[CameraFrame]:
    """The camera messages in bag order, each once: repeated header stamps are skipped."""
    msgtype = reader.topics[topic].msgtype
    store = typestore()
    seen: set[int] = set()
    for bag_time, data in reader.raw_messages(topic):
        raw = bytes(data)
        msg = store.deserialize_cdr(raw, msgtype)
        stamp = header_stamp_ns(msg)
        if stamp in seen:
            continue
        seen.add(stamp)
        yield CameraFrame(stamp, bag_time, raw, msg)


def camera_stamps(reader: BagReader, topic: str) -> tuple[list[int], int]:
    """Unique header stamps of the camera topic in bag order, and how many repeats there were."""
    stamps, seen, repeats = [], set(), 0
    for _, msg in reader.messages(topic):
        stamp = header_stamp_ns(msg)
        if stamp in seen:
            repeats += 1
        else:
            seen.add(stamp)
            stamps.append(stamp)
    return stamps, repeats


def decode_camera(frame: CameraFrame, msgtype: str) -> tuple[np.ndarray, str]:
    """Pixels and encoding of a camera frame, through the node's own conversions.

    Raises ``conversions.BadImage`` for a frame the node would refuse.
    """
    from dfanet_ros.conversions import compressed_to_array, image_to_array

    msg = _ros_message(frame.raw, msgtype)
    if msgtype == IMAGE:
        return image_to_array(msg), msg.encoding
    return compressed_to_array(msg)


def restamp(frame: CameraFrame, stamp: int) -> bytes:
    """The frame's message serialised again with another header stamp (for warm-up frames)."""
    sec, nanosec = split_stamp(stamp)
    msg = frame.msg
    header = dataclasses.replace(
        msg.header, stamp=dataclasses.replace(msg.header.stamp, sec=sec, nanosec=nanosec))
    msg = dataclasses.replace(msg, header=header)
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A progress bar over the camera frames, on stderr (stdout holds the summary)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, file=sys.stderr)
