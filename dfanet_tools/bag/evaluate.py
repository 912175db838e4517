"""``dfanet bag eval``: replay a bag's camera topic through the segmentation node and score it.

Online mode (the default) plays the camera messages over DDS into the node (one it starts as a
subprocess, or a running one), receives its ``label`` outputs, matches them to the bag's
ground-truth labels by header stamp and scores them with the project's one ``ConfusionMatrix``.
Offline mode feeds the same messages, decoded by the node's own ``conversions``, straight
through the ``SegmentationEngine`` in this process, with no DDS and no node: deterministic
numbers, and the check on the online path (with no frame dropped, both give the same
confusion matrix).

Pacing (online): the recorded rate (bag receive times), a fixed rate, or as fast as possible
with backpressure (the next frame leaves only when the previous one is answered or timed out,
so the node never drops one for a newer frame).  Every frame not answered is counted, never
silently lost.  Latency is send to receive in this process (online) or ``engine.run`` wall
time (offline).
"""
from __future__ import annotations

import itertools
import logging
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..report import overlay_image
from ..ros_process import DdsClient, NodeProcess, node_command
from ..stats import percentiles
from .io import (
    COMPRESSED_IMAGE,
    IMAGE,
    BagError,
    BagReader,
    header_stamp_ns,
    normalize_topic,
)

log = logging.getLogger("dfanet.bag_eval")

CAMERA_TYPES = (IMAGE, COMPRESSED_IMAGE)
LABEL_ENCODINGS = ("mono8", "8UC1")
DEFAULT_CAMERA_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/label_gt"


class EvalError(RuntimeError):
    """An evaluation that cannot run; the message says what is wrong and where."""


@dataclass
class EvalOptions:
    bag: Path
    checkpoint: Path | None = None          # None: the shipped default checkpoint
    mode: str = "online"                     # online | offline
    rate: float | None = None                # frames/s; None: the recorded rate
    as_fast_as_possible: bool = False        # backpressure pacing (online)
    camera_topic: str | None = None          # None: /camera/image_raw or the only image topic
    label_topic: str | None = DEFAULT_LABEL_TOPIC  # None: no ground truth, latency only
    out: Path | None = None                  # report folder
    size: tuple[int, int] | None = None      # network input (h, w); None: the card's
    device: str = "auto"
    cpu_threads: int = 0                     # torch CPU threads of the engine; 0: default
    connect: bool = False                    # use a running node instead of starting one
    output_topic: str | None = None          # the node's label topic (default: derived)
    timeout: float = 10.0                    # seconds to wait for an answer
    startup_timeout: float = 120.0           # seconds for the node to come up
    warmup: int = 2                          # frames sent first and not scored or timed
    overlays: int = 4                        # overlay snapshots in the report
    progress: bool = True
    node_args: list[str] = field(default_factory=list)  # extra ``-p name:=value`` for the node


@dataclass
class FrameRecord:
    stamp: int
    sent: float | None = None      # perf_counter at send (online) / run start (offline)
    received: float | None = None  # perf_counter at answer
    scored: bool = False

    @property
    def latency_ms(self) -> float | None:
        if self.sent is None or self.received is None:
            return None
        return 1000.0 * (self.received - self.sent)


# ------------------------------------------------------------------------------------------
# Reading the bag: topics, ground truth, camera frames


def resolve_camera_topic(reader: BagReader, requested: str | None, label_topic: str | None
                         ) -> str:
    """The camera topic to replay: the one asked for, else the default or the only image one."""
    if requested:
        return reader.require_topic(requested, CAMERA_TYPES, "camera").name
    if DEFAULT_CAMERA_TOPIC in reader.topics:
        return reader.require_topic(DEFAULT_CAMERA_TOPIC, CAMERA_TYPES, "camera").name
    label = normalize_topic(label_topic) if label_topic else None
    candidates = [t.name for t in reader.topics.values()
                  if t.msgtype in CAMERA_TYPES and t.name != label]
    if len(candidates) == 1:
        return candidates[0]
    what = "several image topics" if candidates else "no image topic"
    raise BagError(reader.path, f"{what}; choose one with --camera-topic. The bag has:\n"
                                f"{reader.describe_topics()}")


