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

The parts: ``frames`` reads the bag, ``scoring`` records and scores each frame, ``offline``
and ``online`` run the two modes, ``result`` holds what report.json holds.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfanet_model import resources

from .frames import camera_stamps, read_ground_truth, resolve_camera_topic
from .io import DEFAULT_LABEL_TOPIC, BagError, BagReader, normalize_topic
from .result import BagEvalResult, Snapshot, print_summary

log = logging.getLogger("dfanet.bag_eval")


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


def checkpoint_to_use(checkpoint: str | os.PathLike | None) -> Path:
    """``checkpoint``, else the shipped one; EvalError when neither exists."""
    try:
        return resources.checkpoint_or_default(checkpoint)
    except FileNotFoundError as e:
        raise EvalError(f"{e}; pass --checkpoint FILE") from None


@dataclass
class Plan:
    """What both modes need to know of the model and the bag before the first frame."""

    checkpoint: Path
    card: Any
    camera_topic: str
    label_topic: str | None
    ground_truth: dict[int, np.ndarray]
    stamps: list[int]           # unique camera stamps in bag order
    repeats: int                # camera messages repeating an earlier stamp
    labels_without_image: int
    warnings: list[str]


def make_plan(opts: EvalOptions, reader: BagReader) -> Plan:
    """Read the checkpoint's card, resolve the topics and load the ground truth."""
    from dfanet_model.checkpoint import read_checkpoint

    checkpoint = checkpoint_to_use(opts.checkpoint)
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
    return Plan(checkpoint, card, camera_topic, label_topic, ground_truth, stamps, repeats,
                labels_without_image, warnings)


def evaluate(opts: EvalOptions) -> tuple[BagEvalResult, list[Snapshot]]:
    """Run the evaluation ``opts`` asks for; returns (result, overlay snapshots)."""
    if opts.mode not in ("online", "offline"):
        raise EvalError(f"unknown mode {opts.mode!r} (valid: online, offline)")
    if opts.rate is not None and not opts.rate > 0:
        raise EvalError(f"rate must be positive, got {opts.rate}")
    with BagReader(opts.bag) as reader:
        plan = make_plan(opts, reader)
        # Imported here: each mode imports this module's options and errors.
        if opts.mode == "offline":
            from .offline import evaluate_offline
            return evaluate_offline(opts, reader, plan)
        from .online import evaluate_online
        return evaluate_online(opts, reader, plan)


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
    write_report(opts.out, result.to_json(), snapshots)
    return 0
