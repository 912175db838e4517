"""Training losses: cross-entropy, and cross-entropy over the hard pixels only (OHEM)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class OhemCrossEntropy(nn.Module):
    """Cross-entropy averaged over the hard pixels of a batch (online hard example mining).

    A pixel is hard while the network gives its true class a probability below ``threshold``;
    at least ``min_kept`` (a fraction of the labelled pixels) of the largest losses are always
    kept, so the loss never averages over a handful of pixels.  Easy road and sky pixels stop
    dominating the gradient, which leaves more of it to thin and rare classes (poles, signs,
    pedestrians) whose pixels stay hard for longer.  Void pixels never count.
    """

    weight: torch.Tensor | None  # buffer: moves with the module, saved in its state

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255,
                 threshold: float = 0.7, min_kept: float = 1 / 16) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"OHEM threshold must be a probability in (0, 1], got {threshold}")
        if not 0 < min_kept <= 1:
            raise ValueError(f"OHEM min_kept must be a fraction in (0, 1], got {min_kept}")
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.loss_threshold = -math.log(threshold)
        self.min_kept = min_kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Hardness is the network's own -log p(true class), before any class weight.
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index,
                               reduction="none").flatten()
        labelled = int((target != self.ignore_index).sum())
        if labelled == 0:
            return loss.sum()  # zero, and still part of the graph
        n_min = max(1, int(self.min_kept * labelled))
        kept = (loss > self.loss_threshold).nonzero().squeeze(1)
        if kept.numel() < n_min:
            kept = loss.topk(n_min, sorted=False).indices
        if self.weight is None:
            return loss[kept].mean()
        # Weighted as cross-entropy's mean is: divided by the kept pixels' total weight, so
        # class weights shift the balance between classes, not the loss's scale.
        w = self.weight[target.flatten()[kept]]
        return (w * loss[kept]).sum() / w.sum()
