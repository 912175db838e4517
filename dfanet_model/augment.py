"""Batched augmentation on whatever device holds the batch (the paper's section 4 recipe).

Random horizontal flip, random scale, random crop to a fixed size (padding the label with the
ignore value where the scaled image is smaller than the crop), optional photometric jitter
(brightness, contrast, saturation) and mean/std normalisation, for a whole batch at once.
Flip, scale and crop of one frame form a single affine map from crop pixels
to source pixels, so each batch is resampled by one ``grid_sample`` call for the images
(bilinear) and one for the labels (nearest): no per-frame Python work, no intermediate
rescaled image.  The random numbers come from a CPU ``torch.Generator`` the caller owns and
checkpoints, so the sequence of batches is reproducible on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize


def jitter_colors(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB with per-frame brightness, contrast and saturation ``factors``
    (N, 3) applied in that order, as uint8 again (so ``normalize`` takes it as any frame)."""
    f = factors.to(images.device, torch.float32)[:, None, None, :, None]  # (N, 1, 1, 3, 1)
    luma_weights = torch.tensor([0.299, 0.587, 0.114], device=images.device)

    def luma(x: torch.Tensor) -> torch.Tensor:
        return (x * luma_weights).sum(-1, keepdim=True)

    x = images.float() * f[..., 0, :]
    frame_mean = luma(x).mean(dim=(1, 2), keepdim=True)
    x = (x - frame_mean) * f[..., 1, :] + frame_mean
    gray = luma(x)
    x = gray + (x - gray) * f[..., 2, :]
    return x.round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class AugmentParams:
    """Per-frame draws of one batch (all CPU tensors of length N)."""

    flip: torch.Tensor      # bool
    scale: torch.Tensor     # float
    offset_y: torch.Tensor  # crop origin in the scaled image, pixels (negative: padding above)
    offset_x: torch.Tensor
    # (N, 3) brightness, contrast and saturation factors; None without jitter.
    color: torch.Tensor | None = None


class BatchAugment:
    """flip / scale / crop / normalise a batch of uint8 frames into a training batch."""

    def __init__(self, crop_size: Sequence[int], scale_range: Sequence[float] = (0.75, 1.75),
                 hflip: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, ignore_index: int = 255,
                 color_jitter: float = 0.0) -> None:
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size must be [height, width], got {list(crop_size)}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, "
                             f"got {list(scale_range)}")
        self.crop = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(lo), float(hi))
        self.hflip = hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = ignore_index
        if not 0 <= color_jitter < 1:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
        self.color_jitter = float(color_jitter)

    def draw(self, n: int, frame_size: Sequence[int], generator: torch.Generator
             ) -> AugmentParams:
        """The random choices for n frames of size (H, W)."""
        lo, hi = self.scale_range
        flip = torch.rand(n, generator=generator) < 0.5
        if not self.hflip:
            flip = torch.zeros(n, dtype=torch.bool)
        scale = lo + (hi - lo) * torch.rand(n, generator=generator)
        offsets = []
        for size, crop in zip(frame_size, self.crop, strict=True):
            # Uniform over every placement of the crop in the scaled frame; where the scaled
            # frame is smaller than the crop, over every placement of the frame in the crop.
            spare = torch.round(size * scale).long() - crop
            u = torch.rand(n, generator=generator)
            offsets.append(torch.minimum(spare, torch.zeros_like(spare))
                           + torch.floor(u * (spare.abs() + 1)).long())
        color = None
        if self.color_jitter:
            # Drawn only when enabled, so runs without jitter see the same random sequence.
            j = self.color_jitter
            color = 1 - j + 2 * j * torch.rand(n, 3, generator=generator)
        return AugmentParams(flip, scale, offsets[0], offsets[1], color)

    def apply(self, images: torch.Tensor, labels: torch.Tensor, params: AugmentParams
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, H, W, 3) and labels (N, H, W) -> float (N, 3, h, w), long (N, h, w)."""
        n, height, width = labels.shape
        grid = self._grid(params, (height, width), images.device)
        if params.color is None:
            x = normalize(images, self.mean, self.std)
        else:
            x = normalize(jitter_colors(images, params.color), self.mean, self.std)
        # Padding with zeros after normalisation pads with the mean colour.
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Shift labels by one so that zero padding marks pixels outside the frame.
        y = F.grid_sample(labels[:, None].float() + 1, grid, mode="nearest",
                          padding_mode="zeros", align_corners=False)[:, 0].long()
        y = torch.where(y == 0, self.ignore_index, y - 1)
        return x, y

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.draw(labels.shape[0], labels.shape[1:], generator)
        return self.apply(images, labels, params)

    def _grid(self, p: AugmentParams, frame_size: tuple[int, int], device: torch.device
              ) -> torch.Tensor:
        """Sampling grid (N, h, w, 2) in grid_sample's [-1, 1] coordinates (x first).

        Crop pixel (i, j) sits at (i + offset_y, j + offset_x) in the frame scaled by s, that is
        at ((i + offset_y + 0.5) / s) in source pixel units; a flip mirrors x about the centre.
        """
        h, w = self.crop
        height, width = frame_size
        # Only the per-frame numbers travel to the device; the grid is built there.
        flip, scale, oy, ox = (t.to(device, non_blocking=True)
                               for t in (p.flip, p.scale, p.offset_y, p.offset_x))
        ys = (torch.arange(h, device=device) + 0.5)[None] + oy[:, None]
        xs = (torch.arange(w, device=device) + 0.5)[None] + ox[:, None]
        gy = 2 * ys / (scale[:, None] * height) - 1
        gx = 2 * xs / (scale[:, None] * width) - 1
        gx = torch.where(flip[:, None], -gx, gx)
        return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
