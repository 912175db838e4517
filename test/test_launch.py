"""The launch file, parameters file, rviz view and DDS profile agree with the node.

``launch`` and ``launch_ros`` do not install here, so the launch file is read with ``ast``;
everything it names is checked against the real files and a real node process.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from helpers_ros import (
    REPO,
    NodeProcess,
    RosClient,
    domain_id,
    node_command,
    ros_env,
    wait_for,
)

from dfanet_ros.segmentation_node import NODE_NAME, PARAMETERS, output_topic

LAUNCH = REPO / "launch" / "segment.launch.py"
PARAMS = REPO / "config" / "segment.yaml"
RVIZ = REPO / "config" / "segment.rviz"
PROFILE = REPO / "config" / "fastdds_large_images.xml"
DOMAIN = domain_id(__name__)
DECLARED = {name: default for name, default, *_ in PARAMETERS}


def _name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _const(node: ast.AST):
    return node.value if isinstance(node, ast.Constant) else None


def _kw(call: ast.Call, key: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _module_constants(tree: ast.Module) -> dict[str, object]:
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) for t in node.targets
            if isinstance(t, ast.Name)}


@pytest.fixture(scope="module")
def launch_tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), str(LAUNCH))


@pytest.fixture(scope="module")
def calls(launch_tree) -> list[ast.Call]:
    return [n for n in ast.walk(launch_tree) if isinstance(n, ast.Call)]


@pytest.fixture(scope="module")
def arguments(calls) -> dict[str, str]:
    """Launch arguments and their default values (as source text)."""
    return {_const(c.args[0]): ast.unparse(_kw(c, "default_value"))
            for c in calls if _name(c) == "DeclareLaunchArgument"}


@pytest.fixture(scope="module")
def default_camera(arguments) -> str:
    topics = ast.literal_eval(arguments["camera_topics"]).split(",")
    return topics[0].strip()


def test_launch_arguments_are_declared_and_used(launch_tree, calls, arguments):
    assert set(arguments) >= {"camera_topics", "checkpoint", "device", "params_file", "rviz"}
    used = {_const(c.args[0]) for c in calls if _name(c) == "LaunchConfiguration"}
    # LaunchConfiguration(name) inside ``for name in ("a", "b")`` uses "a" and "b".
    for loop in ast.walk(launch_tree):
        if isinstance(loop, ast.For) and isinstance(loop.iter, ast.Tuple):
            calls_in_loop = [c for c in ast.walk(loop) if isinstance(c, ast.Call)
                             and _name(c) == "LaunchConfiguration"
                             and isinstance(c.args[0], ast.Name)
                             and c.args[0].id == loop.target.id]
            if calls_in_loop:
                used |= {_const(e) for e in loop.iter.elts}
    used.discard(None)
    assert used == set(arguments), f"undeclared: {used - set(arguments)}, " \
                                   f"unused: {set(arguments) - used}"


def test_executable_is_installed(launch_tree, calls):
    constants = _module_constants(launch_tree)

    def value(node):
        return constants.get(node.id) if isinstance(node, ast.Name) else _const(node)

    nodes = [c for c in calls if _name(c) == "Node"]
    ours = [c for c in nodes if value(_kw(c, "package")) == "dfanet_ros"]
    assert len(ours) == 1
    assert _const(_kw(ours[0], "executable")) == "segmentation_node"
    assert _const(_kw(ours[0], "name")) == NODE_NAME
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"install\(PROGRAMS scripts/segmentation_node DESTINATION "
                     r"lib/\$\{PROJECT_NAME\}\)", cmake)
    assert re.search(r"install\(DIRECTORY [^)]*\bconfig\b[^)]*DESTINATION share/", cmake)
    assert re.search(r"install\(DIRECTORY [^)]*\blaunch\b[^)]*DESTINATION share/", cmake)
    script = REPO / "scripts" / "segmentation_node"
    assert os.access(script, os.X_OK) and script.read_text().startswith("#!/usr/bin/env python3")
    assert "from dfanet_ros.segmentation_node import main" in script.read_text()
    # test_node.py runs this script (a start-up failure and its exit status).


def test_files_the_launch_names_exist(calls):
    joined = [[_const(e) for e in c.args[0].elts[1:]] for c in calls
              if _name(c) == "PathJoinSubstitution"]
    assert ["config", "segment.yaml"] in joined and ["config", "segment.rviz"] in joined
    assert ["config", "fastdds_large_images.xml"] in joined
    for parts in joined:
        assert (REPO.joinpath(*parts)).is_file(), parts


def test_node_overrides_are_node_parameters_and_launch_arguments(launch_tree, arguments):
    func = next(n for n in ast.walk(launch_tree)
                if isinstance(n, ast.FunctionDef) and n.name == "_segmentation_node")
    names = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Dict):
            names |= {_const(k) for k in node.keys}
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple):
            names |= {_const(e) for e in node.iter.elts}
    assert names == {"camera_topics", "checkpoint", "device"}
    assert names <= set(DECLARED) and names <= set(arguments)


def test_rviz_shows_the_camera_overlay_and_colour_mask(default_camera):
    rviz = yaml.safe_load(RVIZ.read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays
              if d["Class"] == "rviz_default_plugins/Image"}
    camera = "/" + default_camera  # the relative default, resolved without a namespace
    assert topics == {camera, output_topic(camera, "overlay"), output_topic(camera, "color"),
                      output_topic(camera, "confidence")}


def test_params_file_matches_the_running_node(default_camera):
    params = yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]
    assert set(params) == set(DECLARED), "config/segment.yaml must list every parameter"
    assert params["camera_topics"] == [default_camera]
    proc = NodeProcess(node_command({"autostart": False}, params_file=PARAMS),
                       ros_env(DOMAIN))
    client = RosClient(DOMAIN)
    try:
        names = wait_for(lambda: _try(client.list_parameters, NODE_NAME), 60.0,
                         "the node's parameter services", proc)
        assert set(DECLARED) <= set(names)
        got = client.get_parameters(NODE_NAME, sorted(params))
        expected_type = {bool: 1, int: 2, float: 3, str: 4, list: 9}  # rcl ParameterType
        for name, value in params.items():
            ptype, actual = got[name]
            if name == "autostart":
                continue  # overridden on the command line above
            assert ptype == expected_type[type(value)], f"{name}: type {ptype}"
            assert actual == value, f"{name}: node has {actual!r}, file {value!r}"
        described = client.describe_parameters(NODE_NAME, sorted(DECLARED))
        for name, _default, _, bounds, _ in PARAMETERS:
            d = described[name]
            assert d.description, name
            if bounds is not None:
                ranges = d.floating_point_range or d.integer_range
                assert ranges and (ranges[0].from_value, ranges[0].to_value) == bounds, name
        assert "unknown parameter" not in proc.output()
    finally:
        client.close()
        proc.stop()


def _try(fn, *args):
    try:
        return fn(*args)
    except AssertionError:
        return None


# -- the Fast DDS profile -----------------------------------------------------------------

_PUBLISHER = """
import array, sys, time
import numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("large_image_publisher")
pub = node.create_publisher(Image, "large", qos_profile_sensor_data)
deadline = time.time() + 30
while pub.get_subscription_count() == 0 and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
pixels = (np.arange(1024 * 2048 * 3) % 251).astype(np.uint8)
data = array.array("B"); data.frombytes(pixels)
for i in range(20):
    msg = Image(height=1024, width=2048, encoding="rgb8", step=2048 * 3, data=data)
    msg.header.frame_id = str(i)
    pub.publish(msg)
    time.sleep(0.1)
time.sleep(1.0)
"""

_SUBSCRIBER = """
import time
import numpy as np, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("large_image_subscriber")
good = []
expected = (np.arange(1024 * 2048 * 3) % 251).astype(np.uint8)
def on_image(msg):
    good.append(np.array_equal(np.frombuffer(msg.data, np.uint8), expected))
node.create_subscription(Image, "large", on_image,
                         QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
deadline = time.time() + 40
while time.time() < deadline and len(good) < 20:
    rclpy.spin_once(node, timeout_sec=0.1)
print("received", len(good), "intact", sum(good))
"""


def test_large_images_cross_processes_with_the_profile():
    env = ros_env(DOMAIN + 2, FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
    sub = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    pub = subprocess.Popen([sys.executable, "-c", _PUBLISHER], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = sub.communicate(timeout=90)
        pub_err = pub.communicate(timeout=30)[1]
    finally:
        for p in (sub, pub):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert "XMLPARSER" not in err + pub_err, err + pub_err
    match = re.search(r"received (\d+) intact (\d+)", out)
    assert match, out + err
    received, intact = int(match[1]), int(match[2])
    # Best effort: a loaded machine may drop a frame, never most of them.
    assert received >= 15 and intact == received, out
