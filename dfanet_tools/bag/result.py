"""The result of one bag evaluation: its numbers, the terminal summary and the overlay snapshots.

``BagEvalResult.to_json()`` is what report.json holds; users parse that file, so its keys and
their order stay as they are.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from ..report import format_number, overlay_image
from ..stats import percentiles
from .frames import stamp_str
from .scoring import FrameLog, FrameRecord

if TYPE_CHECKING:
    from .plan import EvalOptions, Plan

Percentiles = dict[str, float]  # p50, p90, p99, mean and max, as ``percentiles`` gives them
Snapshot = tuple[str, np.ndarray]  # (file name, RGB overlay)

NODE_LATENCY_DEFINITION = ("the node's own SegmentationInfo: total is its subscription callback "
                           "to the last publish; inference is the engine alone")


@dataclass
class ModelSummary:
    variant: str
    dataset: str | None
    num_classes: int
    ignore_index: int
    input_size: list[int]  # (h, w) the network ran at


@dataclass
class FrameCounts:
    sent: int
    answered: int
    dropped: int               # sent and never answered
    scored: int
    without_ground_truth: int  # answered, but no label has the frame's stamp
    labels_without_image: int  # labels whose stamp no camera frame has
    repeated_stamps: int       # camera messages skipped for repeating an earlier stamp
    warmup: int


@dataclass
class ClassScore:
    id: int
    name: str
    color: list[int]
    iou: float
    acc: float


@dataclass
class FrameRow:
    stamp: str                # sec.nanosec
    sent_s: float | None      # seconds since the first frame was sent
    latency_ms: float | None  # None: not answered
    scored: bool


@dataclass
class NodeLatency:
    """The node's own timing of the frames it answered (online only)."""

    total: Percentiles
    inference: Percentiles
    definition: str = NODE_LATENCY_DEFINITION

    @classmethod
    def of(cls, total_ms: list[float], inference_ms: list[float]) -> NodeLatency:
        return cls(percentiles(total_ms), percentiles(inference_ms))


