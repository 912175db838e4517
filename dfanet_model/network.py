"""DFANet (Li et al., "DFANet: Deep Feature Aggregation for Real-Time Semantic Segmentation",
CVPR 2019), section 3 and Table 1.

Modules mirror the boxes of the paper's Figure 3:

* ``ConvNormAct``            shared conv -> norm -> activation
* ``SeparableConv``          depthwise 3x3 + pointwise 1x1 (one row of Table 1's blocks)
* ``ProjectionShortcut``     1x1 conv + norm on the residual path where the shape changes
* ``XceptionBlock``          three separable convs with a residual shortcut
* ``EncoderStage``           enc2 / enc3 / enc4: a stack of blocks, the first one strided
* ``FCAttention``            global pool -> FC -> 1x1 conv -> channel-wise multiply
* ``Backbone``               enc2..enc4 + FC attention; the first one also owns conv1
* ``Decoder``                fuses the three high-level and three low-level features
* ``DFANet``                 three backbones chained by sub-network and sub-stage aggregation

Parts are named attributes, so a state-dict key is a readable path, e.g.
``backbones.0.enc2.0.conv3.pw.bn.weight``: backbone 0, stage enc2, block 0, third separable
conv, its pointwise conv's norm.  Parameters are registered in the order the old
``nn.Sequential`` layout had, since optimizer states saved in training checkpoints refer to
parameters by position.

Variants are rows of a table (``VARIANTS``); ``build_dfanet`` is the only builder.  Every
resize goes to the exact size of the tensor it joins, so any input size works and the logits
always have the input's height and width.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


@dataclass(frozen=True)
class DFANetConfig:
    """Architecture of one DFANet variant (Table 1 of the paper)."""

    stem_channels: int
    # (c1, c2, c3) of the three separable convs in each block of enc2, enc3, enc4.
    stage_channels: tuple[tuple[int, int, int], ...]
    stage_blocks: tuple[int, ...] = (4, 6, 4)
    fc_hidden: int = 1000
    decoder_channels: int = 32


VARIANTS: dict[str, DFANetConfig] = {
    "A": DFANetConfig(8, ((12, 12, 48), (24, 24, 96), (48, 48, 192))),
    "B": DFANetConfig(8, ((8, 8, 32), (16, 16, 64), (32, 32, 128))),
}


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class ConvNormAct(nn.Module):
    """Convolution, normalisation and (optional) activation, named ``conv``, ``bn``, ``act``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer | None = _relu,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = norm_layer(out_channels)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConv(nn.Module):
    """Depthwise 3x3 conv (``dw``) then pointwise 1x1 conv (``pw``), each normalised."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: ActLayer | None = _relu) -> None:
        super().__init__()
        self.dw = ConvNormAct(in_channels, in_channels, 3, stride, groups=in_channels,
                              norm_layer=norm_layer, act_layer=None)
        self.pw = ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer,
                              act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class ProjectionShortcut(ConvNormAct):
    """The residual shortcut's 1x1 projection; a stride is taken by subsampling first.

    A 1x1 conv with stride s and no padding reads only every s-th pixel, so subsampling and
    then convolving at stride 1 gives the same output with the same weights.  It also avoids
    a oneDNN fault: on AVX-512 CPUs (torch 2.13-2.14) the weight gradient of a channels-last
    1x1 stride-2 conv with fewer than 16 input channels corrupts the heap (an 8-channel input
    of 8x8x120x160 crashes every time; AVX2 CPUs and NCHW are unaffected).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__(in_channels, out_channels, 1, 1, norm_layer=norm_layer, act_layer=None)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return super().forward(x)


