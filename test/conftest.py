"""Shared fixtures: data locations, a private ROS log directory, DDS confined to loopback."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from dfanet_tools.ros_process.dds import dds_environment

REPO = Path(__file__).resolve().parents[1]

# rclpy logs to ~/.ros/log by default, and DDS discovery multicasts beyond the machine: keep
# both local for every test, including those that start processes (they inherit os.environ).
_LOG_DIR = tempfile.TemporaryDirectory(prefix="dfanet-test-roslog-")
os.environ["ROS_LOG_DIR"] = _LOG_DIR.name
# Every participant binds loopback only, by its transports (dfanet_tools.ros_process.dds).
os.environ.update(dds_environment())


def find_camvid() -> Path | None:
    """The full CamVid set: $DFANET_CAMVID, else ../shared/data/camvid beside the repository."""
    for candidate in (os.environ.get("DFANET_CAMVID"), REPO.parent / "shared" / "data" / "camvid"):
        if candidate and (Path(candidate) / "testannot").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = find_camvid()
    if root is None:
        pytest.skip("full CamVid not found: set DFANET_CAMVID or place it at "
                    "../shared/data/camvid beside the repository")
    return root


@pytest.fixture(scope="session")
def sample_camvid() -> Path:
    from dfanet_model.resources import SAMPLE_CAMVID_DIR
    return SAMPLE_CAMVID_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module: the suite shares two cores, and two threads per
    process spend their time waiting for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ros_domain(request) -> int:
    """A ROS_DOMAIN_ID of this test's own, for the DDS participants and processes it starts
    (helpers_ros.domain_id: unique in the run).  Only for tests marked ``ros``."""
    if request.node.get_closest_marker("ros") is None:
        pytest.fail(f"{request.node.nodeid} talks DDS: mark it (or its module) with "
                    "pytest.mark.ros")
    from helpers_ros import domain_id

    return domain_id(request.node.nodeid)
