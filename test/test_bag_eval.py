"""dfanet bag eval: stamp matching, bad input, the report folder, and online == offline."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dfanet_model.checkpoint import ModelCard, save_model
from dfanet_model.classes import CAMVID
from dfanet_model.metrics import ConfusionMatrix
from dfanet_model.network import build_dfanet
from dfanet_tools.bag.evaluate import EvalError, EvalOptions, evaluate, make_plan
from dfanet_tools.bag.io import BagReader, BagWriter, image_message, typestore
from dfanet_tools.bag.make import make_bag
from dfanet_tools.bag.result import BagEvalResult
from dfanet_tools.bag.scoring import FrameLog, FrameRecord, Scorer
from dfanet_tools.cli import main as dfanet
from dfanet_tools.report import IOU_PNG, LATENCY_PNG, REPORT_JSON, SUMMARY_MD, write_report

pytestmark = pytest.mark.ros

T0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000


def camvid_card() -> ModelCard:
    return ModelCard(variant="B", num_classes=CAMVID.num_classes, class_names=list(CAMVID.names),
                     class_colors=[list(c) for c in CAMVID.colors],
                     ignore_index=CAMVID.ignore_index, dataset="camvid",
                     input_size=[120, 160])  # network size: fast on a small CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Random DFANet-B weights with the CamVid class table: small and fast."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random_b.safetensors"
    save_model(path, build_dfanet("B", CAMVID.num_classes), camvid_card())
    return path


def _label(value: int, shape=(6, 8)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def _drops_bag(path: Path) -> None:
    """Five camera frames; labels for frames 0, 1, 3 and for two stamps with no image at all."""
    rgb = np.zeros((6, 8, 3), np.uint8)
    with BagWriter(path) as w:
        w.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        w.add_topic("/camera/label_gt", "sensor_msgs/msg/Image")
        for i in range(5):
            stamp = T0 + i * PERIOD
            w.write("/camera/image_raw", image_message(rgb, "rgb8", stamp, "camera"), stamp)
            if i in (0, 1, 3):
                w.write("/camera/label_gt", image_message(_label(i), "mono8", stamp, "camera"),
                        stamp)
        for extra in (T0 + 7, T0 + 9 * PERIOD):
            w.write("/camera/label_gt", image_message(_label(1), "mono8", extra, "camera"), extra)


def test_stamps_match_with_drops_and_unmatched_labels(tmp_path, checkpoint):
    _drops_bag(tmp_path / "bag")
    opts = EvalOptions(bag=tmp_path / "bag", checkpoint=checkpoint, mode="offline")
    with BagReader(opts.bag) as reader:
        plan = make_plan(opts, reader)
    assert plan.stamps == [T0 + i * PERIOD for i in range(5)]
    assert sorted(plan.ground_truth) == sorted([T0 + i * PERIOD for i in (0, 1, 3)]
                                               + [T0 + 7, T0 + 9 * PERIOD])
    assert plan.labels_without_image == 2

    # The node answered frames 0, 2, 3 (1 and 4 dropped); frame 2 has no ground truth.
    scorer = Scorer(plan.card, plan.ground_truth)
    records = []
    for i in range(5):
        record = FrameRecord(T0 + i * PERIOD, sent=float(i))
        if i in (0, 2, 3):
            record.received = i + 0.010 * (i + 1)
            record.scored = scorer.add(record.stamp, _label(i if i != 3 else 5))
        records.append(record)
    assert [r.scored for r in records] == [True, False, False, True, False]
    expected = ConfusionMatrix(11, 11)
    expected.update(torch.from_numpy(_label(0)), torch.from_numpy(_label(0)))
    expected.update(torch.from_numpy(_label(3)), torch.from_numpy(_label(5)))
    assert torch.equal(scorer.matrix.mat, expected.mat)

    result = BagEvalResult.build(opts, plan, FrameLog(records, scorer), pacing="test",
                                 device="cpu", latency_definition="test")
    f = result.frames
    assert (f.sent, f.answered, f.dropped, f.scored) == (5, 3, 2, 2)
    assert (f.without_ground_truth, f.labels_without_image) == (1, 2)
    # Sky all right (IoU 1); Road all predicted as Tree: Road and Tree both IoU 0.
    assert result.miou == pytest.approx(1 / 3)
    assert result.latency_ms["p50"] == pytest.approx(30.0)
    text = "\n".join(result.warnings)
    assert "2 ground-truth label(s) have no camera image with the same stamp" in text
    assert "1 answered frame(s) have no ground-truth label" in text
    assert "2 frame(s) sent but not answered (first at stamp 1700000000.100000000)" in text


def test_report_folder(tmp_path, checkpoint):
    _drops_bag(tmp_path / "bag")
    opts = EvalOptions(bag=tmp_path / "bag", checkpoint=checkpoint, mode="offline")
    with BagReader(opts.bag) as reader:
        plan = make_plan(opts, reader)
    scorer = Scorer(plan.card, plan.ground_truth)
    records = [FrameRecord(s, sent=i * 0.1, received=i * 0.1 + 0.02 + 0.001 * i)
               for i, s in enumerate(plan.stamps)]
    for r in records:
        r.scored = scorer.add(r.stamp, _label(0))
    plan = dataclasses.replace(plan, labels_without_image=0, warnings=[])
    result = BagEvalResult.build(opts, plan, FrameLog(records, scorer), pacing="test pacing",
                                 device="cpu", latency_definition="test")
    overlay = np.zeros((6, 8, 3), np.uint8)
    out = write_report(tmp_path / "report", result.to_json(), [("a.png", overlay)])
    data = json.loads((out / REPORT_JSON).read_text())
    # Users parse report.json: its keys are an interface, the typed result must keep them.
    assert list(data) == [
        "bag", "mode", "pacing", "device", "checkpoint", "model", "camera_topic", "label_topic",
        "frames", "miou", "pixel_acc", "pixels", "per_class", "confusion_matrix", "latency_ms",
        "latency_definition", "throughput_fps", "per_frame", "warnings", "overlays"]
    assert list(data["model"]) == ["variant", "dataset", "num_classes", "ignore_index",
                                   "input_size"]
    assert list(data["frames"]) == ["sent", "answered", "dropped", "scored",
                                    "without_ground_truth", "labels_without_image",
                                    "repeated_stamps", "warmup"]
    assert list(data["per_class"][0]) == ["id", "name", "color", "iou", "acc"]
    assert list(data["per_frame"][0]) == ["stamp", "sent_s", "latency_ms", "scored"]
    assert data["frames"]["scored"] == 3 and data["overlays"] == ["a.png"]
    assert data["per_class"][0]["name"] == "Sky" and data["per_class"][3]["iou"] == 0.0
    assert data["per_class"][2]["iou"] is None  # Pole: neither present nor predicted
    for png in (IOU_PNG, LATENCY_PNG, "overlays/a.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / SUMMARY_MD).read_text()
    assert "| Sky | 33.33 | 100.00 |" in summary
    assert "| Pole | n/a | n/a |" in summary
    # Ground truth Sky, Building, Road on one frame each, all predicted Sky: (1/3 + 0 + 0) / 3.
    assert math.isclose(data["miou"], 1 / 9)


def _eval(capsys, *args) -> tuple[int, str]:
    code = dfanet(["bag", "eval", *args, "--no-progress"])
    return code, capsys.readouterr().err


def test_bad_input_errors_name_the_problem(tmp_path, capsys, checkpoint, sample_camvid):
    ck = ["--checkpoint", str(checkpoint), "--mode", "offline"]
    code, err = _eval(capsys, str(tmp_path / "no-such-bag"), *ck)
    assert code == 1 and f"bag {tmp_path / 'no-such-bag'}: not found" in err

    made = make_bag(tmp_path / "bag", sample_camvid, limit=1, start_ns=T0)
    code, err = _eval(capsys, str(made.path), *ck, "--camera-topic", "/front/image_raw")
    assert code == 1
    assert "no camera topic /front/image_raw; the bag has:" in err
    assert "/camera/image_raw  sensor_msgs/msg/Image  (1 messages)" in err
    code, err = _eval(capsys, str(made.path), *ck, "--label-topic", "/gt")
    assert code == 1 and "no ground-truth label topic /gt; the bag has:" in err

    code, err = _eval(capsys, str(made.path), *ck, "--camera-topic", "/camera/label_gt",
                      "--label-topic", "/camera/image_raw")
    assert code == 1
    assert ("ground-truth topic /camera/image_raw, label at stamp 1700000000.000000000: "
            "encoding 'rgb8'; expected mono8 or 8UC1 class ids") in err

    wrong = tmp_path / "wrong"
    with BagWriter(wrong) as w:
        w.write("/camera/image_raw", typestore().types["std_msgs/msg/String"](data="hi"), T0)
    code, err = _eval(capsys, str(wrong), *ck)
    assert code == 1
    assert ("camera topic /camera/image_raw has type std_msgs/msg/String, expected "
            "sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage") in err

    code, err = _eval(capsys, str(made.path), "--checkpoint", str(tmp_path / "none.pt"))
    assert code == 1 and f"checkpoint {tmp_path / 'none.pt'}: file not found" in err


def test_missing_default_checkpoint_is_named(tmp_path, capsys, sample_camvid, monkeypatch):
    from dfanet_model import resources
    monkeypatch.setattr(resources, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors",
                        raising=False)
    made = make_bag(tmp_path / "bag", sample_camvid, limit=1, start_ns=T0)
    code, err = _eval(capsys, str(made.path), "--mode", "offline")
    assert code == 1
    assert "no checkpoint given and the shipped default" in err
    assert "absent.safetensors is not installed; pass --checkpoint FILE" in err


def _children() -> set[int]:
    """Live child processes of this test process (its main thread's, where Popen runs)."""
    pid = os.getpid()
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(c) for c in text.split()}