class XceptionBlock(nn.Module):
    """Three separable convs (c1, c2, c3) plus a residual shortcut; the first conv may stride."""

    def __init__(self, in_channels: int, channels: Sequence[int], stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = SeparableConv(in_channels, c1, stride, norm_layer)
        self.conv2 = SeparableConv(c1, c2, 1, norm_layer)
        self.conv3 = SeparableConv(c2, c3, 1, norm_layer, act_layer=None)
        if stride != 1 or in_channels != c3:
            self.shortcut: nn.Module = ProjectionShortcut(in_channels, c3, stride, norm_layer)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv3(self.conv2(self.conv1(x)))
        # Not in place: the shortcut still needs x for the backward pass.
        return F.relu(residual + self.shortcut(x))


class EncoderStage(nn.Sequential):
    """encN of Table 1: ``blocks`` Xception blocks, the first with stride 2."""

    def __init__(self, in_channels: int, channels: Sequence[int], blocks: int,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        layers = [XceptionBlock(in_channels, channels, 2, norm_layer)]
        layers += [XceptionBlock(channels[-1], channels, 1, norm_layer) for _ in range(blocks - 1)]
        super().__init__(*layers)


class FCAttention(nn.Module):
    """Global average pool -> FC -> 1x1 conv -> channel-wise multiply (Table 1, "fc attention").

    The paper names no gate function; a sigmoid keeps the multiplier in (0, 1) and trains
    stably from scratch.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, hidden)
        self.conv = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        weights = self.conv(self.fc(pooled)[:, :, None, None])
        return x * torch.sigmoid(weights)


class BackboneFeatures(NamedTuple):
    """What one backbone hands on: its stage outputs and its FC-attention output."""

    enc2: torch.Tensor
    enc3: torch.Tensor
    enc4: torch.Tensor
    attention: torch.Tensor


class Backbone(nn.Module):
    """One lightweight Xception backbone: enc2, enc3, enc4 and FC attention.

    ``forward`` takes the backbone's input and, for sub-stage aggregation, the features of the
    previous backbone (None for the first).  It returns its own ``BackboneFeatures``.
    """

    def __init__(self, in_channels: int, cfg: DFANetConfig, aggregated: bool,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        outs = [c[-1] for c in cfg.stage_channels]
        # Sub-stage aggregation: enc3 and enc4 also take the previous backbone's enc3 / enc4.
        ins = [in_channels, outs[0] + (outs[1] if aggregated else 0),
               outs[1] + (outs[2] if aggregated else 0)]
        self.enc2, self.enc3, self.enc4 = (
            EncoderStage(i, c, b, norm_layer)
            for i, c, b in zip(ins, cfg.stage_channels, cfg.stage_blocks, strict=True)
        )
        self.attention = FCAttention(outs[2], cfg.fc_hidden)

    def forward(self, x: torch.Tensor,
                previous: BackboneFeatures | None = None) -> BackboneFeatures:
        enc2 = self.enc2(x)
        enc3 = self.enc3(enc2 if previous is None else _join(enc2, previous.enc3))
        enc4 = self.enc4(enc3 if previous is None else _join(enc3, previous.enc4))
        return BackboneFeatures(enc2, enc3, enc4, self.attention(enc4))


def _sum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of a non-empty series of tensors (the builtin ``sum`` starts from the int 0)."""
    return functools.reduce(operator.add, tensors)


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of x to ``size`` (height, width): every resize of the network."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of x to ref's spatial size (exact size, so any input shape works)."""
    return resize_to(x, ref.shape[-2:])


def _join(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Concatenate ``other`` (resized to x) onto x along channels."""
    return torch.cat([x, resize_like(other, x)], dim=1)


class Decoder(nn.Module):
    """Fuse the three high-level features (x4 up) with the three low-level enc2 features."""

    def __init__(self, low_channels: int, high_channels: int, channels: int, num_classes: int,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.low = nn.ModuleList(
            ConvNormAct(low_channels, channels, 1, norm_layer=norm_layer) for _ in range(3))
        self.high = nn.ModuleList(
            ConvNormAct(high_channels, channels, 1, norm_layer=norm_layer) for _ in range(3))
        self.fuse = ConvNormAct(channels, channels, 1, norm_layer=norm_layer)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, lows: Sequence[torch.Tensor], highs: Sequence[torch.Tensor]) -> torch.Tensor:
        low = _sum(resize_like(conv(f), lows[0]) for conv, f in zip(self.low, lows, strict=True))
        high = _sum(resize_like(conv(f), highs[0])
                    for conv, f in zip(self.high, highs, strict=True))
        return self.classifier(self.fuse(low + resize_like(high, low)))


class DFANet(nn.Module):
    """Three chained backbones and the decoder (Figure 3); returns full-size logits."""

    def __init__(self, cfg: DFANetConfig, num_classes: int,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        enc2_out, high_out = cfg.stage_channels[0][-1], cfg.stage_channels[-1][-1]
        self.conv1 = ConvNormAct(3, cfg.stem_channels, 3, 2, norm_layer=norm_layer)
        # Sub-network aggregation: backbones 2 and 3 start from [up(attention), enc2] of the
        # previous backbone.
        self.backbones = nn.ModuleList([
            Backbone(cfg.stem_channels, cfg, aggregated=False, norm_layer=norm_layer),
            Backbone(high_out + enc2_out, cfg, aggregated=True, norm_layer=norm_layer),
            Backbone(high_out + enc2_out, cfg, aggregated=True, norm_layer=norm_layer),
        ])
        self.decoder = Decoder(enc2_out, high_out, cfg.decoder_channels, num_classes, norm_layer)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_like(self.coarse_logits(x), x)

    def coarse_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits at the decoder's resolution (a quarter of the input's
        height and width, rounded up), before the final bilinear resize."""
        feats = self.backbones[0](self.conv1(x))
        outputs = [feats]
        for backbone in self.backbones[1:]:
            joined = torch.cat([resize_like(feats.attention, feats.enc2), feats.enc2], dim=1)
            feats = backbone(joined, feats)
            outputs.append(feats)
        return self.decoder([f.enc2 for f in outputs], [f.attention for f in outputs])

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # A depthwise filter sees 9 inputs and feeds 9 outputs; torch's fan_out would
                # count all its channels, so use fan_in (= 9) there.
                mode: Literal["fan_in", "fan_out"] = "fan_in" if m.groups > 1 else "fan_out"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        # Each residual branch starts as zero, so every block starts as its shortcut: without
        # this, 42 chained blocks amplify the gradient ~1.5-2x each and training from scratch
        # blows up in the first step (as torchvision's zero_init_residual, for the same reason).
        for m in self.modules():
            if isinstance(m, XceptionBlock):
                bn_weight = m.conv3.pw.bn.weight
                # Every norm layer the network takes (batch, sync-batch, group) is affine.
                assert isinstance(bn_weight, torch.Tensor)
                nn.init.zeros_(bn_weight)


def build_dfanet(variant: str = "A", num_classes: int = 19,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> DFANet:
    """DFANet ``variant`` ("A" or "B") with randomly initialised weights."""
    key = variant.upper()
    if key not in VARIANTS:
        raise ValueError(f"unknown DFANet variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return DFANet(VARIANTS[key], num_classes, norm_layer)
