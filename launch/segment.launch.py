"""Bring up the DFANet segmentation node, and rviz on request.

    ros2 launch dfanet_ros segment.launch.py
    ros2 launch dfanet_ros segment.launch.py camera_topics:=/front/image_raw,/rear/image_raw \
        checkpoint:=/models/my_dfanet.safetensors device:=cuda rviz:=true

One node serves every camera (one model in memory); each camera's outputs go to its own
namespace: /front/image_raw -> /front/segmentation/{label,color,overlay,info}.
``large_images:=true`` gives the launched processes the shipped Fast DDS profile for images
above 0.5 MB (the camera driver needs it as well; see the README).
"""
# (ruff takes "launch" for this repository's launch/ folder; these are ROS 2 launch imports)
from launch import LaunchDescription  # noqa: I001
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "dfanet_ros"


def _segmentation_node(context):
    # A comma-separated argument becomes the node's string-array parameter.
    topics = LaunchConfiguration("camera_topics").perform(context)
    overrides = {"camera_topics": [t.strip() for t in topics.split(",") if t.strip()]}
    for name in ("checkpoint", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:  # empty: keep the params file's value
            overrides[name] = value
    return [Node(package=PACKAGE, executable="segmentation_node", name="dfanet_segmentation",
                 output="screen", emulate_tty=True,
                 parameters=[LaunchConfiguration("params_file"), overrides])]


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("camera_topics", default_value="camera/image_raw",
                              description="camera image topic(s), comma-separated"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="DFANet checkpoint; empty: the params file's"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu, cuda or cuda:N; empty: the params file's"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config",
                                                                  "segment.yaml"]),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="open rviz with the camera, overlay and colour mask"),
        DeclareLaunchArgument("large_images", default_value="false",
                              description="use config/fastdds_large_images.xml (Fast DDS)"),
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE",
            PathJoinSubstitution([share, "config", "fastdds_large_images.xml"]),
            condition=IfCondition(LaunchConfiguration("large_images"))),
        OpaqueFunction(function=_segmentation_node),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
             arguments=["-d", PathJoinSubstitution([share, "config", "segment.rviz"])],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