def _ros_message(raw: bytes, msgtype: str) -> Any:
    """The rclpy message of a bag's CDR bytes: decoded exactly as the node receives it."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    return deserialize_message(raw, Image if msgtype == IMAGE else CompressedImage)


def label_array(msg: Any) -> np.ndarray:
    """The (H, W) class ids of a mono8 label Image (rclpy), or ValueError naming the fault."""
    from dfanet_ros.conversions import image_to_array

    if msg.encoding not in LABEL_ENCODINGS:
        raise ValueError(f"encoding {msg.encoding!r}; expected {' or '.join(LABEL_ENCODINGS)} "
                         "class ids")
    return image_to_array(msg)[:, :, 0]


def read_ground_truth(reader: BagReader, topic: str) -> tuple[dict[int, np.ndarray], list[str]]:
    """Label images by header stamp, and warnings (duplicate stamps)."""
    name = reader.require_topic(topic, (IMAGE,), "ground-truth label").name
    labels: dict[int, np.ndarray] = {}
    duplicates = 0
    for _, raw in reader.raw_messages(name):
        msg = _ros_message(bytes(raw), IMAGE)
        stamp = header_stamp_ns(msg)
        if stamp in labels:
            duplicates += 1
            continue
        try:
            labels[stamp] = label_array(msg).copy()
        except ValueError as e:
            raise BagError(reader.path, f"ground-truth topic {name}, label at stamp "
                                        f"{_stamp_str(stamp)}: {e}") from None
    warnings = []
    if duplicates:
        warnings.append(f"{duplicates} ground-truth label(s) repeat an earlier stamp; the "
                        "first of each was used")
    return labels, warnings


@dataclass
class CameraFrame:
    stamp: int
    bag_time: int
    raw: bytes
    msg: Any  # the rosbags message (data views ``raw``)


def camera_frames(reader: BagReader, topic: str) -> Iterator[CameraFrame]:
    """The camera messages in bag order, each once: repeated header stamps are skipped."""
    msgtype = reader.topics[topic].msgtype
    from .io import typestore
    store = typestore()
    seen: set[int] = set()
    for bag_time, data in reader.raw_messages(topic):
        raw = bytes(data)
        msg = store.deserialize_cdr(raw, msgtype)
        stamp = header_stamp_ns(msg)
        if stamp in seen:
            continue
        seen.add(stamp)
        yield CameraFrame(stamp, bag_time, raw, msg)


def camera_stamps(reader: BagReader, topic: str) -> tuple[list[int], int]:
    """Unique header stamps of the camera topic in bag order, and how many repeats there were."""
    stamps, seen, repeats = [], set(), 0
    for _, msg in reader.messages(topic):
        stamp = header_stamp_ns(msg)
        if stamp in seen:
            repeats += 1
        else:
            seen.add(stamp)
            stamps.append(stamp)
    return stamps, repeats


def decode_camera(frame: CameraFrame, msgtype: str) -> tuple[np.ndarray, str]:
    """Pixels and encoding of a camera frame, through the node's own conversions.

    Raises ``conversions.BadImage`` for a frame the node would refuse.
    """
    from dfanet_ros.conversions import compressed_to_array, image_to_array

    msg = _ros_message(frame.raw, msgtype)
    if msgtype == IMAGE:
        return image_to_array(msg), msg.encoding
    return compressed_to_array(msg)


def _stamp_str(stamp: int) -> str:
    return f"{stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}"


# ------------------------------------------------------------------------------------------
# Scoring


class Scorer:
    """Matches predicted label images to the ground truth by stamp and accumulates the score."""

    def __init__(self, card: Any, ground_truth: dict[int, np.ndarray]) -> None:
        from dfanet_model.metrics import ConfusionMatrix

        self.card = card
        self.ground_truth = ground_truth
        self.matrix = ConfusionMatrix(card.num_classes, card.ignore_index)
        self.scored = 0
        self.without_ground_truth = 0
        self.size_mismatch: list[str] = []
        self._lock = threading.Lock()

    def add(self, stamp: int, label: np.ndarray) -> bool:
        """Score one prediction; False when no ground truth has its stamp or sizes differ."""
        import torch

        target = self.ground_truth.get(stamp)
        if target is None:
            with self._lock:
                self.without_ground_truth += 1
            return False
        if target.shape != label.shape[:2]:
            with self._lock:
                self.size_mismatch.append(
                    f"stamp {_stamp_str(stamp)}: prediction {label.shape[0]}x{label.shape[1]}, "
                    f"ground truth {target.shape[0]}x{target.shape[1]}")
            return False
        with self._lock:
            self.matrix.update(torch.from_numpy(target), torch.from_numpy(label))
            self.scored += 1
        return True


# ------------------------------------------------------------------------------------------
# Result


def build_result(opts: EvalOptions, card: Any, checkpoint: Path, device: str, camera_topic: str,
                 label_topic: str | None, pacing: str, records: list[FrameRecord],
                 scorer: Scorer | None, labels_without_image: int, repeats: int,
                 warnings: list[str], latency_definition: str) -> dict[str, Any]:
    """Every number of one evaluation as plain data (what report.json holds)."""
    answered = [r for r in records if r.received is not None]
    latencies = [r.latency_ms for r in answered]
    throughput = math.nan
    if answered:
        span = max(r.received for r in answered) - min(r.sent for r in answered)
        throughput = len(answered) / span if span > 0 else math.nan
    scores = scorer.matrix.compute() if scorer is not None else None
    warnings = list(warnings)
    if labels_without_image:
        warnings.append(f"{labels_without_image} ground-truth label(s) have no camera image "
                        "with the same stamp; they were not scored")
    if repeats:
        warnings.append(f"{repeats} camera message(s) repeat an earlier header stamp; only the "
                        "first of each was sent")
    if scorer is not None and scorer.without_ground_truth:
        warnings.append(f"{scorer.without_ground_truth} answered frame(s) have no ground-truth "
                        "label with the same stamp; they were not scored")
    if scorer is not None and scorer.size_mismatch:
        warnings.append(f"{len(scorer.size_mismatch)} prediction(s) differ in size from their "
                        f"ground truth, not scored (first: {scorer.size_mismatch[0]})")
    dropped = [r for r in records if r.received is None]
    if dropped:
        warnings.append(f"{len(dropped)} frame(s) sent but not answered (first at stamp "
                        f"{_stamp_str(dropped[0].stamp)})")
    t0 = min((r.sent for r in records if r.sent is not None), default=0.0)
    per_class = [{"id": i, "name": name, "color": list(card.class_colors[i]),
                  "iou": scores.iou[i] if scores else math.nan,
                  "acc": scores.class_acc[i] if scores else math.nan}
                 for i, name in enumerate(card.class_names)]
    return {
        "bag": str(opts.bag),
        "mode": opts.mode,
        "pacing": pacing,
        "device": device,
        "checkpoint": str(checkpoint),
        "model": {"variant": card.variant, "dataset": card.dataset,
                  "num_classes": card.num_classes, "ignore_index": card.ignore_index,
                  "input_size": list(opts.size) if opts.size else list(card.input_size)},
        "camera_topic": camera_topic,
        "label_topic": label_topic,
        "frames": {"sent": len(records), "answered": len(answered), "dropped": len(dropped),
                   "scored": scorer.scored if scorer else 0,
                   "without_ground_truth": scorer.without_ground_truth if scorer else 0,
                   "labels_without_image": labels_without_image,
                   "repeated_stamps": repeats, "warmup": opts.warmup},
        "miou": scores.miou if scores else math.nan,
        "pixel_acc": scores.pixel_acc if scores else math.nan,
        "pixels": scores.pixels if scores else 0,
        "per_class": per_class,
        "confusion_matrix": scorer.matrix.mat.tolist() if scorer else [],
        "latency_ms": percentiles(latencies),
        "latency_definition": latency_definition,
        "throughput_fps": throughput,
        "per_frame": [{"stamp": _stamp_str(r.stamp),
                       "sent_s": None if r.sent is None else r.sent - t0,
                       "latency_ms": r.latency_ms, "scored": r.scored} for r in records],
        "warnings": warnings,
    }


def evaluate_and_report(opts: EvalOptions, prog: str) -> int:
    """Evaluate, print the summary and write the report folder; the command's exit status.

    A bad bag, checkpoint or option is one line on stderr (status 1), Ctrl-C status 130.
    """
    from dfanet_model.checkpoint import CheckpointError

    from ..report import write_report

    try:
        result, snapshots = evaluate(opts)
    except (BagError, CheckpointError, EvalError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the node process has been stopped on the way out
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print_summary(result)
    write_report(opts.out, result, snapshots)
    return 0


def print_summary(result: dict[str, Any], file: Any = None) -> None:
    """The few lines a person wants on the terminal."""
    file = file or sys.stdout
    f, lat = result["frames"], result["latency_ms"]

    def fmt(v: float, scale: float = 1.0, digits: int = 1) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v * scale:.{digits}f}"

    print(f"{result['mode']} evaluation of {result['bag']} ({result['pacing']}, "
          f"device {result['device']})", file=file)
    print(f"  mIoU {fmt(result['miou'], 100, 2)}%  pixel accuracy "
          f"{fmt(result['pixel_acc'], 100, 2)}%  over {f['scored']} scored frame(s)", file=file)
    print(f"  frames sent {f['sent']}, answered {f['answered']}, dropped {f['dropped']}",
          file=file)
    print(f"  latency p50 {fmt(lat['p50'])} ms, p90 {fmt(lat['p90'])} ms, p99 {fmt(lat['p99'])} "
          f"ms; throughput {fmt(result['throughput_fps'])} frames/s", file=file)
    node = result.get("node_latency_ms")
    if node and math.isfinite(node["total"]["p50"]):
        print(f"  inside the node: total p50 {fmt(node['total']['p50'])} ms, inference p50 "
              f"{fmt(node['inference']['p50'])} ms", file=file)
    for w in result["warnings"]:
        print(f"  warning: {w}", file=file)


# ------------------------------------------------------------------------------------------
# Shared set-up


def default_checkpoint() -> Path:
    from dfanet_model import resources
    path = getattr(resources, "DEFAULT_CHECKPOINT", None)
    if path is None or not Path(path).is_file():
        raise EvalError("no checkpoint given and no default checkpoint is installed"
                        + (f" (expected {path})" if path else "")
                        + "; pass --checkpoint FILE")
    return Path(path)


@dataclass
class _Plan:
    checkpoint: Path
    card: Any
    camera_topic: str
    label_topic: str | None
    ground_truth: dict[int, np.ndarray]
    stamps: list[int]
    repeats: int
    labels_without_image: int
    warnings: list[str]


def _plan(opts: EvalOptions, reader: BagReader) -> _Plan:
    from dfanet_model.checkpoint import read_checkpoint

    checkpoint = Path(opts.checkpoint) if opts.checkpoint else default_checkpoint()
    card = read_checkpoint(checkpoint).card
    camera_topic = resolve_camera_topic(reader, opts.camera_topic, opts.label_topic)
    stamps, repeats = camera_stamps(reader, camera_topic)
    if not stamps:
        raise BagError(reader.path, f"camera topic {camera_topic} has no messages")
    ground_truth: dict[int, np.ndarray] = {}
    warnings: list[str] = []
    label_topic = normalize_topic(opts.label_topic) if opts.label_topic else None
    if label_topic:
        ground_truth, warnings = read_ground_truth(reader, label_topic)
    stamp_set = set(stamps)
    labels_without_image = sum(1 for s in ground_truth if s not in stamp_set)
    if labels_without_image:
        log.warning("%d ground-truth label(s) on %s have no camera image with the same stamp",
                    labels_without_image, label_topic)
    return _Plan(checkpoint, card, camera_topic, label_topic, ground_truth, stamps, repeats,
                 labels_without_image, warnings)


def _pick_snapshots(stamps: list[int], n: int) -> dict[int, int]:
    """Up to ``n`` stamps spread evenly over the drive -> their frame index."""
    if n <= 0 or not stamps:
        return {}
    idx = np.unique(np.linspace(0, len(stamps) - 1, num=min(n, len(stamps))).round())
    return {stamps[int(i)]: int(i) for i in idx}


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, file=sys.stderr)


def evaluate(opts: EvalOptions) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """Run the evaluation ``opts`` asks for; returns (result, overlay snapshots)."""
    if opts.mode not in ("online", "offline"):
        raise EvalError(f"unknown mode {opts.mode!r} (valid: online, offline)")
    if opts.rate is not None and not opts.rate > 0:
        raise EvalError(f"rate must be positive, got {opts.rate}")
    with BagReader(opts.bag) as reader:
        plan = _plan(opts, reader)
        if opts.mode == "offline":
            return _evaluate_offline(opts, reader, plan)
        return _evaluate_online(opts, reader, plan)


# ------------------------------------------------------------------------------------------
# Offline: the engine in this process


def _evaluate_offline(opts: EvalOptions, reader: BagReader, plan: _Plan
                      ) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    from dfanet_ros.engine import DeviceError, SegmentationEngine

    if opts.cpu_threads:
        import torch
        torch.set_num_threads(opts.cpu_threads)
    try:
        engine = SegmentationEngine(plan.checkpoint, device=opts.device, model_size=opts.size)
    except DeviceError as e:
        raise EvalError(str(e)) from None
    msgtype = reader.topics[plan.camera_topic].msgtype
    scorer = Scorer(plan.card, plan.ground_truth) if plan.label_topic else None
    snapshot_stamps = _pick_snapshots(plan.stamps, opts.overlays)
    snapshots = []
    records: list[FrameRecord] = []
    bad: list[str] = []
    outputs = frozenset({"label"})
    warmed = False
    try:
        with _progress(len(plan.stamps), opts.progress, "offline") as bar:
            for frame in camera_frames(reader, plan.camera_topic):
                record = FrameRecord(frame.stamp)
                records.append(record)
                bar.update()
                try:
                    image, encoding = decode_camera(frame, msgtype)
                    if not warmed:  # untimed, unscored runs on the first frame
                        for _ in range(opts.warmup):
                            engine.run(image, encoding=encoding, outputs=outputs)
                        warmed = True
                    record.sent = time.perf_counter()
                    result = engine.run(image, encoding=encoding, outputs=outputs)
                    record.received = time.perf_counter()
                except ValueError as e:  # conversions.BadImage included: the node drops these
                    bad.append(f"stamp {_stamp_str(frame.stamp)}: {e}")
                    continue
                if scorer is not None:
                    record.scored = scorer.add(frame.stamp, result.label)
                if frame.stamp in snapshot_stamps:
                    snapshots.append(_snapshot(snapshot_stamps[frame.stamp], image,
                                               encoding, result.label, plan, frame.stamp))
        device = str(engine.device)
    finally:
        engine.release()
    warnings = list(plan.warnings)
    if bad:
        warnings.append(f"{len(bad)} camera frame(s) could not be segmented (first: {bad[0]})")
    result = build_result(opts, plan.card, plan.checkpoint, device, plan.camera_topic,
                          plan.label_topic, "every frame in order", records, scorer,
                          plan.labels_without_image, plan.repeats, warnings,
                          "the wall time of engine.run per frame (message decoding excluded)")
    return result, snapshots


def _snapshot(index: int, image: np.ndarray, encoding: str, label: np.ndarray, plan: _Plan,
              stamp: int) -> tuple[str, np.ndarray]:
    """``frameNNNNN.png``: the prediction overlay, beside the ground-truth overlay if any."""
    rgb = image[..., 2::-1] if encoding in ("bgr8", "bgra8") else image
    panels = [overlay_image(rgb, label, plan.card.class_colors)]
    truth = plan.ground_truth.get(stamp)
    if truth is not None and truth.shape == label.shape:
        panels.append(overlay_image(rgb, truth, plan.card.class_colors))
    return f"frame{index:05d}.png", np.concatenate(panels, axis=1)


# ------------------------------------------------------------------------------------------
# Online: the node over DDS


class _Replayer(DdsClient):
    """This process's DDS side: publishes camera messages, collects the node's answers."""

    def __init__(self, camera_topic: str, camera_type: str, label_topic: str, info_topic: str,
                 on_label: Callable[[Any, float], None], on_info: Callable[[Any], None]
                 ) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        super().__init__("dfanet_bag_eval")
        self.label_topic, self.info_topic = label_topic, info_topic
        # Reliable, so that a node subscribing reliably gets every frame; a best-effort
        # subscriber still matches it.
        self.publisher = self.node.create_publisher(
            Image if camera_type == IMAGE else CompressedImage, camera_topic,
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self._callbacks = {label_topic: lambda msg: on_label(msg, time.perf_counter()),
                           info_topic: on_info}
        self.subscriptions: list[Any] = []

    def ready(self) -> bool:
        """The node subscribes to the camera topic and publishes the label topic."""
        return (self.publisher.get_subscription_count() > 0
                and self.node.count_publishers(self.label_topic) > 0)

    def subscribe(self) -> None:
        """Subscribe to label and info with the reliability their publishers offer."""
        from dfanet_ros.msg import SegmentationInfo
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        for topic, msg_type in ((self.label_topic, Image), (self.info_topic, SegmentationInfo)):
            infos = self.node.get_publishers_info_by_topic(topic)
            reliable = bool(infos) and all(
                i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
            self.subscriptions.append(self.node.create_subscription(
                msg_type, topic, self._callbacks[topic], qos))

    def publish(self, raw: bytes) -> None:
        self.publisher.publish(raw)


def _node_command(opts: EvalOptions, plan: _Plan) -> list[str]:
    """The segmentation node, as its own process, on the bag's camera topic."""
    params: dict[str, Any] = {"checkpoint": plan.checkpoint,
                              "camera_topics": [plan.camera_topic], "device": opts.device,
                              # Reliable input: a frame may be replaced by a newer one
                              # (counted), never lost in transport.
                              "input_reliability": "reliable"}
    if opts.size:
        params.update(model_height=opts.size[0], model_width=opts.size[1])
    if opts.cpu_threads:
        params["cpu_threads"] = opts.cpu_threads
    return node_command(params, extra=opts.node_args)


