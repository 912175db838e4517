"""Evaluation: confusion-matrix mIoU, per-class IoU and pixel accuracy; ``dfanet eval``.

``predict`` turns uint8 frames into label maps at the frames' own size with the card's one
preprocessing and resize rule (``preprocess``: the frame resized bilinearly to the network's
size, the class map resized back by nearest neighbour, as the node's engine does), and
``evaluate`` accumulates them into the project's one ``ConfusionMatrix``.  Both take plain
tensors, so training, ``dfanet eval`` and the rosbag evaluation share them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .args import MODEL_SIZE_HELP, describe_model_size, model_size, parse_model_size
from .metrics import ConfusionMatrix, SegmentationScores, format_percent, json_safe
from .plot import prediction_grid
from .preprocess import Preprocessing, resize_labels


def effective_precision(device: torch.device, precision: str = "fp32") -> str:
    """The precision ``precision`` runs at on ``device``: bf16 on CUDA and the CPU, fp16 on
    CUDA only (CPU fp16 is slow), fp32 everywhere else."""
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Autocast at ``effective_precision(device, precision)``."""
    precision = effective_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, preprocessing: Preprocessing,
                   size: Sequence[int] | None = None, precision: str = "fp32",
                   channels_last: bool = False) -> torch.Tensor:
    """Float logits (N, C, h, w) at the network's input ``size`` (None: the frames' own) for
    uint8 frames (N, H, W, 3)."""
    x = preprocessing(images, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, precision):
        logits = model(x)
    return logits.float()


def predict(model: nn.Module, images: torch.Tensor, preprocessing: Preprocessing,
            size: Sequence[int] | None = None, precision: str = "fp32",
            channels_last: bool = False) -> torch.Tensor:
    """Label maps (N, H, W) int64 at the frames' size for uint8 frames (N, H, W, 3)."""
    labels = predict_logits(model, images, preprocessing, size, precision,
                            channels_last).argmax(1)
    return resize_labels(labels, images.shape[1:3])


@dataclass
class EvalResult:
    scores: SegmentationScores
    matrix: ConfusionMatrix
    frames: list[dict[str, Any]] = field(default_factory=list)  # per-frame, when asked
    seconds: float = 0.0

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        d = self.scores.as_dict()
        d["seconds"] = self.seconds
        if class_names is not None:
            d["class_names"] = list(class_names)
        return d


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             num_classes: int, ignore_index: int, preprocessing: Preprocessing,
             size: Sequence[int] | None = None, precision: str = "fp32",
             channels_last: bool = False, names: Sequence[str] | None = None,
             per_frame: bool = False, reduce: Any = None) -> EvalResult:
    """Score ``model`` on (uint8 images (N, H, W, 3), labels (N, H, W)) batches.

    The model is put in eval mode and restored afterwards.  ``reduce(tensor)``, if given,
    sums the confusion matrix over processes (distributed evaluation of a sharded split).
    ``per_frame`` also records each frame's mIoU and pixel accuracy (``names`` labels them).
    """
    was_training = model.training
    model.eval()
    total = ConfusionMatrix(num_classes, ignore_index)
    frames: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for images, labels in batches:
            pred = predict(model, images, preprocessing, size, precision, channels_last)
            total.update(labels, pred)
            if per_frame:
                for label, p in zip(labels, pred, strict=True):
                    one = ConfusionMatrix(num_classes, ignore_index)
                    one.update(label, p)
                    s = one.compute()
                    name = names[len(frames)] if names is not None else str(len(frames))
                    frames.append(json_safe({"frame": name, "miou": s.miou,
                                             "pixel_acc": s.pixel_acc, "iou": s.iou}))
    finally:
        model.train(was_training)
    total.mat = total.mat.cpu()
    if reduce is not None:
        reduce(total.mat)
    return EvalResult(total.compute(), total, frames, time.perf_counter() - start)


def split_batches(split: Any, device: torch.device, batch_size: int, rank: int = 0,
                  world_size: int = 1) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a ``SegmentationSplit`` on ``device``; with several ranks, rank r's share."""
    indices = torch.arange(rank, len(split), world_size)
    for chunk in indices.split(batch_size):
        yield split.batch(chunk, device)


