"""The segmentation engine: a camera frame in, label map, colour mask and overlay out.

Imports no rclpy: the node adapts ROS messages to it, the bag evaluation and the benchmarks
call it directly.  One pipeline serves every device::

    uint8 HWC frame -> RGB float -> resize to the model size -> normalise (the card's
    preprocessing and resize rule, ``dfanet_model.preprocess``)
    -> DFANet -> argmax -> label / colour mask resized back (nearest) -> alpha-blended overlay
                       -> top-class softmax probability -> confidence map (nearest) and mean

Everything one input size and encoding needs is allocated once, in a ``_Plan``: input and
output buffers (pinned host memory on CUDA), index tensors for the nearest upsampling and the
per-class pixel weights.  A frame of another size or encoding makes a new plan (logged); the
last few plans are kept so cameras of different sizes do not re-plan on every frame.

Memory follows the pixel count, whatever the aspect ratio: a plan holds at most 42
bytes per input pixel (52 on CUDA, with the device and host copies), plus index vectors of one
entry per row and column, plus model-size terms; the nearest upsampling goes through the
smaller of its two possible intermediates (rows first or columns first), which is never
larger than the input or the model size.  The plans kept between frames hold at most
``plan_budget`` bytes together (``PLAN_BUDGET``); a frame whose plan alone is larger runs
with a plan of its own that is freed as soon as its result is dropped.

On CUDA the whole pipeline, upload and download included, is captured in a CUDA graph per
plan and output set after a warm-up, so a frame costs one host copy, one graph replay and one
synchronisation.  The CUDA-only code is ``_capture`` and the pinned/upload/download branches;
everything else runs, and is tested, on the CPU.

The inference parts are the library's (``dfanet_model.fast``), the ones its benchmarks time:
the card's ``Preprocessing``, ``prepare_top_class`` (batch norm folded, fp16, backend, the
card's normalisation before the network and the top class after it) and
``capture_cuda_graph``.  The engine adds what a camera frame needs around
them: encodings, resizing, plans, the class fractions and mean confidence, colours and the
overlay.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dfanet_model.checkpoint import ModelCard, load_model
from dfanet_model.device import DeviceError, resolve_device
from dfanet_model.fast import CudaGraph, capture_cuda_graph, prepare_top_class
from dfanet_model.preprocess import resize_image
from dfanet_model.resources import checked_in_bf16

from .encodings import ENCODING_CHANNELS, RGB_ORDER, YUV422_LAYOUT
from .heap import mapped_empty, return_freed_memory
from .overlay import blend_overlay_

log = logging.getLogger("dfanet.engine")

ALL_OUTPUTS: frozenset[str] = frozenset({"label", "color", "overlay", "confidence"})
# Not an image: the frame's mean top-class probability alone (EngineResult.mean_confidence).
MEAN_CONFIDENCE = "mean_confidence"

MAX_PLANS = 4
# Bytes that the plans kept between frames may hold together: MAX_PLANS 1920x1080 rgb8 plans
# fit on the CPU (49 MiB each), three on CUDA (about 70 MiB each, host and device); a frame
# needing more than the budget is planned for itself alone.
PLAN_BUDGET = 256 * 2**20


@dataclass
class EngineResult:
    """Outputs of one frame at the input's size; the arrays are valid until the next run."""

    label: np.ndarray | None    # (H, W) uint8 class ids
    color: np.ndarray | None    # (H, W, 3) uint8 RGB colour mask
    overlay: np.ndarray | None  # (H, W, 3) uint8 RGB, image blended with the colour mask
    confidence: np.ndarray | None  # (H, W) uint8, top-class softmax probability x 255
    class_fractions: np.ndarray  # (num_classes,) float32 fraction of pixels per class
    mean_confidence: float | None  # mean top-class probability over the frame's pixels
    timings_ms: dict[str, float]
    model_size: tuple[int, int] = (0, 0)  # the (height, width) the network ran at
    replanned: bool = False               # this frame made a new plan (new size or encoding)


