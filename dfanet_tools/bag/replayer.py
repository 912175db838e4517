"""The two ends of an online evaluation: this process's DDS side, and the node's command line."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dfanet_ros.parameters import model_size_parameters

from ..ros_process import DdsClient, node_command
from .io import IMAGE

if TYPE_CHECKING:
    from .plan import EvalOptions, Plan


class Replayer(DdsClient):
    """This process's DDS side: publishes camera messages, collects the node's answers."""

    def __init__(self, camera_topic: str, camera_type: str, label_topic: str, info_topic: str,
                 on_label: Callable[[Any, float], None], on_info: Callable[[Any], None]
                 ) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        super().__init__("dfanet_bag_eval")
        self.label_topic, self.info_topic = label_topic, info_topic
        # Reliable, so that a node subscribing reliably gets every frame; a best-effort
        # subscriber still matches it.
        self.publisher = self.node.create_publisher(
            Image if camera_type == IMAGE else CompressedImage, camera_topic,
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self._callbacks = {label_topic: lambda msg: on_label(msg, time.perf_counter()),
                           info_topic: on_info}
        self.subscriptions: list[Any] = []

    def ready(self) -> bool:
        """The node subscribes to the camera topic and publishes the label topic."""
        return (self.publisher.get_subscription_count() > 0
                and self.node.count_publishers(self.label_topic) > 0)

    def subscribe(self) -> None:
        """Subscribe to label and info with the reliability their publishers offer."""
        from dfanet_ros.msg import SegmentationInfo
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        for topic, msg_type in ((self.label_topic, Image), (self.info_topic, SegmentationInfo)):
            infos = self.node.get_publishers_info_by_topic(topic)
            reliable = bool(infos) and all(
                i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
            self.subscriptions.append(self.node.create_subscription(
                msg_type, topic, self._callbacks[topic], qos))

    def publish(self, raw: bytes) -> None:
        self.publisher.publish(raw)


def node_command_for(opts: EvalOptions, plan: Plan) -> list[str]:
    """The segmentation node, as its own process, on the bag's camera topic."""
    params: dict[str, Any] = {"checkpoint": plan.checkpoint,
                              "camera_topics": [plan.camera_topic], "device": opts.device,
                              # Reliable input: a frame may be replaced by a newer one
                              # (counted), never lost in transport.
                              "input_reliability": "reliable"}
    if opts.size:
        params.update(model_size_parameters(opts.size))
    if opts.cpu_threads:
        params["cpu_threads"] = opts.cpu_threads
    return node_command(params, extra=opts.node_args)
