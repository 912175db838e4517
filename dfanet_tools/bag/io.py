"""Reading and writing rosbag2 bags (mcap or sqlite3) without a ROS install.

Built on the pure-Python ``rosbags`` package, whose CDR serialisation matches rclpy's byte for
byte, with the message definitions of the newest ROS 2 release it knows (``Stores.LATEST``);
``sensor_msgs/Image`` and ``CompressedImage`` are unchanged since Humble, so the bags play in
Humble, Jazzy and Kilted alike.  Bags are directories holding ``metadata.yaml`` and the storage
file, exactly what ``ros2 bag record`` writes and ``ros2 bag play`` reads.
"""
from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfanet_ros.topics import DEFAULT_CAMERA_TOPIC

from ..stamps import split_stamp

STORAGES = ("mcap", "sqlite3")
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
# The topics ``dfanet bag make`` writes and ``dfanet bag eval`` reads unless told otherwise:
# the node's default camera in the root namespace, as bags store topics (absolute).
BAG_CAMERA_TOPIC = "/" + DEFAULT_CAMERA_TOPIC
DEFAULT_LABEL_TOPIC = "/camera/label_gt"


class BagError(ValueError):
    """A bag that cannot be used as asked; the message names the bag and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"bag {self.path}: {problem}")


@functools.lru_cache(maxsize=1)
def typestore() -> Any:
    """The rosbags type store all bag messages are (de)serialised with."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.LATEST)


def normalize_topic(name: str) -> str:
    """Bags store absolute topic names: ``camera/image_raw`` -> ``/camera/image_raw``."""
    name = name.strip()
    if not name or name == "/":
        raise ValueError(f"invalid topic name {name!r}")
    return name if name.startswith("/") else "/" + name


def _header(stamp_ns: int, frame_id: str) -> Any:
    types = typestore().types
    sec, nanosec = split_stamp(stamp_ns)
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_message(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """A ``sensor_msgs/Image`` (rosbags type) of an (H, W) or (H, W, C) uint8 array, unpadded.

    ``encoding`` names the array's pixel layout (e.g. rgb8, mono8); it is stored as given.
    """
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W[, C]) uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    return typestore().types[IMAGE](
        header=_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=width * channels,
        data=np.ascontiguousarray(array).reshape(-1))


def compressed_message(data: bytes, fmt: str, stamp_ns: int, frame_id: str) -> Any:
    """A ``sensor_msgs/CompressedImage`` (rosbags type) holding encoded bytes (jpeg, png)."""
    return typestore().types[COMPRESSED_IMAGE](
        header=_header(stamp_ns, frame_id), format=fmt,
        data=np.frombuffer(data, dtype=np.uint8))


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


class BagWriter:
    """Writes a rosbag2 directory; use as a context manager (the bag is complete on exit)."""

    def __init__(self, path: str | os.PathLike, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin

        from .mcap_storage import Writer  # rosbags' writer, mcap written with every CRC

        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r} (valid: {', '.join(STORAGES)})")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(self.path, "exists already; choose a new path or remove it")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> "BagWriter":
        self._writer.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._writer.close()
        else:  # never leave a half-written bag behind
            self._writer.abort()
            shutil.rmtree(self.path, ignore_errors=True)

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic, offered as reliable, keep-last 10 (what ``ros2 bag play`` reuses)."""
        from rosbags.interfaces import (
            Qos,
            QosDurability,
            QosHistory,
            QosLiveliness,
            QosReliability,
            QosTime,
        )

        never = QosTime(sec=0, nsec=0)
        qos = Qos(history=QosHistory.KEEP_LAST, depth=10,
                  reliability=QosReliability.RELIABLE, durability=QosDurability.VOLATILE,
                  deadline=never, lifespan=never, liveliness=QosLiveliness.AUTOMATIC,
                  liveliness_lease_duration=never, avoid_ros_namespace_conventions=False)
        topic = normalize_topic(topic)
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=[qos])

    def write(self, topic: str, msg: Any, timestamp_ns: int) -> None:
        """Serialise ``msg`` (a rosbags message) onto ``topic`` with receive time ``timestamp``."""
        topic = normalize_topic(topic)
        if topic not in self._connections:
            self.add_topic(topic, msg.__msgtype__)
        data = typestore().serialize_cdr(msg, msg.__msgtype__)
        self._writer.write(self._connections[topic], timestamp_ns, data)


class BagReader:
    """Reads a rosbag2 bag (directory with metadata.yaml, or a bare .mcap/.db3 file)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from rosbags.rosbag2 import Reader

        from .mcap_storage import McapCorrupt, verify

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(self.path, "not found")
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            raise BagError(self.path, "not a rosbag2 bag (directory without metadata.yaml)")
        files = sorted(self.path.glob("*.mcap")) if self.path.is_dir() else [self.path]
        self.crcs_checked = 0  # 0 for a bag without CRCs: damage inside messages goes unseen
        for storage_file in (f for f in files if f.suffix == ".mcap"):
            try:
                self.crcs_checked += verify(storage_file)
            except McapCorrupt as e:
                where = "" if storage_file == self.path else f"{storage_file.name}: "
                raise BagError(self.path, f"corrupted: {where}{e}") from None
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as e:  # rosbags raises its own error types for damaged bags
            raise BagError(self.path, f"cannot be read ({e})") from None
        self.topics: dict[str, TopicInfo] = {
            name: TopicInfo(name, info.msgtype or "(mixed types)", info.msgcount)
            for name, info in self._reader.topics.items()}

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    def describe_topics(self) -> str:
        """One line per topic: name, type and message count."""
        if not self.topics:
            return "  (no topics)"
        return "\n".join(f"  {t.name}  {t.msgtype}  ({t.count} messages)"
                         for t in sorted(self.topics.values(), key=lambda t: t.name))

    def require_topic(self, topic: str, msgtypes: tuple[str, ...], role: str) -> TopicInfo:
        """The topic's info, or a BagError naming what is missing and what the bag has."""
        name = normalize_topic(topic)
        info = self.topics.get(name)
        if info is None:
            raise BagError(self.path, f"no {role} topic {name}; the bag has:\n"
                                      f"{self.describe_topics()}")
        if info.msgtype not in msgtypes:
            raise BagError(self.path, f"{role} topic {name} has type {info.msgtype}, "
                                      f"expected {' or '.join(msgtypes)}")
        return info

    def raw_messages(self, topic: str) -> Iterator[tuple[int, bytes]]:
        """(receive timestamp ns, CDR bytes) of every message on ``topic``, in bag order."""
        name = normalize_topic(topic)
        connections = [c for c in self._reader.connections if c.topic == name]
        if not connections:
            return
        for _, timestamp, data in self._reader.messages(connections=connections):
            yield timestamp, data

    def messages(self, topic: str) -> Iterator[tuple[int, Any]]:
        """(receive timestamp ns, deserialised rosbags message) of every message on ``topic``."""
        msgtype = self.topics[normalize_topic(topic)].msgtype
        store = typestore()
        for timestamp, data in self.raw_messages(topic):
            yield timestamp, store.deserialize_cdr(data, msgtype)