@pytest.mark.slow
def test_online_equals_offline_on_a_bag_replayed_without_drops(tmp_path, checkpoint,
                                                               sample_camvid, monkeypatch,
                                                               ros_domain):
    """The node over DDS and the engine in-process give the same confusion matrix."""
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain))
    made = make_bag(tmp_path / "bag", sample_camvid, limit=4, start_ns=T0)
    common = dict(bag=made.path, checkpoint=checkpoint, progress=False, overlays=2, timeout=60.0)
    offline, _ = evaluate(EvalOptions(mode="offline", **common))
    before = _children()
    online, snapshots = evaluate(EvalOptions(mode="online", as_fast_as_possible=True,
                                             out=tmp_path / "report", **common))
    assert _children() <= before  # the node process is gone
    assert "configured: DFANet B" in (tmp_path / "report" / "node.log").read_text()

    for result in (online, offline):
        f = result.frames
        assert (f.sent, f.answered, f.dropped, f.scored) == (4, 4, 0, 4)
        assert result.device == "cpu"
    matrix = np.array(online.confusion_matrix)
    assert matrix.sum() > 0.9 * 4 * 360 * 480  # every frame scored, a few void pixels left out
    assert (matrix.sum(axis=0) > 0).sum() >= 2, "predictions of one class prove little"
    assert online.confusion_matrix == offline.confusion_matrix
    assert online.miou == offline.miou
    assert online.node_latency_ms.inference["p50"] > 0
    assert "node_latency_ms" in online.to_json() and "node_latency_ms" not in offline.to_json()
    assert [name for name, _ in snapshots] == ["frame00000.png", "frame00003.png"]
    assert snapshots[0][1].shape == (360, 960, 3)  # prediction beside ground truth