def format_scores(scores: SegmentationScores, class_names: Sequence[str], title: str) -> str:
    """A per-class IoU table with mIoU and pixel accuracy, in percent."""
    width = max(len(n) for n in class_names)
    lines = [title, f"  {'class':<{width}}    IoU   acc"]
    for name, iou, acc in zip(class_names, scores.iou, scores.class_acc, strict=True):
        lines.append(f"  {name:<{width}}  {format_percent(iou)}  {format_percent(acc)}")
    lines.append(f"  {'mIoU':<{width}}  {format_percent(scores.miou)}")
    lines.append(f"  {'pixel acc':<{width}}  {format_percent(scores.pixel_acc)}   "
                 f"({scores.pixels:,d} labelled pixels)")
    return "\n".join(lines)


# ---------------------------------------------------------------- dfanet eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="deployable .safetensors or training .pt file")
    parser.add_argument("--data", required=True, help="dataset root (CamVid or Cityscapes)")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--dataset", choices=("camvid", "cityscapes"),
                        help="dataset layout (default: the one the checkpoint was trained on)")
    parser.add_argument("--size", "--model-size", dest="size", type=parse_model_size,
                        default=None, help=MODEL_SIZE_HELP + "; the class map is resized back "
                        "to the label size by nearest neighbour, as the node does")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast on CUDA (default fp32)")
    parser.add_argument("--json", type=Path, help="write the scores to this JSON file")
    parser.add_argument("--grid", type=Path,
                        help="also draw image | ground truth | prediction of a few frames "
                             "(evenly spaced over the split) into this PNG")
    parser.add_argument("--grid-frames", type=int, default=4, help="rows of --grid")
    parser.add_argument("--per-frame", type=Path,
                        help="write each frame's mIoU and pixel accuracy to this JSON file")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_model
    from .classes import CLASS_TABLES
    from .data import DataError, open_split
    from .device import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
        model, card = load_model(args.checkpoint, device)
        dataset = args.dataset or card.dataset
        table = CLASS_TABLES.get(dataset)
        if table is None or table.num_classes != card.num_classes:
            print(f"dfanet eval: {args.checkpoint} predicts {card.num_classes} classes but "
                  f"{dataset or 'its dataset'} has "
                  f"{table.num_classes if table else 'an unknown number of'}; pass --dataset",
                  file=sys.stderr)
            return 1
        # Frames are decoded batch by batch: a large split never has to fit in memory.
        split = open_split(dataset, args.data, args.split)
        h, w = split.frame_size()
        size = model_size(args.size, card.input_size, (h, w))
        result = evaluate(model, split_batches(split, device, args.batch_size),
                          card.num_classes, split.table.ignore_index, card.preprocessing(),
                          size=size, precision=args.precision, names=split.names,
                          per_frame=args.per_frame is not None)
    except (CheckpointError, DataError, DeviceError) as e:
        print(f"dfanet eval: {e}", file=sys.stderr)
        return 1
    title = (f"DFANet {card.variant} ({args.checkpoint}) on {dataset} {args.split}: "
             f"{len(split)} frames {h}x{w}, inference at {size[0]}x{size[1]} "
             f"({describe_model_size(args.size)}), "
             f"{len(split) / result.seconds:.1f} frames/s on {device}")
    print(format_scores(result.scores, card.class_names, title))
    summary = dict(result.as_dict(card.class_names), checkpoint=str(args.checkpoint),
                   dataset=dataset, split=args.split, frames=len(split),
                   frame_size=[h, w], inference_size=list(size))
    if args.json:
        args.json.write_text(json.dumps(json_safe(summary), indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.per_frame:
        args.per_frame.write_text(json.dumps(json_safe(
            {"checkpoint": str(args.checkpoint), "dataset": dataset, "split": args.split,
             "inference_size": list(size), "frames": result.frames}), indent=1) + "\n")
        print(f"wrote {args.per_frame}")
    if args.grid:
        picks = np.linspace(0, len(split) - 1, max(1, args.grid_frames)).round().astype(int)
        images, labels = split.decode(picks.tolist())
        with torch.no_grad():
            preds = predict(model, images.to(device), card.preprocessing(), size=size,
                            precision=args.precision)
        prediction_grid(images.numpy(), labels.numpy(), preds.cpu().numpy(),
                        card.class_colors, split.table.ignore_index,
                        [split.names[i] for i in picks], args.grid)
        print(f"wrote {args.grid}")
    return 0
