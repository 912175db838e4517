"""The launch file, parameters file, rviz view and DDS profile agree with the node.

``launch`` and ``launch_ros`` do not install here.  The launch file keeps its decisions in
``plan`` (plain Python, launch imported only inside functions), so it is imported and run
here; the node then starts as ``launch_ros`` would start it from that plan (params files in
order, namespace, ROS arguments), and the launch's imports are checked by name against the
real packages.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
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
    ros_env,
    wait_for,
)

from dfanet_ros.parameters import PARAMETERS
from dfanet_ros.topics import NODE_NAME

LAUNCH = REPO / "launch" / "segment.launch.py"
PARAMS = REPO / "config" / "segment.yaml"
RVIZ = REPO / "config" / "segment.rviz"
PROFILE = REPO / "config" / "fastdds_large_images.xml"
pytestmark = pytest.mark.ros
DECLARED = {name: default for name, default, *_ in PARAMETERS}

# What the launch file may import from launch and launch_ros, read from their rolling sources
# (ros2/launch 02595baf, ros2/launch_ros f9ab9371, both present in Jazzy and Kilted).  A name
# missing here is a typo (``launch_ros.action``) or needs checking there before adding.
LAUNCH_API = {
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument", "EmitEvent", "LogInfo", "OpaqueFunction",
                       "RegisterEventHandler", "SetEnvironmentVariable"},
    "launch.event_handlers": {"OnProcessExit"},
    "launch.events": {"Shutdown", "matches_action"},
    "launch.logging": {"get_logger"},
    "launch.substitutions": {"LaunchConfiguration"},
    "launch_ros.actions": {"LifecycleNode", "Node"},
    "launch_ros.event_handlers": {"OnStateTransition"},
    "launch_ros.events.lifecycle": {"ChangeState"},
}


@pytest.fixture(scope="module")
def launch():
    """The launch file as a module, loaded as launch loads it (not registered in
    sys.modules); it imports launch only inside its functions."""
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def defaults(launch) -> dict[str, str]:
    return {name: default for name, default, _ in launch.ARGUMENTS}


def plan(launch, defaults, rviz_installed: bool = True, **args: str):
    return launch.plan({**defaults, **args}, str(REPO), rviz_installed)


def test_imports_are_real_names_and_launch_stays_optional():
    tree = ast.parse(LAUNCH.read_text(), str(LAUNCH))
    top_level = {n.module if isinstance(n, ast.ImportFrom) else a.name
                 for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
                 for a in n.names}
    # dfanet_ros.topics and .dds_profile: the node's names and the DDS profile's environment,
    # without rclpy or torch (test_package.py checks)
    assert top_level <= {"__future__", "os", "typing", "dfanet_ros.topics",
                         "dfanet_ros.dds_profile"}, top_level
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] not in ("launch", "launch_ros")
                       for a in node.names), f"line {node.lineno}: import names from launch"
            continue
        if not isinstance(node, ast.ImportFrom) or node.module in top_level:
            continue
        names = {a.name for a in node.names}
        if node.module.split(".")[0] in ("launch", "launch_ros"):
            assert node.module in LAUNCH_API, f"line {node.lineno}: no module {node.module}"
            missing = names - LAUNCH_API[node.module]
            assert not missing, f"line {node.lineno}: {node.module} has no {missing}"
        else:  # installed here (lifecycle_msgs, ament_index_python): import for real
            module = importlib.import_module(node.module)
            assert all(hasattr(module, n) for n in names), (node.module, names)


def test_every_argument_is_declared_and_used(launch):
    names = [name for name, *_ in launch.ARGUMENTS]
    assert set(names) >= {"camera_topics", "namespace", "checkpoint", "device", "params_file",
                          "autostart", "use_sim_time", "log_level", "rviz", "large_images"}
    tree = ast.parse(LAUNCH.read_text())
    func = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "plan")
    read = {n.slice.value for n in ast.walk(func) if isinstance(n, ast.Subscript)
            and isinstance(n.value, ast.Name) and n.value.id == "args"
            and isinstance(n.slice, ast.Constant)}
    read |= {e.value for loop in ast.walk(func) if isinstance(loop, ast.For)
             and isinstance(loop.iter, ast.Tuple) for e in loop.iter.elts}
    assert read == set(names), f"unused: {set(names) - read}"
    for name, _, description in launch.ARGUMENTS:
        assert description, name


def test_plan_with_defaults(launch, defaults):
    p = plan(launch, defaults)
    assert p.namespace == "" and p.autostart and p.rviz_config is None and not p.warnings
    params_file, overrides = p.parameters  # the file first: later entries win
    assert params_file == str(PARAMS) and PARAMS.is_file()
    assert overrides == {"camera_topics": ["camera/image_raw"], "use_sim_time": False,
                         "autostart": False}
    assert set(overrides) <= set(DECLARED) | {"use_sim_time"}
    assert p.ros_arguments == ["--log-level", "info"]
    # Large images work by default: the profile goes to every process the launch starts.
    assert p.environment == {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE),
                             "RMW_FASTRTPS_USE_QOS_FROM_XML": "1"}
    assert launch.EXECUTABLE == "segmentation_node" and launch.NODE_NAME == NODE_NAME
    assert launch.PACKAGE == "dfanet_ros"


def test_arguments_that_set_parameters_agree_with_the_table(launch, defaults):
    """A launch argument that sets a node parameter defaults to the table's value (or to ""
    for the params file's), and reaches the node with the parameter's declared type."""
    table = {p.name: p for p in PARAMETERS}
    assert defaults["camera_topics"] == ",".join(table["camera_topics"].default)
    descriptions = {name: description for name, _, description in launch.ARGUMENTS}
    for name in ("checkpoint", "device"):
        assert defaults[name] == "" and "params file" in descriptions[name], name
    overrides = plan(launch, defaults, checkpoint="m.safetensors", device="cpu").parameters[1]
    for name, value in overrides.items():
        if name in table:
            assert type(value) is type(table[name].default), name


def test_rviz_and_large_images_are_separate_switches(launch, defaults):
    p = plan(launch, defaults, rviz="true", large_images="false")
    assert p.rviz_config == str(RVIZ) and RVIZ.is_file() and p.environment == {}
    p = plan(launch, defaults, rviz="false", large_images="true")
    assert p.rviz_config is None and set(p.environment) == {"FASTDDS_DEFAULT_PROFILES_FILE",
                                                            "RMW_FASTRTPS_USE_QOS_FROM_XML"}
    # Without rviz2: a warning, and the node still starts.
    p = plan(launch, defaults, rviz_installed=False, rviz="true")
    assert p.rviz_config is None and "rviz2" in p.warnings[0]


def test_arguments_become_node_settings(launch, defaults):
    p = plan(launch, defaults, camera_topics="front/image_raw, /rear/image_raw",
             checkpoint="m.safetensors", device="cpu", namespace="robot1",
             use_sim_time="true", log_level="DEBUG", autostart="false")
    overrides = p.parameters[1]
    assert overrides["camera_topics"] == ["front/image_raw", "/rear/image_raw"]
    assert overrides["checkpoint"] == "m.safetensors" and overrides["device"] == "cpu"
    assert overrides["use_sim_time"] is True and overrides["autostart"] is False
    assert p.namespace == "robot1" and p.ros_arguments == ["--log-level", "debug"]
    assert not p.autostart
    # "," reaches the node as two empty topics: the node's own message refuses them.
    assert plan(launch, defaults, camera_topics=",").parameters[1]["camera_topics"] == ["", ""]
    with pytest.raises(ValueError, match="log_level"):
        plan(launch, defaults, log_level="loud")
    with pytest.raises(ValueError, match="true or false"):
        plan(launch, defaults, autostart="maybe")


def test_a_params_file_that_cannot_be_read_stops_the_launch(launch, defaults, tmp_path):
    """launch_ros alone only warned about a missing params file and started the node on its
    built-in defaults.  The plan refuses it, naming it; an exception in the launch's
    OpaqueFunction ends ``ros2 launch`` with status 1 and that one line."""
    missing = tmp_path / "nonexistent.yaml"
    with pytest.raises(ValueError, match=f"params_file {missing}: cannot be read: No such"):
        plan(launch, defaults, params_file=str(missing))
    with pytest.raises(ValueError, match=f"params_file {tmp_path}: cannot be read: Is a dir"):
        plan(launch, defaults, params_file=str(tmp_path))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=f"params_file {binary}: cannot be read"):
        plan(launch, defaults, params_file=str(binary))
    readable = tmp_path / "mine.yaml"
    readable.write_text("/**:\n  ros__parameters:\n    device: cpu\n")
    assert plan(launch, defaults, params_file=str(readable)).parameters[0] == str(readable)


def readme_ros2_run() -> list[str]:
    """The README's ``ros2 run`` example, its continuation lines joined, comments dropped."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ros2 run "))
    text = ""
    for line in lines[start:]:
        code = line.split("#")[0].strip()
        text += " " + code.rstrip("\\")
        if not code.endswith("\\"):
            break
    return text.split()


