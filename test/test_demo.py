"""The README's main job: scripts/demo.sh, end to end, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfanet_model.checkpoint import ModelCard, save_model
from dfanet_model.classes import CAMVID
from dfanet_model.network import build_dfanet
from dfanet_model.resources import DEFAULT_CHECKPOINT
from dfanet_tools.ros_process.dds import without_profile

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ros, pytest.mark.slow]


def _user_env(domain: int) -> dict[str, str]:
    """The environment of a user without a DDS profile, as before the test suite set one; the
    venv running these tests is the one the script sets up and uses."""
    return without_profile(dict(os.environ, ROS_DOMAIN_ID=str(domain), DFANET_VENV=sys.prefix,
                                ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST"))


def _run_demo(tmp_path: Path, domain: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / "demo.sh"), "--out", str(tmp_path / "out"),
                           "--no-progress", *args], capture_output=True, text=True,
                          timeout=240, env=_user_env(domain), cwd=tmp_path)


def test_dfanet_demo_run_directly_binds_loopback_only(tmp_path, ros_domain):
    """``dfanet demo`` outside scripts/confined.sh: its own participant and the node it starts
    bind UDP on loopback only, by their transports, even with the user's LOCALHOST range (which
    alone left four sockets on 0.0.0.0)."""
    from helpers_ros import bound_udp_while_running

    from dfanet_tools.ros_process.dds import is_loopback

    args = ["--checkpoint", str(_random_checkpoint(tmp_path))]
    proc = subprocess.Popen([sys.executable, "-m", "dfanet_tools.cli", "demo", "--out",
                             str(tmp_path / "out"), "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_user_env(ros_domain), cwd=tmp_path)
    try:
        seen = bound_udp_while_running(proc, timeout=200)
        output = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, output
    pids = {pid for pid, _, _ in seen}
    assert len(pids) >= 2, f"expected the demo and its node to hold sockets: {seen}"
    outside = sorted((pid, a, p) for pid, a, p in seen if not is_loopback(a))
    assert not outside, f"UDP sockets bound beyond loopback: {outside}"


def _random_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    ckpt = tmp_path / "random_b.safetensors"
    save_model(ckpt, build_dfanet("B", CAMVID.num_classes), ModelCard(
        variant="B", num_classes=CAMVID.num_classes, class_names=list(CAMVID.names),
        class_colors=[list(c) for c in CAMVID.colors], ignore_index=CAMVID.ignore_index,
        dataset="camvid", input_size=[120, 160]))
    return ckpt


def test_demo_replays_the_sample_drive_through_the_node(tmp_path, ros_domain):
    args: list[str] = []
    if not DEFAULT_CHECKPOINT.is_file():
        # Until the trained model ships, the same path with random DFANet-B weights.
        args = ["--checkpoint", str(_random_checkpoint(tmp_path))]
    result = _run_demo(tmp_path, ros_domain, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 CamVid test frames" in result.stdout
    assert "frames sent 8, answered 8, dropped 0" in result.stdout
    assert "mIoU " in result.stdout and "latency p50 " in result.stdout

    report = tmp_path / "out" / "report"
    data = json.loads((report / "report.json").read_text())
    assert data["mode"] == "online" and data["frames"]["scored"] == 8
    assert 0.0 <= data["miou"] <= 1.0
    assert data["device"] in ("cpu", "cuda:0", "cuda:0 fp16")
    assert sorted(p.name for p in (report / "overlays").iterdir()) == \
        [f"frame{i:05d}.png" for i in range(8)]
    for name in ("summary.md", "iou.png", "latency.png"):
        assert (report / name).stat().st_size > 0
    assert (tmp_path / "out" / "sample_drive" / "metadata.yaml").is_file()


def test_demo_names_a_missing_checkpoint(tmp_path, ros_domain):
    result = _run_demo(tmp_path, ros_domain, "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 1
    assert f"checkpoint {tmp_path / 'missing.safetensors'}: file not found" in result.stderr
