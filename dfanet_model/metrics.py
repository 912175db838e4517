"""The one confusion-matrix metric behind every mIoU the project reports, and how its
scores are written: as JSON (``json_safe``) and as percentages (``format_percent``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SegmentationScores:
    """Scores over the valid (non-ignored) pixels; per-class lists are indexed by class id."""

    pixel_acc: float
    class_acc: list[float]   # recall per class (nan where a class never occurs)
    iou: list[float]         # nan where a class neither occurs nor is predicted
    miou: float              # mean over classes with a defined IoU
    pixels: int

    def as_dict(self) -> dict:
        return {"pixel_acc": self.pixel_acc, "class_acc": self.class_acc, "iou": self.iou,
                "miou": self.miou, "pixels": self.pixels}


class ConfusionMatrix:
    """Accumulates a num_classes x num_classes matrix; rows are ground truth, columns predictions.

    Pixels whose target is ``ignore_index`` (or outside 0..num_classes-1) are left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch of integer label maps of equal shape (any device, any integer dtype)."""
        if target.shape != pred.shape:
            raise ValueError(f"target shape {tuple(target.shape)} != prediction shape "
                             f"{tuple(pred.shape)}")
        n = self.num_classes
        target = target.reshape(-1).long()
        pred = pred.reshape(-1).long()
        valid = (target >= 0) & (target < n) & (target != self.ignore_index)
        counts = torch.bincount(n * target[valid] + pred[valid].clamp(0, n - 1), minlength=n * n)
        self.mat += counts.reshape(n, n).to(self.mat.device, torch.int64)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat.to(self.mat.device)

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self) -> SegmentationScores:
        mat = self.mat.double()
        diag = mat.diag()
        gt, predicted = mat.sum(1), mat.sum(0)
        total = mat.sum()
        union = gt + predicted - diag
        iou = torch.where(union > 0, diag / union.clamp(min=1), torch.nan)
        class_acc = torch.where(gt > 0, diag / gt.clamp(min=1), torch.nan)
        defined = ~torch.isnan(iou)
        miou = float(iou[defined].mean()) if defined.any() else float("nan")
        pixel_acc = float(diag.sum() / total) if total > 0 else float("nan")
        return SegmentationScores(pixel_acc, class_acc.tolist(), iou.tolist(), miou, int(total))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN and infinity, at any depth of dicts, lists and tuples, replaced
    by None: strict JSON readers reject them, and an undefined IoU is NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def format_percent(value: float | None) -> str:
    """A score in 0..1 as a five-character percentage; "-" where it is undefined (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "    -"
    return f"{100 * value:5.1f}"