@pytest.mark.slow
def test_the_readme_ros2_run_example_runs_as_written(ros_domain):
    """The example once named a checkpoint, model.safetensors, that nobody has: as written it
    exited 1.  Run through the executable ``ros2 run`` starts, it goes active on the shipped
    model with the camera remapped."""
    argv = readme_ros2_run()
    assert argv[:4] == ["ros2", "run", "dfanet_ros", "segmentation_node"], argv
    command = [sys.executable, str(REPO / "scripts" / "segmentation_node"), *argv[4:]]
    with NodeProcess(command, ros_env(ros_domain)) as proc:
        wait_for(lambda: "]: active" in proc.output(), 90.0, "the node to go active", proc)
        output = proc.output()
    assert "dfanet_camvid.safetensors" in output and "/front/image_raw -> /front/segmentation/*" \
        in output, output


def test_plan_warnings_are_logged_at_warning_level():
    """The rviz-missing warning went out through LogInfo, at INFO with a "[WARNING]" prefix:
    each of the plan's warnings goes to launch's logger at WARNING."""
    tree = ast.parse(LAUNCH.read_text(), str(LAUNCH))
    setup = next(n for n in ast.walk(tree)
                 if isinstance(n, ast.FunctionDef) and n.name == "_launch_setup")
    loops = [n for n in ast.walk(setup) if isinstance(n, ast.For)
             and ast.unparse(n.iter) == "p.warnings"]
    assert len(loops) == 1, "p.warnings must be logged in one loop"
    calls = [ast.unparse(c.func) for c in ast.walk(loops[0]) if isinstance(c, ast.Call)]
    assert any(c.startswith("get_logger(") and c.endswith(").warning") for c in calls), calls
    assert "LogInfo" not in ast.unparse(setup)


