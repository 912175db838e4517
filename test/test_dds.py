"""DDS stays on loopback by the transports every participant is given
(dfanet_tools.ros_process.dds), not only by a network namespace; a user's own DDS
configuration is kept."""
from __future__ import annotations

import socket

import pytest
from helpers_ros import DomainIds, NodeProcess, RosClient, node_command, ros_env, wait_for

from dfanet_tools.ros_process.dds import (
    bound_udp_addresses,
    dds_environment,
    is_loopback,
    large_image_profile,
)

pytestmark = pytest.mark.ros


def test_bound_addresses_are_read_from_the_kernel():
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    wide = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s4.bind(("127.0.0.1", 0))
        s6.bind(("::1", 0))
        wide.bind(("0.0.0.0", 0))
        found = bound_udp_addresses()
        assert ("127.0.0.1", s4.getsockname()[1]) in found
        assert ("::1", s6.getsockname()[1]) in found
        assert ("0.0.0.0", wide.getsockname()[1]) in found and not is_loopback("0.0.0.0")
    finally:
        for s in (s4, s6, wide):
            s.close()


@pytest.mark.slow
def test_node_and_test_client_bind_loopback_only(ros_domain):
    node = NodeProcess(node_command({"camera_topics": ["/dds/image"], "device": "cpu",
                                     "backend": "eager", "cpu_threads": 1}), ros_env(ros_domain))
    client = RosClient(ros_domain)
    try:
        # Discovery done both ways: the node's class map reaches us.
        from dfanet_ros.msg import ClassMap
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        maps = client.collect(ClassMap, "/segmentation/class_map", latched)
        wait_for(lambda: maps.recent(0.0), 60.0, "the node's class map", node)
        sockets = {"node": bound_udp_addresses(node.proc.pid), "tests": bound_udp_addresses()}
        assert sockets["node"] and sockets["tests"], sockets
        outside = {k: [a for a in v if not is_loopback(a[0])] for k, v in sockets.items()}
        assert outside == {"node": [], "tests": []}, sockets
    finally:
        client.close()
        node.stop()


def test_a_users_profile_is_kept(tmp_path):
    own = tmp_path / "mine.xml"
    own.write_text("<dds/>")
    env = dds_environment({"FASTDDS_DEFAULT_PROFILES_FILE": str(own),
                           "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(own)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    bare = dds_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                            "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"})
    assert bare["FASTDDS_DEFAULT_PROFILES_FILE"] == str(large_image_profile())
    assert bare["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SYSTEM_DEFAULT"
    assert "FASTDDS_BUILTIN_TRANSPORTS" not in bare


def test_each_key_of_a_run_gets_a_valid_domain_of_its_own():
    ids = DomainIds()
    keys = [f"test/test_x.py::test_{i}" for i in range(60)]
    given = [ids(key) for key in keys]
    assert sorted(given) == list(range(170, 230))  # valid (0..232), none given twice
    assert [ids(key) for key in keys] == given  # a key keeps its id
    with pytest.raises(RuntimeError, match="more than 60 DDS domains"):
        ids("one too many")
    # Runs side by side (other process ids) start each key elsewhere in the range.
    firsts = {DomainIds(salt=pid)("test/test_x.py::test_0") for pid in range(1000, 1010)}
    assert len(firsts) == 10
