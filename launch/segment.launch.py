"""Bring up the DFANet segmentation node as a lifecycle node, and rviz on request.

    ros2 launch dfanet_ros segment.launch.py
    ros2 launch dfanet_ros segment.launch.py camera_topics:=/front/image_raw,/rear/image_raw \
        checkpoint:=/models/my_dfanet.safetensors device:=cuda rviz:=true
    ros2 launch dfanet_ros segment.launch.py namespace:=robot1 autostart:=false

One node serves every camera (one model in memory); each camera's outputs derive from its
resolved topic: /front/image_raw -> /front/segmentation/{label,color,overlay,confidence,info}.
The default camera, camera/image_raw, is relative, so ``namespace`` moves it with the node.

``autostart:=true`` (the default): this launch configures and activates the node.
``autostart:=false``: the node waits, unconfigured, for a lifecycle manager (or
``ros2 lifecycle set``).  If the node exits with an error, or a transition this launch asked
for fails, the launch stops everything and exits non-zero.  ``rviz:=true`` without rviz2
installed warns and runs the node alone.  ``large_images`` (on by default) gives the launched
processes the shipped Fast DDS profile for camera frames from 360x480 to 2048x1024; the
camera driver needs the same (README: "Large images and DDS").

What to launch is decided by ``plan`` from the argument strings alone, in plain Python with
no launch imports, so the package's tests check it without a ROS install;
``_launch_setup`` only turns the plan into launch actions.  A ``params_file`` that cannot be
read ends the launch with status 1 and a line naming it (launch_ros alone warns and starts the
node on its built-in defaults).
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

# The node's own names (a module without rclpy or torch), so the launch cannot drift from it.
from dfanet_ros.dds_profile import PROFILE_FILE, profile_environment
from dfanet_ros.topics import DEFAULT_CAMERA_TOPIC, NODE_NAME

PACKAGE = "dfanet_ros"
EXECUTABLE = "segmentation_node"

# name, default, description
ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("camera_topics", DEFAULT_CAMERA_TOPIC, "camera image topic(s), comma-separated; relative "
     "ones resolve in the namespace"),
    ("namespace", "", "namespace of the node (and of relative camera topics)"),
    ("checkpoint", "", "DFANet checkpoint; empty: the params file's"),
    ("device", "", "auto, cpu, cuda or cuda:N; empty: the params file's"),
    ("params_file", "", "node parameters (YAML); empty: the package's config/segment.yaml. "
     "The arguments above override it"),
    ("autostart", "true", "true: this launch configures and activates the node; false: a "
     "lifecycle manager does"),
    ("use_sim_time", "false", "use /clock (bag replay with --clock)"),
    ("log_level", "info", "the node's log level: debug, info, warn, error or fatal"),
    ("rviz", "false", "open rviz2 with the camera, overlay, colour mask and confidence"),
    ("large_images", "true", "give the launched processes config/fastdds_large_images.xml "
     "(Fast DDS shared memory for frames up to 2048x1024 and more)"),
)
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


class Plan(NamedTuple):
    """What the launch starts, decided from the launch arguments.  (A NamedTuple: launch loads
    this file without registering it as a module, which dataclasses need.)"""

    namespace: str
    parameters: list[Any]         # params file first, overrides last: later entries win
    ros_arguments: list[str]
    environment: dict[str, str]   # set for every process this launch starts
    autostart: bool
    rviz_config: str | None       # None: no rviz
    warnings: list[str]


def is_true(text: str) -> bool:
    """A boolean launch argument, as launch's IfCondition reads one."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, got {text!r}")
    return value in ("true", "1")


def camera_topic_list(text: str) -> list[str]:
    """The comma-separated argument as the node's string-array parameter.  Entries are kept
    even when empty (``camera_topics:=,``), so the node refuses them with its own message."""
    return [topic.strip() for topic in text.split(",")]


