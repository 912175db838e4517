"""The one preprocessing of every path, built from the model card (the weights carry it).

``Preprocessing.from_card(card)`` (or ``card.preprocessing()``) is what ``predict``, ``dfanet
eval``, training validation (``evaluate``), the node's engine and the benchmarks use:

* normalisation: ``(x / 255 - mean) / std`` per RGB channel with the card's mean and std,
  computed as ``x * scale + shift`` in float32 (``Normalise``);
* the resize rule, where the network runs at another size than the frame: the frame is resized
  to the network's size bilinearly (``align_corners=False``), and the network's class map is
  resized back to the frame's size by nearest neighbour (``F.interpolate`` "nearest").  The
  labels are resized, never the logits: that is what the node publishes, so what ``dfanet
  eval`` scores at any ``--size`` is what the node would answer.

``IMAGENET_MEAN`` and ``IMAGENET_STD`` are the defaults of a card and of a training config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .network import resize_to

# ImageNet RGB statistics in [0, 1]: the defaults of every card and training config.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Normalise(nn.Module):
    """Float RGB images (N, 3, H, W) in 0..255 -> ``(x / 255 - mean) / std`` per channel.

    One multiply and one add in float32: every inference path (``ImageToLabels``, the
    segmentation engine, the benchmarks, ``predict``) normalises here.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # The constants in float32 arithmetic too, as the node's engine has always computed
        # them: rounding them otherwise moves a few near-tie pixels of its label maps.
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, image: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out`` (may be ``image`` itself) receives the result instead of a new tensor.
        The module sits on the images' device (``.to``), as the engine's does once."""
        return torch.mul(image, self.scale, out=out).add_(self.shift)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W) normalised (``Normalise``)."""
    return Preprocessing(tuple(mean), tuple(std))(images)


def resize_image(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Float images (N, C, H, W) to the network's ``size`` as the network resizes inside
    (``network.resize_to``: bilinear, ``align_corners=False``); the same tensor if no resize."""
    return resize_to(x, size)


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Class maps (N, h, w) back to the frame's ``size`` by nearest neighbour."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    # Through float: nearest copies values, so every class id up to 2**24 survives.
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].to(labels.dtype)


@dataclass(frozen=True)
class Preprocessing:
    """A card's preprocessing: the normalisation and the resize rule (module docstring)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_card(cls, card: Any) -> Preprocessing:
        """From anything with ``mean`` and ``std`` (a ``ModelCard``, a training config)."""
        return cls(tuple(float(v) for v in card.mean), tuple(float(v) for v in card.std))

    def normaliser(self) -> Normalise:
        return Normalise(self.mean, self.std)

    def __call__(self, images: torch.Tensor, size: Sequence[int] | None = None
                 ) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) RGB -> the network's normalised float input (N, 3, h, w)
        at ``size`` (None: the frames' own): resized first, then normalised, as the engine."""
        x = images.permute(0, 3, 1, 2).float()
        if size is not None:
            x = resize_image(x, size)
        return self.normaliser().to(x.device)(x)
