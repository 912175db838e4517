"""The node's names: its own, its default camera topic and the rule that names its outputs.

No rclpy and no torch here, so the launch file, the bag tools and the benchmarks use the
same names as the node without importing it.
"""
from __future__ import annotations

NODE_NAME = "dfanet_segmentation"
# Relative: it moves with the node's namespace (in the root namespace, /camera/image_raw).
DEFAULT_CAMERA_TOPIC = "camera/image_raw"
CLASS_MAP_TOPIC = "segmentation/class_map"


def output_topic(camera_topic: str, output: str) -> str:
    """``<camera namespace>/segmentation/<output>`` for a camera topic (``/compressed`` off)."""
    base = camera_topic[:-len("/compressed")] if camera_topic.endswith("/compressed") \
        else camera_topic
    namespace, sep, _ = base.rpartition("/")
    return f"{namespace}{sep}segmentation/{output}"
