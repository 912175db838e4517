"""The listening side of ``dfanet bench node`` and ``dfanet bench soak``: this process's DDS
participant, which timestamps the node's answers as they arrive."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from ..ros_process import DdsClient
from ..stamps import header_stamp_ns
from .camera import camera_output_topic


class Collector(DdsClient):
    """Subscribes to every camera's outputs and info and timestamps arrivals; with
    ``diagnostics``, keeps the node's latest /diagnostics counters too."""

    def __init__(self, cameras: int, outputs: list[str], diagnostics: bool = False) -> None:
        from dfanet_ros.msg import SegmentationInfo
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        super().__init__("dfanet_bench_collector")
        self.outputs = outputs
        self.lock = threading.Lock()
        # (camera, stamp) -> {output: arrival ns}
        self.arrivals: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        # (camera, stamp) -> the node's (total_ms, inference_ms)
        self.info: dict[tuple[int, int], tuple[float, float]] = {}
        # camera topic -> (the report's stamp in ns, its key-value pairs)
        self.diagnostics: dict[str, tuple[int, dict[str, str]]] = {}
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = []
        if diagnostics:
            from diagnostic_msgs.msg import DiagnosticArray
            self.subscriptions.append(self.node.create_subscription(
                DiagnosticArray, "/diagnostics", self._diagnostics, qos))
        for cam in range(cameras):
            for out in outputs:
                self.subscriptions.append(self.node.create_subscription(
                    Image, camera_output_topic(cam, out),
                    lambda msg, c=cam, o=out: self._arrived(c, o, msg), qos))
            self.subscriptions.append(self.node.create_subscription(
                SegmentationInfo, camera_output_topic(cam, "info"),
                lambda msg, c=cam: self._info(c, msg), qos))

    def _arrived(self, camera: int, output: str, msg: Any) -> None:
        now = time.time_ns()
        with self.lock:
            self.arrivals[(camera, header_stamp_ns(msg))][output] = now

    def _info(self, camera: int, msg: Any) -> None:
        with self.lock:
            self.info[(camera, header_stamp_ns(msg))] = (msg.total_ms, msg.inference_ms)

    def _diagnostics(self, msg: Any) -> None:
        stamp = header_stamp_ns(msg)
        with self.lock:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if "topic" in values:
                    self.diagnostics[values["topic"]] = (stamp, values)

    def answered_latency_ms(self, camera: int, stamp: int) -> float | None:
        """Stamp to the last subscribed output's arrival in ms, None unless every output
        arrived (the caller holds ``self.lock``)."""
        got = self.arrivals.get((camera, stamp), {})
        if len(got) < len(self.outputs):
            return None
        return (max(got.values()) - stamp) / 1e6

    def diagnostics_after(self, topic: str, after_ns: int, timeout: float) -> dict[str, str]:
        """The node's /diagnostics values for ``topic`` from a report stamped after
        ``after_ns`` (wall clock); RuntimeError when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                stamp, values = self.diagnostics.get(topic, (0, {}))
            if stamp > after_ns:
                return values
            time.sleep(0.05)
        raise RuntimeError(f"no /diagnostics report for {topic} within {timeout:g} s")

    def matched(self, cameras: int) -> bool:
        """The node publishes every output the collector listens to."""
        return all(self.node.count_publishers(camera_output_topic(c, o)) > 0
                   for c in range(cameras) for o in self.outputs)