def _restamp(frame: CameraFrame, stamp: int) -> bytes:
    """The frame's message serialised again with another header stamp (for warm-up frames)."""
    import dataclasses

    from .io import split_stamp, typestore
    sec, nanosec = split_stamp(stamp)
    msg = frame.msg
    header = dataclasses.replace(
        msg.header, stamp=dataclasses.replace(msg.header.stamp, sec=sec, nanosec=nanosec))
    msg = dataclasses.replace(msg, header=header)
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))


def _evaluate_online(opts: EvalOptions, reader: BagReader, plan: _Plan
                     ) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    from contextlib import ExitStack

    import torch

    from dfanet_ros.segmentation_node import output_topic

    # This process only scores labels (a few ms a frame on one thread); more threads contend
    # with the node for the CPU and, on a busy machine, made scoring 10x slower, not faster.
    torch.set_num_threads(1)
    label_out = normalize_topic(opts.output_topic or output_topic(plan.camera_topic, "label"))
    info_out = label_out.rsplit("/", 1)[0] + "/info"
    camera_type = reader.topics[plan.camera_topic].msgtype
    scorer = Scorer(plan.card, plan.ground_truth) if plan.label_topic else None
    snapshot_stamps = _pick_snapshots(plan.stamps, opts.overlays)
    snapshot_labels: dict[int, np.ndarray] = {}
    snapshot_images: dict[int, tuple[np.ndarray, str]] = {}
    records: dict[int, FrameRecord] = {}
    node_info: dict[int, Any] = {}
    warmup_answers: set[int] = set()
    bad_answers: list[str] = []
    cond = threading.Condition()

    scoring = [0]  # answers being scored right now

    def on_label(msg: Any, received: float) -> None:
        stamp = header_stamp_ns(msg)
        with cond:
            record = records.get(stamp)
            if record is None:
                warmup_answers.add(stamp)
                cond.notify_all()
                return
            if record.received is not None:  # a repeated answer: the first one counts
                return
            # Answered: the next frame may leave while this one is scored.
            record.received = received
            scoring[0] += 1
            cond.notify_all()
        try:
            label = label_array(msg)
        except ValueError as e:
            bad_answers.append(f"stamp {_stamp_str(stamp)}: {e}")
        else:
            if scorer is not None:
                record.scored = scorer.add(stamp, label)
            if stamp in snapshot_stamps:
                snapshot_labels[stamp] = label.copy()
        finally:
            with cond:
                scoring[0] -= 1
                cond.notify_all()

    def on_info(msg: Any) -> None:
        node_info[header_stamp_ns(msg)] = (msg.total_ms, msg.inference_ms, msg.device)

    frames = camera_frames(reader, plan.camera_topic)
    # Warm up on the first frame that decodes: the node answers no other.  Frames before
    # it are still sent in order below, and counted as bad, as the offline mode counts them.
    bad: list[str] = []
    leading: list[CameraFrame] = []
    for frame in frames:
        leading.append(frame)
        try:
            decode_camera(frame, camera_type)
            break
        except ValueError as e:  # conversions.BadImage included
            bad.append(f"stamp {_stamp_str(frame.stamp)}: {e}")
    else:
        raise EvalError(f"no frame on {plan.camera_topic} can be segmented: all "
                        f"{len(leading)} are bad (first: {bad[0] if bad else 'none'})")
    first, good = leading[0], leading[-1]
    known_bad = {f.stamp for f in leading[:-1]}

    tmp_dir = None
    if opts.out is not None:
        log_path = Path(opts.out) / "node.log"
    else:
        tmp_dir = tempfile.TemporaryDirectory(prefix="dfanet-bag-eval-")
        log_path = Path(tmp_dir.name) / "node.log"
    with ExitStack() as stack:
        if tmp_dir is not None:
            stack.callback(tmp_dir.cleanup)
        node = None
        if not opts.connect:
            node = stack.enter_context(NodeProcess(_node_command(opts, plan),
                                                    log_path=log_path))
        replayer = _Replayer(plan.camera_topic, camera_type, label_out, info_out, on_label,
                             on_info)
        stack.callback(replayer.close)

        def check_node() -> None:
            if node is not None and not node.alive():
                raise EvalError(f"the segmentation node exited with code "
                                f"{node.proc.returncode} (log {log_path}):\n{node.tail()}")

        # Start-up: both ends matched, then warm-up frames (re-stamped, never scored or timed)
        # until the node answers; resending covers discovery that completed on one side first.
        deadline = time.monotonic() + opts.startup_timeout
        while not replayer.ready():
            check_node()
            if time.monotonic() > deadline:
                raise EvalError(
                    f"no segmentation node within {opts.startup_timeout:g} s: nobody subscribes "
                    f"to {plan.camera_topic} and publishes {label_out}"
                    + (f" (node log {log_path}:\n{node.tail()})" if node is not None else ""))
            time.sleep(0.1)
        replayer.subscribe()
        taken = set(plan.stamps) | set(plan.ground_truth)
        warm_stamps = [s for s in range(good.stamp - 1000, good.stamp) if s not in taken]
        for k in range(max(1, opts.warmup)):
            stamp = warm_stamps[-1 - k]
            raw = _restamp(good, stamp)
            while True:
                replayer.publish(raw)
                with cond:
                    if cond.wait_for(lambda s=stamp: s in warmup_answers, timeout=5.0):
                        break
                check_node()
                if time.monotonic() > deadline:
                    raise EvalError(f"the segmentation node did not answer a warm-up frame on "
                                    f"{label_out} within {opts.startup_timeout:g} s")

        if opts.as_fast_as_possible:
            pacing = "as fast as possible, one frame in flight"
        elif opts.rate:
            pacing = f"{opts.rate:g} frames/s"
        else:
            pacing = "the recorded rate"
        sent: list[FrameRecord] = []
        last_good: list[FrameRecord] = []
        t_start = time.perf_counter()
        with _progress(len(plan.stamps), opts.progress, "online") as bar:
            for i, frame in enumerate(itertools.chain(leading, frames)):
                if not opts.as_fast_as_possible:
                    offset = (i / opts.rate if opts.rate
                              else (frame.bag_time - first.bag_time) / 1e9)
                    delay = t_start + offset - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                record = FrameRecord(frame.stamp)
                with cond:
                    records[frame.stamp] = record
                    record.sent = time.perf_counter()
                replayer.publish(frame.raw)
                sent.append(record)
                # Checked after sending (the node works on it meanwhile): a frame the node
                # refuses is never answered, so it is counted, not waited for.
                image = None
                if frame.stamp not in known_bad:
                    try:
                        image = decode_camera(frame, camera_type)
                    except ValueError as e:  # conversions.BadImage included
                        bad.append(f"stamp {_stamp_str(frame.stamp)}: {e}")
                if image is None:
                    check_node()
                    bar.update()
                    continue
                last_good[:] = [record]
                if frame.stamp in snapshot_stamps:
                    snapshot_images[frame.stamp] = image
                if opts.as_fast_as_possible:
                    with cond:
                        cond.wait_for(lambda r=record: r.received is not None,
                                      timeout=opts.timeout)
                    if record.received is None:
                        log.warning("no answer for the frame at stamp %s within %g s; counted "
                                    "as dropped", _stamp_str(frame.stamp), opts.timeout)
                check_node()
                bar.update()
            # The node answers in order: once the last frame is answered (or the time is up),
            # anything still unanswered was dropped.
            with cond:
                cond.wait_for(lambda: last_good[-1].received is not None, timeout=opts.timeout)
                cond.wait_for(lambda: scoring[0] == 0, timeout=60.0)
        time.sleep(0.1)  # the info message follows its label
        # Stop spinning before reading what the callbacks wrote.
        stack.pop_all().close()
    warnings = list(plan.warnings)
    if bad:
        warnings.append(f"{len(bad)} camera frame(s) could not be segmented (first: {bad[0]})")
    if bad_answers:
        warnings.append(f"{len(bad_answers)} answer(s) could not be read as labels (first: "
                        f"{bad_answers[0]})")
    devices = {info[2] for info in node_info.values()}
    device = ", ".join(sorted(devices)) if devices else f"{opts.device} (not reported)"
    snapshots = [_snapshot(snapshot_stamps[s], *snapshot_images[s], snapshot_labels[s], plan, s)
                 for s in sorted(snapshot_labels) if s in snapshot_images]
    result = build_result(opts, plan.card, plan.checkpoint, device, plan.camera_topic,
                          plan.label_topic, pacing, sent, scorer,
                          plan.labels_without_image, plan.repeats, warnings,
                          "from publishing the camera message to receiving the node's label "
                          "message, both in the evaluating process")
    answered = [node_info[r.stamp] for r in sent if r.stamp in node_info]
    result["node_latency_ms"] = {
        "total": percentiles([a[0] for a in answered]),
        "inference": percentiles([a[1] for a in answered]),
        "definition": "the node's own SegmentationInfo: total is its subscription callback "
                      "to the last publish; inference is the engine alone"}
    return result, snapshots