def plan(args: dict[str, str], share: str, rviz_installed: bool) -> Plan:
    """The node's parameters, ROS arguments and environment, and whether rviz starts."""
    overrides: dict[str, Any] = {
        "camera_topics": camera_topic_list(args["camera_topics"]),
        "use_sim_time": is_true(args["use_sim_time"]),
        "autostart": False,  # the lifecycle is driven from outside: this launch or a manager
    }
    for name in ("checkpoint", "device"):
        if args[name]:  # empty: keep the params file's value
            overrides[name] = args[name]
    level = args["log_level"].strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    environment = (profile_environment(os.path.join(share, "config", PROFILE_FILE))
                   if is_true(args["large_images"]) else {})
    warnings, rviz_config = [], None
    if is_true(args["rviz"]):
        if rviz_installed:
            rviz_config = os.path.join(share, "config", "segment.rviz")
        else:
            warnings.append("rviz:=true but the rviz2 package is not installed: starting the "
                            "segmentation node without it")
    params_file = args["params_file"] or os.path.join(share, "config", "segment.yaml")
    try:  # launch_ros would only warn and start the node on its built-in defaults
        with open(params_file, encoding="utf-8") as f:
            f.read(1)
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"params_file {params_file}: cannot be read: {reason}") from None
    return Plan(namespace=args["namespace"].strip(),
                parameters=[params_file, overrides],
                ros_arguments=["--log-level", level], environment=environment,
                autostart=is_true(args["autostart"]), rviz_config=rviz_config,
                warnings=warnings)


def _installed(package: str) -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def _fail(reason: str):
    """An OpaqueFunction body that stops the launch with a non-zero status: launch turns an
    exception into a shutdown and exit status 1 (a Shutdown event alone exits 0)."""
    def fail(context):
        raise RuntimeError(reason)
    return fail


def _launch_setup(context):
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import (
        EmitEvent,
        OpaqueFunction,
        RegisterEventHandler,
        SetEnvironmentVariable,
    )
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown, matches_action
    from launch.logging import get_logger
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode, Node
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from lifecycle_msgs.msg import Transition

    args = {name: LaunchConfiguration(name).perform(context) for name, *_ in ARGUMENTS}
    p = plan(args, get_package_share_directory(PACKAGE), rviz_installed=_installed("rviz2"))

    actions: list[Any] = [SetEnvironmentVariable(k, v) for k, v in p.environment.items()]
    for text in p.warnings:  # at WARNING level (LogInfo logs at INFO, whatever it says)
        get_logger("launch.user").warning(text)
    node = LifecycleNode(package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME,
                         namespace=p.namespace, parameters=p.parameters,
                         ros_arguments=p.ros_arguments, output="screen", emulate_tty=True)

    def node_exited(event, context):
        if context.is_shutdown:
            return None
        if event.returncode != 0:
            raise RuntimeError(f"{NODE_NAME} exited with status {event.returncode} (its "
                               "error is above)")
        return [EmitEvent(event=Shutdown(reason=f"{NODE_NAME} exited"))]

    actions += [node, RegisterEventHandler(OnProcessExit(target_action=node,
                                                         on_exit=node_exited))]
    if p.autostart:
        def transition(transition_id: int):
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                               transition_id=transition_id))

        def on(start: str, goal: str, entities: list[Any]):
            return RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state=start, goal_state=goal,
                entities=entities))

        actions += [
            on("configuring", "inactive", [transition(Transition.TRANSITION_ACTIVATE)]),
            on("configuring", "unconfigured",
               [OpaqueFunction(function=_fail(f"{NODE_NAME} failed to configure"))]),
            on("activating", "inactive",
               [OpaqueFunction(function=_fail(f"{NODE_NAME} failed to activate"))]),
            transition(Transition.TRANSITION_CONFIGURE),
        ]
    if p.rviz_config is not None:
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                            arguments=["-d", p.rviz_config]))
    return actions


def generate_launch_description():
    # (ruff takes "launch" for this repository's launch/ folder: keep the ROS order)
    from launch import LaunchDescription  # noqa: I001
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)])