def launched_command(p, tmp_path) -> list[str]:
    """The command launch_ros builds for the node from a plan: each parameters entry in order
    (a dict written to a YAML file under the node's full name), the namespace, ROS args."""
    full_name = f"/{p.namespace}/{NODE_NAME}" if p.namespace else f"/{NODE_NAME}"
    cmd = [sys.executable, "-m", "dfanet_ros.segmentation_node", "--ros-args",
           "-r", f"__node:={NODE_NAME}", "-r", f"__ns:=/{p.namespace}"]
    for i, entry in enumerate(p.parameters):
        if isinstance(entry, dict):
            path = tmp_path / f"launch_params_{i}.yaml"
            path.write_text(yaml.safe_dump({full_name: {"ros__parameters": entry}}))
            entry = path
        cmd += ["--params-file", str(entry)]
    return cmd + list(p.ros_arguments)


@pytest.mark.slow
def test_launched_node_takes_the_file_then_the_arguments(launch, defaults, tmp_path,
                                                         ros_domain):
    """The node as the launch starts it: overrides win over the params file, every other
    parameter has the file's value and type, the namespace and log level apply, and
    ``camera_topics:=,`` fails configure with the node's own message."""
    p = plan(launch, defaults, camera_topics="front/image_raw,rear/image_raw", device="cpu",
             namespace="robot1", log_level="debug", use_sim_time="true")
    params = yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]
    assert set(params) == set(DECLARED), "config/segment.yaml must list every parameter"
    assert params["camera_topics"] == [defaults["camera_topics"]]
    proc = NodeProcess(launched_command(p, tmp_path), ros_env(ros_domain))
    client = RosClient(ros_domain)
    full_name = f"robot1/{NODE_NAME}"
    try:
        names = wait_for(lambda: _try(client.list_parameters, full_name), 60.0,
                         "the node's parameter services", proc)
        assert set(DECLARED) <= set(names)
        got = client.get_parameters(full_name, sorted(params) + ["use_sim_time"])
        assert got["camera_topics"][1] == ["front/image_raw", "rear/image_raw"]
        assert got["device"][1] == "cpu" and got["autostart"][1] is False
        assert got["use_sim_time"][1] is True
        expected_type = {bool: 1, int: 2, float: 3, str: 4, list: 9}  # rcl ParameterType
        for name, value in params.items():
            ptype, actual = got[name]
            assert ptype == expected_type[type(value)], f"{name}: type {ptype}"
            if name not in p.parameters[1]:
                assert actual == value, f"{name}: node has {actual!r}, file {value!r}"
        described = client.describe_parameters(full_name, sorted(DECLARED))
        for name, _default, _, bounds, _ in PARAMETERS:
            d = described[name]
            assert d.description, name
            if bounds is not None:
                ranges = d.floating_point_range or d.integer_range
                assert ranges and (ranges[0].from_value, ranges[0].to_value) == bounds, name
        assert "unknown parameter" not in proc.output()
        assert "[DEBUG]" in proc.output()
        # camera_topics:=, as the launch passes it, then configure as the launch would.
        comma = plan(launch, defaults, camera_topics=",").parameters[1]["camera_topics"]
        (result,) = client.set_parameters(full_name, {"camera_topics": comma})
        assert result.successful
        assert not _change_state(client, full_name, 1)  # TRANSITION_CONFIGURE
        wait_for(lambda: "camera_topics must list distinct topics" in proc.output(), 30.0,
                 "the node's message", proc)
    finally:
        client.close()
        proc.stop()


