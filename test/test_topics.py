"""The node's names and the rule naming its outputs, with the expected topics written out."""
from __future__ import annotations

import pytest

from dfanet_ros.topics import DEFAULT_CAMERA_TOPIC, NODE_NAME, output_topic
from dfanet_tools.bag.io import BAG_CAMERA_TOPIC


@pytest.mark.parametrize(("camera", "output", "expected"), [
    ("/front/image_raw", "label", "/front/segmentation/label"),
    ("/robot1/front/image_raw/compressed", "overlay", "/robot1/front/segmentation/overlay"),
    ("camera/image_raw", "info", "camera/segmentation/info"),
    ("/image", "color", "/segmentation/color"),
    ("image", "color", "segmentation/color"),
])
def test_outputs_go_to_the_camera_namespace(camera, output, expected):
    assert output_topic(camera, output) == expected


def test_one_default_camera_relative_for_the_node_absolute_in_bags():
    assert DEFAULT_CAMERA_TOPIC == "camera/image_raw"
    assert BAG_CAMERA_TOPIC == "/camera/image_raw"
    assert NODE_NAME == "dfanet_segmentation"