@pytest.mark.slow
def test_online_warms_up_on_the_first_frame_that_decodes(tmp_path, checkpoint, sample_camvid,
                                                         monkeypatch, ros_domain):
    """A first frame the node cannot decode once made the online mode resend it for the whole
    start-up timeout and then blame the node; now it is counted as the offline mode counts it."""
    import time

    from dfanet_tools.bag.io import COMPRESSED_IMAGE, compressed_message

    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain))
    topic = "/camera/image_raw/compressed"
    jpegs = [p.read_bytes() for p in sorted((sample_camvid / "test").glob("*.jpg"))[:2]]
    bags = {}
    for name, payloads in (("first_bad", [b"\xff\xd8\xff\xe0 not a jpeg", *jpegs]),
                           ("all_bad", [b"GIF89a", b"\x00" * 40])):
        bags[name] = tmp_path / name
        with BagWriter(bags[name]) as w:
            w.add_topic(topic, COMPRESSED_IMAGE)
            for i, data in enumerate(payloads):
                stamp = T0 + i * PERIOD
                w.write(topic, compressed_message(data, "jpeg", stamp, "camera"), stamp)
    common = dict(checkpoint=checkpoint, camera_topic=topic, label_topic=None, progress=False,
                  overlays=0, timeout=60.0, startup_timeout=90.0, as_fast_as_possible=True)
    offline, _ = evaluate(EvalOptions(bag=bags["first_bad"], mode="offline", **common))
    start = time.monotonic()
    online, _ = evaluate(EvalOptions(bag=bags["first_bad"], mode="online", **common))
    assert time.monotonic() - start < 60.0
    for result in (offline, online):
        f = result.frames
        assert (f.sent, f.answered, f.dropped) == (3, 2, 1), result.mode
        assert any("1 camera frame(s) could not be segmented (first: stamp "
                   "1700000000.000000000: decode: corrupt jpeg" in w
                   for w in result.warnings), result.warnings
    start = time.monotonic()
    with pytest.raises(EvalError, match=f"no frame on {topic} can be segmented: all 2 are bad "
                                        r"\(first: stamp 1700000000\.000000000: decode"):
        evaluate(EvalOptions(bag=bags["all_bad"], mode="online", **common))
    assert time.monotonic() - start < 60.0