def _change_state(client, node_name: str, transition_id: int) -> bool:
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request()
    request.transition.id = transition_id
    return client._call(ChangeState, f"/{node_name}/change_state", request, 60.0).success


def _try(fn, *args):
    try:
        return fn(*args)
    except AssertionError:
        return None


def test_rviz_shows_the_camera_and_every_image_output(defaults):
    rviz = yaml.safe_load(RVIZ.read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays
              if d["Class"] == "rviz_default_plugins/Image"}
    # the relative default camera, resolved without a namespace, and its outputs
    assert defaults["camera_topics"] == "camera/image_raw"
    assert topics == {"/camera/image_raw", "/camera/segmentation/overlay",
                      "/camera/segmentation/color", "/camera/segmentation/confidence"}


def test_install_rules_cover_what_the_launch_names():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"install\(PROGRAMS scripts/segmentation_node DESTINATION "
                     r"lib/\$\{PROJECT_NAME\}\)", cmake)
    assert re.search(r"install\(DIRECTORY [^)]*\bconfig\b[^)]*DESTINATION share/", cmake)
    assert re.search(r"install\(DIRECTORY [^)]*\blaunch\b[^)]*DESTINATION share/", cmake)
    script = REPO / "scripts" / "segmentation_node"
    assert os.access(script, os.X_OK) and script.read_text().startswith("#!/usr/bin/env python3")
    assert "from dfanet_ros.startup import main" in script.read_text()
    # test_node.py runs this script (a start-up failure and its exit status).


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


@pytest.mark.slow
def test_large_images_cross_processes_with_the_profile(ros_domain):
    env = ros_env(ros_domain, FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
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