@dataclass
class _Plan:
    """Buffers (and CUDA graphs) for one input height, width and encoding."""

    height: int
    width: int
    encoding: str
    model_hw: tuple[int, int]
    host_in: torch.Tensor          # (H, W, C) uint8; pinned on CUDA, the device input on CPU
    dev_in: torch.Tensor
    rgb: torch.Tensor              # (H, W, 3) float32: the frame as RGB, 0..255
    rows: torch.Tensor | None      # nearest-upsampling source rows (H,), None: same size
    cols: torch.Tensor | None
    pixel_weight: torch.Tensor     # (h*w,) input pixels each model pixel stands for
    dev_label: torch.Tensor        # (H, W) uint8
    dev_color: torch.Tensor        # (H, W, 3) uint8
    dev_overlay: torch.Tensor      # (H, W, 3) uint8
    dev_confidence: torch.Tensor   # (H, W) uint8
    dev_counts: torch.Tensor       # (num_classes,) float32 pixel counts
    dev_mean_confidence: torch.Tensor  # (1,) float32
    rows_first: bool               # upsample rows first: (H, w) is smaller than (h, W)
    tmp_label: torch.Tensor | None  # (H, w) or (h, W) intermediates of the upsampling
    tmp_color: torch.Tensor | None
    tmp_confidence: torch.Tensor | None
    yuv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # luma, u, v workspaces
    keep: torch.Tensor             # 0-dim float32, 1 - overlay alpha (a graph input)
    host_label: torch.Tensor
    host_color: torch.Tensor
    host_overlay: torch.Tensor
    host_confidence: torch.Tensor
    host_counts: torch.Tensor
    host_mean_confidence: torch.Tensor
    graphs: dict[frozenset[str], CudaGraph] = field(default_factory=dict)
    graph_pool: object | None = None
    graph_failed: bool = False
    kept: bool = True              # False: over the budget, planned for one frame only

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer of the plan (each counted once; CUDA graph pools aside)."""
        tensors = [v for f in dataclasses.fields(self)
                   for v in _tensors(getattr(self, f.name))]
        return sum({t.data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


class SegmentationEngine:
    """DFANet inference with preallocated buffers; see the module docstring."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", fp16: bool = False,
                 model_size: tuple[int, int] | None = None,
                 use_cuda_graph: bool = True, backend: str = "auto",
                 plan_budget: int = PLAN_BUDGET) -> None:
        """Load ``checkpoint`` onto ``device``.

        ``model_size``: the (height, width) the network runs at; None: the checkpoint card's
        training ``input_size``; (0, 0): each input's own size.  ``backend``: how the network
        runs (``dfanet_model.fast.BACKENDS``; auto: the fastest measured for the device).
        ``plan_budget``: bytes the plans kept between frames may hold together.
        Raises ``CheckpointError`` for an unusable checkpoint and ``DeviceError`` for a device
        this machine lacks.
        """
        self.device = resolve_device(device)
        if fp16 and self.device.type != "cuda":
            log.warning("fp16 needs CUDA; running in fp32 on %s", self.device)
            fp16 = False
        self.fp16 = fp16
        if model_size is not None:
            model_size = (int(model_size[0]), int(model_size[1]))
            if model_size != (0, 0) and min(model_size) < 1:
                raise ValueError(f"model_size must be (height, width) >= 1, or (0, 0) for the "
                                 f"input's own size; got {model_size}")
        model, self.card = load_model(checkpoint, device="cpu")
        if self.card.num_classes > 255:
            raise ValueError(f"{self.card.num_classes} classes do not fit a mono8 label image")
        self.checkpoint = str(checkpoint)
        card_h, card_w = self.card.input_size  # a card holds exactly [height, width]
        self.model_size: tuple[int, int] = (
            (card_h, card_w) if model_size is None else model_size)
        self.use_cuda_graph = use_cuda_graph and self.device.type == "cuda"
        # The network and its top class as the benchmarks run them: batch norm folded, fp16
        # on request, run by ``backend``.  The exported backends export once here (1-2 s) and
        # compile per network input shape (0.1-0.9 s; ``warm_up`` does it ahead of frames).
        # Channels-last pays on the GPU's tensor cores; on the CPU the plain layout measured
        # faster.
        # The card's normalisation goes with the network: the exported backends run it in
        # their graph, fused with the reorder of the image for the first convolution.
        self.model = prepare_top_class(model, self.device, half=fp16, backend=backend,
                                       channels_last=self.device.type == "cuda",
                                       bf16_checked=checked_in_bf16(checkpoint),
                                       normalise=self.card.preprocessing().normaliser())
        self._palette = torch.tensor(self.card.class_colors, dtype=torch.uint8,
                                     device=self.device)
        self._plans: OrderedDict[tuple[int, int, str], _Plan] = OrderedDict()
        self.plan_budget = int(plan_budget)
        self._last_single: tuple[int, int, str] | None = None
        # A frame had a plan of its own (over the budget): trim the heap at the next frame,
        # once that frame and its outputs are gone too (dfanet_ros.heap).
        self._one_off_used = False
        log.info("engine: DFANet %s, %d classes, device %s%s, %s backend, model size %s",
                 self.card.variant, self.card.num_classes, self.device,
                 " fp16" if fp16 else "", self.backend, self.model_size
                 if self.model_size != (0, 0) else "input size")

    # ------------------------------------------------------------------------------------
    # Public API

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def backend(self) -> str:
        """How the network runs (``auto`` until it has measured: at the first frame, which
        the node runs at activate with ``warm_up``)."""
        return self.model.backend

    def run(self, image: np.ndarray, encoding: str = "rgb8",
            outputs: frozenset[str] = ALL_OUTPUTS, alpha: float = 0.5,
            mean_confidence: bool = False) -> EngineResult:
        """Segment one (H, W, C) uint8 frame (a strided view is fine).

        ``outputs``: the images to make.  The top-class probability comes with the class
        from the network's post-processing (OpenVINO: one fp32 graph with the final resize);
        the frame's mean is given for the ``confidence`` image or when ``mean_confidence``
        asks.
        """
        start = time.perf_counter()
        image = _as_hwc(image, encoding)
        outputs = frozenset(outputs)
        unknown = outputs - ALL_OUTPUTS
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; valid: {sorted(ALL_OUTPUTS)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        height, width = image.shape[:2]
        plan, replanned = self._plan_for(height, width, encoding)
        np.copyto(plan.host_in.numpy(), image)
        plan.keep.fill_(1.0 - alpha)
        with_mean = mean_confidence or "confidence" in outputs
        copied = time.perf_counter()
        self._execute(plan, outputs | {MEAN_CONFIDENCE} if with_mean else outputs)
        done = time.perf_counter()
        fractions = plan.host_counts.numpy() / float(height * width)
        return EngineResult(
            label=plan.host_label.numpy() if "label" in outputs else None,
            color=plan.host_color.numpy() if "color" in outputs else None,
            overlay=plan.host_overlay.numpy() if "overlay" in outputs else None,
            confidence=plan.host_confidence.numpy() if "confidence" in outputs else None,
            class_fractions=fractions.astype(np.float32),
            mean_confidence=float(plan.host_mean_confidence[0]) if with_mean else None,
            timings_ms={"copy_in": (copied - start) * 1e3, "compute": (done - copied) * 1e3,
                        "total": (done - start) * 1e3},
            model_size=plan.model_hw, replanned=replanned)

    def warm_up(self, height: int, width: int, encoding: str = "rgb8",
                outputs: frozenset[str] = ALL_OUTPUTS) -> None:
        """Plan (and on CUDA capture) for a frame size ahead of the first real frame."""
        channels = ENCODING_CHANNELS.get(encoding, 3)
        self.run(np.zeros((height, width, channels), np.uint8), encoding, outputs)

    def release(self) -> None:
        """Free every plan's buffers and graphs (the model stays loaded)."""
        self._plans.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------
    # Plans

    @property
    def plan_bytes(self) -> int:
        """Bytes held by the plans kept between frames (at most ``plan_budget``)."""
        return sum(plan.nbytes for plan in self._plans.values())

    def _plan_for(self, height: int, width: int, encoding: str) -> tuple[_Plan, bool]:
        if self._one_off_used:
            self._one_off_used = False
            return_freed_memory()
        key = (height, width, encoding)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan, False
        size = self.plan_nbytes(height, width, encoding)
        kept = size <= self.plan_budget
        # A plan for one frame only gets pageable host buffers: freed pinned memory would stay
        # in torch's pinned-memory cache, resident.
        plan = self._make_plan(height, width, encoding, pinned=kept)
        if not kept:
            plan.kept = False
            self._one_off_used = True
            if key != self._last_single:  # once per run of such frames, not at frame rate
                log.info("engine: the plan for %dx%d %s needs %.0f MiB, above the %.0f MiB "
                         "budget: planned for each such frame alone", height, width,
                         encoding, size / 2**20, self.plan_budget / 2**20)
            self._last_single = key
            return plan, True
        held = self.plan_bytes
        while self._plans and (len(self._plans) >= MAX_PLANS or held + size > self.plan_budget):
            evicted, old = self._plans.popitem(last=False)
            held -= old.nbytes
            log.info("engine: dropping the plan for %dx%d %s", *evicted)
        self._plans[key] = plan
        log.info("engine: new plan for %dx%d %s input (%.1f MiB), network at %dx%d on %s",
                 height, width, encoding, size / 2**20, *plan.model_hw, self.device)
        return plan, True

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the network runs at for a frame of this size."""
        return (height, width) if self.model_size == (0, 0) else self.model_size

    def plan_nbytes(self, height: int, width: int, encoding: str) -> int:
        """Bytes the plan for such frames holds (``_Plan.nbytes``), known before allocating."""
        cuda = self.device.type == "cuda"
        mh, mw = self.network_size(height, width)
        pixels, model_pixels = height * width, mh * mw
        same = (mh, mw) == (height, width)
        per_pixel = ENCODING_CHANNELS[encoding] * (2 if cuda else 1)  # host_in (+ dev_in)
        # rgb; label, colour, overlay, confidence (+ host copies)
        per_pixel += 12 + 8 + (8 if cuda else 0)
        per_pixel += 4 if encoding in YUV422_LAYOUT else 0  # luma
        total = per_pixel * pixels + 4 * model_pixels + 4  # pixel weights, keep
        if encoding in YUV422_LAYOUT:
            total += 2 * 4 * height * (width // 2)          # u, v
        if not same:
            # indices; label, colour and confidence intermediates (the smaller order)
            total += 8 * (height + width) + 5 * min(height * mw, mh * width)
        # counts, mean confidence (+ host copies)
        return total + (4 * self.card.num_classes + 4) * (2 if cuda else 1)

    def _make_plan(self, height: int, width: int, encoding: str, pinned: bool = True
                   ) -> _Plan:
        dev, cuda = self.device, self.device.type == "cuda"
        model_hw = self.network_size(height, width)
        mh, mw = model_hw
        channels = ENCODING_CHANNELS[encoding]

        # Host buffers, and on the CPU every large buffer, lie on memory maps of their own
        # (dfanet_ros.heap): a dropped plan's pages go back to the system at once.  From the
        # heap they stayed there, fragmented by the frames and messages allocated meanwhile:
        # with sixteen cameras of eight sizes the plans churn all the time.
        def host(*shape: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
            if cuda and pinned:
                return torch.empty(shape, dtype=dtype, pin_memory=True)
            return mapped_empty(shape, dtype)

        def buffer(*shape: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=dev) if cuda else host(*shape,
                                                                                 dtype=dtype)

        host_in = host(height, width, channels)
        same = model_hw == (height, width)
        rows = None if same else _nearest_index(height, mh, dev)
        cols = None if same else _nearest_index(width, mw, dev)
        # Upsample through the smaller intermediate: (H, w) rows first, (h, W) columns first.
        rows_first = height * mw <= mh * width
        tmp_hw = (height, mw) if rows_first else (mh, width)
        pixel_weight = buffer(mh * mw, dtype=torch.float32)
        if same:
            pixel_weight.fill_(1.0)
        else:
            assert rows is not None and cols is not None  # made above unless same
            # How many input pixels take their class from each model pixel (nearest upsampling).
            row_w = torch.bincount(rows, minlength=mh).float()
            col_w = torch.bincount(cols, minlength=mw).float()
            torch.mul(row_w[:, None], col_w[None, :], out=pixel_weight.view(mh, mw))
        yuv = None
        if encoding in YUV422_LAYOUT:
            yuv = (buffer(height, width, dtype=torch.float32),
                   buffer(height, width // 2, dtype=torch.float32),
                   buffer(height, width // 2, dtype=torch.float32))
        dev_label = buffer(height, width)
        dev_color = buffer(height, width, 3)
        dev_overlay = buffer(height, width, 3)
        dev_confidence = buffer(height, width)
        dev_counts = torch.zeros(self.card.num_classes, dtype=torch.float32, device=dev)
        dev_mean_confidence = torch.zeros(1, dtype=torch.float32, device=dev)
        return _Plan(
            height=height, width=width, encoding=encoding, model_hw=model_hw,
            host_in=host_in, dev_in=torch.empty_like(host_in, device=dev) if cuda else host_in,
            rgb=buffer(height, width, 3, dtype=torch.float32),
            rows=rows, cols=cols, pixel_weight=pixel_weight,
            dev_label=dev_label, dev_color=dev_color, dev_overlay=dev_overlay,
            dev_confidence=dev_confidence, dev_counts=dev_counts,
            dev_mean_confidence=dev_mean_confidence,
            rows_first=rows_first,
            tmp_label=None if same else buffer(*tmp_hw),
            tmp_color=None if same else buffer(*tmp_hw, 3),
            tmp_confidence=None if same else buffer(*tmp_hw),
            yuv=yuv, keep=torch.zeros((), dtype=torch.float32, device=dev),
            host_label=host(height, width) if cuda else dev_label,
            host_color=host(height, width, 3) if cuda else dev_color,
            host_overlay=host(height, width, 3) if cuda else dev_overlay,
            host_confidence=host(height, width) if cuda else dev_confidence,
            host_counts=host(self.card.num_classes, dtype=torch.float32) if cuda else dev_counts,
            host_mean_confidence=host(1, dtype=torch.float32) if cuda
            else dev_mean_confidence,
        )

    # ------------------------------------------------------------------------------------
    # The pipeline

    def _execute(self, plan: _Plan, outputs: frozenset[str]) -> None:
        if self.device.type != "cuda":
            with torch.no_grad():
                self._pipeline(plan, outputs)
            return
        graph = plan.graphs.get(outputs)
        if graph is None and self.use_cuda_graph and plan.kept and not plan.graph_failed:
            graph = self._capture(plan, outputs)
        if graph is not None:
            graph()
        else:
            with torch.no_grad():
                self._pipeline(plan, outputs)
        torch.cuda.current_stream(self.device).synchronize()

    def _pipeline(self, plan: _Plan, outputs: frozenset[str]) -> None:
        """Every step from the host input buffer to the host output buffers."""
        upload = plan.dev_in is not plan.host_in
        if upload:
            plan.dev_in.copy_(plan.host_in, non_blocking=True)
        _to_rgb(plan.dev_in, plan.encoding, plan.rgb, plan.yuv)
        # The RGB frame stays channels-last (HWC): resizing and blending it are several times
        # faster on the CPU than on planar copies, and the GPU's convolutions prefer it too.
        image = plan.rgb.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) view
        # The card's resize rule, as predict and dfanet eval apply it; the model normalises.
        x = resize_image(image, plan.model_hw)
        labels, probabilities = self.model(x)
        small, probability = labels[0], probabilities[0]
        # Each model pixel weighs as many input pixels as it stands for.  At the input's own
        # size that is one each, and on the CPU the unweighted count and sum take 0.5 ms less
        # at 360x480 (a CUDA graph cannot capture bincount: its size depends on the data).
        unweighted = plan.rows is None and not small.is_cuda
        colored = "color" in outputs or "overlay" in outputs
        flat = small.reshape(-1)
        index = flat.long() if colored or not unweighted else None  # for the index_* ops
        if unweighted:
            plan.dev_counts.copy_(torch.bincount(flat, minlength=self.num_classes))
        else:
            assert index is not None  # made above for the weighted count
            plan.dev_counts.zero_().index_add_(0, index, plan.pixel_weight)
        if MEAN_CONFIDENCE in outputs:
            mean = plan.dev_mean_confidence[0]
            if unweighted:
                mean.copy_(probability.sum())
            else:
                torch.dot(probability.reshape(-1), plan.pixel_weight, out=mean)
            mean.div_(plan.height * plan.width)
            if "confidence" in outputs:
                byte = probability.mul_(255.0).round_().to(torch.uint8)
                _upsample(byte, plan, plan.dev_confidence, plan.tmp_confidence)
        if "label" in outputs:
            _upsample(small, plan, plan.dev_label, plan.tmp_label)
        if colored:
            assert index is not None  # made above for the colours
            colors = self._palette.index_select(0, index).view(*plan.model_hw, 3)
            _upsample(colors, plan, plan.dev_color, plan.tmp_color)
        if "overlay" in outputs:
            # color + (1 - alpha) * (rgb - color), in place in the RGB buffer (done with it):
            # no third full-size float buffer.
            plan.dev_overlay.copy_(blend_overlay_(plan.rgb, plan.dev_color, plan.keep))
        if upload:
            plan.host_counts.copy_(plan.dev_counts, non_blocking=True)
            for name in outputs:
                dst, src = {"label": (plan.host_label, plan.dev_label),
                            "color": (plan.host_color, plan.dev_color),
                            "overlay": (plan.host_overlay, plan.dev_overlay),
                            "confidence": (plan.host_confidence, plan.dev_confidence),
                            MEAN_CONFIDENCE: (plan.host_mean_confidence,
                                              plan.dev_mean_confidence)}[name]
                dst.copy_(src, non_blocking=True)

    def _capture(self, plan: _Plan, outputs: frozenset[str]) -> CudaGraph | None:
        """CUDA only: the pipeline over the plan's buffers as a CUDA graph (one pool a plan)."""
        try:
            graph = capture_cuda_graph(lambda: self._pipeline(plan, outputs),
                                       device=self.device, pool=plan.graph_pool)
        except Exception as e:  # an op or backend that cannot be captured: run eagerly
            plan.graph_failed = True
            torch.cuda.synchronize(self.device)
            log.warning("engine: CUDA graph capture failed for %dx%d %s (%s); running eagerly",
                        plan.height, plan.width, plan.encoding, e)
            return None
        plan.graph_pool = graph.pool
        plan.graphs[outputs] = graph
        log.info("engine: captured a CUDA graph for %dx%d %s, outputs %s", plan.height,
                 plan.width, plan.encoding, ", ".join(sorted(outputs)) or "none")
        return graph


def _as_hwc(image: np.ndarray, encoding: str) -> np.ndarray:
    """``image`` as an (H, W, C) uint8 array for ``encoding``, or ValueError naming the fault."""
    channels = ENCODING_CHANNELS.get(encoding)
    if channels is None:
        raise ValueError(f"unsupported encoding {encoding!r}; valid: "
                         f"{', '.join(ENCODING_CHANNELS)}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got "
                         f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 2 and channels == 1:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f"encoding {encoding} needs an (H, W, {channels}) array, got shape "
                         f"{image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    if encoding in YUV422_LAYOUT and image.shape[1] % 2:
        raise ValueError(f"encoding {encoding} needs an even width, got {image.shape[1]}")
    return image


def _nearest_index(size_out: int, size_in: int, device: torch.device) -> torch.Tensor:
    """Source index of each output position under ``F.interpolate(mode="nearest")``."""
    src = torch.arange(size_in, dtype=torch.float32).view(1, 1, size_in)
    idx = F.interpolate(src, size=size_out, mode="nearest").view(-1).long()
    return idx.to(device)


def _upsample(src: torch.Tensor, plan: _Plan, out: torch.Tensor, tmp: torch.Tensor | None
              ) -> None:
    """Nearest resize of an (h, w[, C]) model-size map into ``out`` at the input size."""
    if plan.rows is None:
        out.copy_(src)
        return
    # A resizing plan has both indices and its intermediate buffer.
    assert plan.cols is not None and tmp is not None
    if plan.rows_first:
        torch.index_select(src, 0, plan.rows, out=tmp)
        torch.index_select(tmp, 1, plan.cols, out=out)
    else:
        torch.index_select(src, 1, plan.cols, out=tmp)
        torch.index_select(tmp, 0, plan.rows, out=out)


def _to_rgb(src: torch.Tensor, encoding: str, out: torch.Tensor,
            yuv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
    """Write the (H, W, C) uint8 frame into ``out`` (H, W, 3) float32 as RGB 0..255."""
    order = RGB_ORDER.get(encoding)
    if order == (0, 1, 2):
        out.copy_(src[..., :3])
        return
    if order == (0, 0, 0):
        out.copy_(src.expand(-1, -1, 3))
        return
    if order is not None:
        for dst, channel in enumerate(order):
            out[..., dst].copy_(src[..., channel])
        return
    # 4:2:2 YUV to RGB with the ITU-R BT.601 limited-range matrix (as OpenCV's
    # COLOR_YUV2RGB_UYVY / _YUYV): each chroma pair serves two neighbouring pixels.
    assert yuv is not None
    luma_byte, chroma_byte = YUV422_LAYOUT[encoding]
    height, width = src.shape[:2]
    luma, u, v = yuv
    luma.copy_(src[..., luma_byte]).sub_(16.0).mul_(1.164)
    chroma = src[..., chroma_byte]
    u.copy_(chroma[:, 0::2]).sub_(128.0)
    v.copy_(chroma[:, 1::2]).sub_(128.0)
    pairs = luma.view(height, width // 2, 2)
    u2, v2 = u.unsqueeze(-1), v.unsqueeze(-1)
    r, g, b = (out[..., c].view(height, width // 2, 2) for c in range(3))
    torch.add(pairs, v2, alpha=1.596, out=r)
    torch.add(pairs, u2, alpha=-0.391, out=g).add_(v2, alpha=-0.813)
    torch.add(pairs, u2, alpha=2.018, out=b)
    out.round_().clamp_(0.0, 255.0)


__all__ = ["ALL_OUTPUTS", "ENCODING_CHANNELS", "MEAN_CONFIDENCE", "DeviceError", "EngineResult",
           "ModelCard", "SegmentationEngine", "resolve_device"]