@dataclass
class BagEvalResult:
    """Every number of one evaluation; ``to_json()`` gives the report.json structure."""

    bag: str
    mode: str
    pacing: str
    device: str
    checkpoint: str
    model: ModelSummary
    camera_topic: str
    label_topic: str | None
    frames: FrameCounts
    miou: float
    pixel_acc: float
    pixels: int
    per_class: list[ClassScore]
    confusion_matrix: list[list[int]]  # rows ground truth, columns predictions
    latency_ms: Percentiles
    latency_definition: str
    throughput_fps: float
    per_frame: list[FrameRow]
    warnings: list[str]
    node_latency_ms: NodeLatency | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data, NaN kept (the report writer turns it into null)."""
        data = dataclasses.asdict(self)
        if self.node_latency_ms is None:  # offline reports never had the key
            del data["node_latency_ms"]
        return data

    @classmethod
    def build(cls, opts: EvalOptions, plan: Plan, log: FrameLog, *, pacing: str, device: str,
              latency_definition: str, node_latency: NodeLatency | None = None
              ) -> BagEvalResult:
        """The result of the run ``log`` recorded, planned by ``plan`` as ``opts`` asked."""
        card, records, scorer = plan.card, log.records, log.scorer
        answered = [_answer_times(r) for r in records if r.received is not None]
        dropped = [r for r in records if r.received is None]
        scores = scorer.matrix.compute() if scorer is not None else None
        t0 = min((r.sent for r in records if r.sent is not None), default=0.0)
        return cls(
            bag=str(opts.bag), mode=opts.mode, pacing=pacing, device=device,
            checkpoint=str(plan.checkpoint),
            model=ModelSummary(card.variant, card.dataset, card.num_classes, card.ignore_index,
                               list(opts.size) if opts.size else list(card.input_size)),
            camera_topic=plan.camera_topic, label_topic=plan.label_topic,
            frames=FrameCounts(
                sent=len(records), answered=len(answered), dropped=len(dropped),
                scored=scorer.scored if scorer else 0,
                without_ground_truth=scorer.without_ground_truth if scorer else 0,
                labels_without_image=plan.labels_without_image,
                repeated_stamps=plan.repeats, warmup=opts.warmup),
            miou=scores.miou if scores else math.nan,
            pixel_acc=scores.pixel_acc if scores else math.nan,
            pixels=scores.pixels if scores else 0,
            per_class=[ClassScore(i, name, list(card.class_colors[i]),
                                  scores.iou[i] if scores else math.nan,
                                  scores.class_acc[i] if scores else math.nan)
                       for i, name in enumerate(card.class_names)],
            confusion_matrix=scorer.matrix.mat.tolist() if scorer else [],
            latency_ms=percentiles([latency for _, _, latency in answered]),
            latency_definition=latency_definition,
            throughput_fps=_throughput(answered),
            per_frame=[FrameRow(stamp_str(r.stamp), None if r.sent is None else r.sent - t0,
                                r.latency_ms, r.scored) for r in records],
            warnings=_warnings(plan, log, dropped),
            node_latency_ms=node_latency)


def _answer_times(r: FrameRecord) -> tuple[float, float, float]:
    """Sent, received and latency (ms) of an answered frame."""
    sent, received, latency = r.sent, r.received, r.latency_ms
    # A frame is answered only after it is sent, so an answered frame has all three.
    assert sent is not None and received is not None and latency is not None
    return sent, received, latency


def _throughput(answered: list[tuple[float, float, float]]) -> float:
    """Answered frames per second, first send to last answer (of answer times)."""
    if not answered:
        return math.nan
    span = max(received for _, received, _ in answered) - min(sent for sent, _, _ in answered)
    return len(answered) / span if span > 0 else math.nan


def _warnings(plan: Plan, log: FrameLog, dropped: list[FrameRecord]) -> list[str]:
    """What the bag and the run did that the numbers alone do not show, in a fixed order."""
    warnings = list(plan.warnings)
    if log.bad_frames:
        warnings.append(f"{len(log.bad_frames)} camera frame(s) could not be segmented (first: "
                        f"{log.bad_frames[0]})")
    if log.bad_answers:
        warnings.append(f"{len(log.bad_answers)} answer(s) could not be read as labels (first: "
                        f"{log.bad_answers[0]})")
    if plan.labels_without_image:
        warnings.append(f"{plan.labels_without_image} ground-truth label(s) have no camera image "
                        "with the same stamp; they were not scored")
    if plan.repeats:
        warnings.append(f"{plan.repeats} camera message(s) repeat an earlier header stamp; only "
                        "the first of each was sent")
    scorer = log.scorer
    if scorer is not None and scorer.without_ground_truth:
        warnings.append(f"{scorer.without_ground_truth} answered frame(s) have no ground-truth "
                        "label with the same stamp; they were not scored")
    if scorer is not None and scorer.size_mismatch:
        warnings.append(f"{len(scorer.size_mismatch)} prediction(s) differ in size from their "
                        f"ground truth, not scored (first: {scorer.size_mismatch[0]})")
    if dropped:
        warnings.append(f"{len(dropped)} frame(s) sent but not answered (first at stamp "
                        f"{stamp_str(dropped[0].stamp)})")
    return warnings


def print_summary(result: BagEvalResult, file: TextIO | None = None) -> None:
    """The few lines a person wants on the terminal."""
    file = file or sys.stdout
    f, lat = result.frames, result.latency_ms

    def fmt(v: float, scale: float = 1.0, digits: int = 1) -> str:
        return format_number(v, digits, scale)

    print(f"{result.mode} evaluation of {result.bag} ({result.pacing}, "
          f"device {result.device})", file=file)
    print(f"  mIoU {fmt(result.miou, 100, 2)}%  pixel accuracy "
          f"{fmt(result.pixel_acc, 100, 2)}%  over {f.scored} scored frame(s)", file=file)
    print(f"  frames sent {f.sent}, answered {f.answered}, dropped {f.dropped}", file=file)
    print(f"  latency p50 {fmt(lat['p50'])} ms, p90 {fmt(lat['p90'])} ms, p99 {fmt(lat['p99'])} "
          f"ms; throughput {fmt(result.throughput_fps)} frames/s", file=file)
    node = result.node_latency_ms
    if node and math.isfinite(node.total["p50"]):
        print(f"  inside the node: total p50 {fmt(node.total['p50'])} ms, inference p50 "
              f"{fmt(node.inference['p50'])} ms", file=file)
    for w in result.warnings:
        print(f"  warning: {w}", file=file)


def pick_snapshots(stamps: list[int], n: int) -> dict[int, int]:
    """Up to ``n`` stamps spread evenly over the drive -> their frame index."""
    if n <= 0 or not stamps:
        return {}
    idx = np.unique(np.linspace(0, len(stamps) - 1, num=min(n, len(stamps))).round())
    return {stamps[int(i)]: int(i) for i in idx}


def overlay_snapshot(index: int, image: np.ndarray, encoding: str, label: np.ndarray,
                     colors: list[list[int]], truth: np.ndarray | None) -> Snapshot:
    """``frameNNNNN.png``: the prediction overlay, beside the ground-truth overlay if any."""
    rgb = image[..., 2::-1] if encoding in ("bgr8", "bgra8") else image
    panels = [overlay_image(rgb, label, colors)]
    if truth is not None and truth.shape == label.shape:
        panels.append(overlay_image(rgb, truth, colors))
    return f"frame{index:05d}.png", np.concatenate(panels, axis=1)
