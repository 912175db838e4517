"""The overlay blend: the one rule the engine and the evaluation reports draw overlays with."""
from __future__ import annotations

import torch


def blend_overlay_(rgb: torch.Tensor, color: torch.Tensor,
                   keep: torch.Tensor | float) -> torch.Tensor:
    """``color + keep * (rgb - color)`` in place in the float ``rgb`` (``keep`` = 1 - alpha),
    rounded half to even: the overlay's pixel values, ready to cast to uint8."""
    return rgb.sub_(color).mul_(keep).add_(color).round_()
