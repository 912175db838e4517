"""What an evaluation is asked and what it knows before the first frame: the options, the
plan and the error, shared by ``evaluate`` and the two modes (``offline``, ``online``) and
their ``result``, which import them from here rather than from each other.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfanet_model import resources

from .frames import camera_stamps, read_ground_truth, resolve_camera_topic
from .io import DEFAULT_LABEL_TOPIC, BagError, BagReader, normalize_topic

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
