"""An exponential moving average of the weights, kept beside the trained model.

Evaluated and shipped instead of the raw weights when ``ema_decay`` is set: averaging the
last few thousand SGD steps smooths the noise of small CPU batches.  Batch-norm statistics are
averaged like the weights; integer buffers (batch counts) are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage(nn.Module):
    """``average = d * average + (1 - d) * weights`` after each step, with
    ``d = min(decay, (1 + t) / (10 + t))`` so the first steps do not weigh the random start."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in ``model``'s weights after optimiser step number ``step`` (from 0)."""
        d = min(self.decay, (1 + step) / (10 + step))
        for mine, theirs in zip(self.module.state_dict().values(),
                                model.state_dict().values(), strict=True):
            if mine.is_floating_point():
                mine.lerp_(theirs, 1 - d)
            else:
                mine.copy_(theirs)
