"""Inference copies of DFANet: batch norm folded into the convolutions, then run by the fastest
correct backend for the device.

``prepare_for_inference(model)`` never changes ``model``: it folds a deep copy, so training can
go on with the original.  The prepared module keeps the model's contract: a float NCHW
normalised image in, logits at the input's height and width out (in fp16 when ``half``).

Backends (each one checked against the eager model by ``test/test_fast.py``):

* ``eager``          the folded module itself (channels-last where asked).
* ``compile``        ``torch.compile`` (Inductor); recompiles when the input shape changes.
* ``onnxruntime``    the network exported once to ONNX (height and width dynamic), an ONNX
                     Runtime CPU session per input shape (graph optimisation level ALL).
* ``openvino``       the same ONNX graph compiled by OpenVINO for the CPU per input shape, fp32.
* ``openvino-bf16``  OpenVINO with its bf16 inference precision hint: reduced precision, so
                     opt-in, or chosen by ``auto`` only for weights checked in bf16
                     (``bf16_checked``; the shipped model, see its card).
* ``onnxruntime-logits``  the path before OpenVINO: a static ONNX export per input shape with
                     the shortcut's slice, the top class computed in torch afterwards; kept as
                     the benchmarks' contender.
* ``auto``           on the CPU the fastest of the exported backends, measured on this machine
                     at the first input shape (``_Exported._measure``); on CUDA ``eager``.

The exported backends run the inference form of the network (``inference_copy``): batch norm
folded and each strided shortcut as a stride-2 1x1 convolution.  ``prepare_top_class`` adds
the post-processing (``TopClass``: class ids and their softmax probability) after the
network: with OpenVINO the network's graph stops at its coarse logits
(``DFANet.coarse_logits``, a sixteenth of the pixels) and a second graph, compiled in fp32
whatever the network's precision, resizes them to the input's size and takes the top class
(``ResizedTopClass``); with ONNX Runtime in torch after the whole network (its reductions
over the classes measured slower).  Given the card's ``Normalise``, ``prepare_top_class``
takes images in 0..255 and the exported graphs normalise them, channels-last, as the runtime
reorders them for the first convolution.

Around the network: ``Normalise`` (the one normalisation, from ``preprocess``),
``ImageToLabels`` and ``prepare_labels`` (uint8 image to labels) and
``capture_cuda_graph``.  The node's segmentation engine is built from these same parts, so
what the benchmarks time is what the node runs.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Generic, Sequence, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from .network import ProjectionShortcut, resize_to
from .preprocess import Normalise

BACKENDS = ("auto", "eager", "compile", "onnxruntime", "openvino", "openvino-bf16",
            "onnxruntime-logits")
# Run from one ONNX export of the network; CPU only.
EXPORTED_BACKENDS = ("onnxruntime", "openvino", "openvino-bf16")

# CPU: ``auto`` measures the exported backends at the first input shape and keeps the fastest
# (BENCHMARKS.md: OpenVINO fp32 1.2-1.4x ONNX Runtime, both 2.2-3x eager, torch.compile 1.45x,
# the folded eager module 1.2-1.3x).  CUDA: not measured yet; the eager backend in fp16 under
# a CUDA graph (the engine's default) is the safe choice until scripts/bench/gpu_bench.sh has
# compared it with torch.compile.
AUTO_BACKEND = {"cpu": "auto", "cuda": "eager"}
# Interleaved rounds ``auto`` times its candidates over (after two untimed calls each): with
# 3 calls each in a row it once kept OpenVINO fp32 where bf16 was 1.2x faster (load 4.5).
AUTO_ROUNDS = 7

_T = TypeVar("_T")


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to ``bn(conv(x))`` in eval mode (``conv`` and ``bn`` untouched).

    ``bn(y) = (y - mean) * gamma / sqrt(var + eps) + beta`` is affine per output channel, so it
    scales each filter and shifts the bias.  Computed in float64, stored in the conv's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a batch norm without running statistics "
                         "(track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"cannot fold: conv has {conv.out_channels} output channels, batch norm "
                         f"{bn.num_features} features")
    w = conv.weight.detach().double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    # A Conv2d keeps 2-tuples; its stubs type them as tuple[int, ...].
    fused = nn.Conv2d(conv.in_channels, conv.out_channels,
                      conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                      conv.padding, conv.dilation,  # type: ignore[arg-type]
                      conv.groups, bias=True,
                      padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    assert fused.bias is not None  # made with bias=True
    with torch.no_grad():
        fused.weight.copy_(w * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_((bias - mean) * scale + beta)
    return fused


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every conv -> batch norm pair folded.

    A pair is a module with a ``conv`` (Conv2d) and a ``bn`` (BatchNorm2d) attribute, applied
    in that order: every ``ConvNormAct`` of the network.  The batch norm is replaced by
    ``nn.Identity`` so module names stay stable.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        # Exactly BatchNorm2d: a subclass (e.g. SyncBatchNorm) may compute something else.
        if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d:
            module.conv = fold_conv_bn(conv, bn)
            module.bn = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


class _PerShape(nn.Module):
    """Runs a callable built once per input (shape, dtype, device): an exported graph fixes the
    shape-dependent resizes, so each input shape gets its own."""

    def __init__(self, model: nn.Module, build: Callable[[nn.Module, torch.Tensor], Callable],
                 name: str) -> None:
        super().__init__()
        self.model = model
        self._build = build
        self.backend = name
        self._cache: dict[tuple, Callable] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        run = self._cache.get(key)
        if run is None:
            run = self._cache[key] = self._build(self.model, x)
        return run(x)

    def extra_repr(self) -> str:
        return f"backend={self.backend}, shapes={[k[0] for k in self._cache]}"


class _Prepared(nn.Module):
    """Normalises (``normalise``, in torch unless the inner module's graph does it:
    ``in_graph``), casts and lays out the input as the inner module wants, then runs it."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, channels_last: bool,
                 backend: str, num_classes: int | None,
                 normalise: Normalise | None = None, in_graph: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.channels_last = channels_last
        self._backend = backend
        self.num_classes = num_classes
        self.normalise = normalise
        self._in_graph = in_graph
        self._normalised: torch.Tensor | None = None  # reused for inputs of one shape

    @property
    def backend(self) -> str:
        """The backend that runs (``auto``'s choice once it has measured)."""
        chosen = getattr(self.inner, "backend", self._backend)
        return chosen if isinstance(chosen, str) else self._backend

    @property
    def normalises(self) -> bool:
        """Images go in as they are (0..255): prepared with the normalisation."""
        return self.normalise is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float image batch of shape (N, 3, H, W), "
                             f"got {tuple(x.shape)}")
        if self.normalise is not None and not self._in_graph:  # in float32 whatever the dtype
            x = self.normalise(x.float(), out=self._normalised_buffer(x))
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x)

    def _normalised_buffer(self, x: torch.Tensor) -> torch.Tensor | None:
        """On the CPU, float32 in x's shape and the layout the inner module takes, kept while
        the inputs keep their shape (a camera's frames): a fresh 2 MB tensor a frame cost 1-2
        ms in page faults and a second pass to make it contiguous (360x480).  On CUDA None (a
        new tensor each call): a CUDA graph captured over a kept buffer would write into it
        after it was replaced by one of another shape; inside a capture the graph's own pool
        provides it."""
        if x.device.type == "cuda":
            return None
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        buffer = self._normalised
        if buffer is None or buffer.shape != x.shape or buffer.device != x.device:
            buffer = self._normalised = torch.empty(x.shape, dtype=torch.float32,
                                                    device=x.device, memory_format=layout)
        return buffer

    def extra_repr(self) -> str:
        return f"backend={self.backend}, dtype={self.dtype}, channels_last={self.channels_last}"


def inference_copy(model: nn.Module) -> nn.Module:
    """``fold_batch_norms(model)`` with each strided projection shortcut as one 1x1 convolution
    of that stride (same weights, same output: a 1x1 kernel without padding reads every s-th
    pixel, as the slice does).

    The network slices because a oneDNN fault corrupts the heap in the *weight gradient* of
    such a convolution (``network.ProjectionShortcut``); inference never computes it.  In the
    ONNX graph the slice cost 8% of the frame and the strided convolution gained 1.09-1.11x
    with a max logit difference of 0.0 (BENCHMARKS.md).
    """
    folded = fold_batch_norms(model)
    for module in folded.modules():
        if isinstance(module, ProjectionShortcut) and module.stride > 1:
            module.conv.stride = (module.stride, module.stride)
            module.stride = 1
    return folded


class TopClass(nn.Module):
    """Logits (N, C, H, W) -> the class of each pixel as (N, H, W) uint8 (the first maximum on
    ties) and its softmax probability as (N, H, W) float32, ``1 / sum_c exp(logit_c - max)``,
    in float32 whatever the logits' precision.

    The same arithmetic three ways: traced into a graph (an exported backend's post-processing)
    as a softmax, its maximum and the first class that reaches it, which OpenVINO runs in its
    own kernels; on the CPU in torch as a running maximum over contiguous class planes
    (``argmax(dim=1)`` walks memory C strides apart: 50 ms at 360x480 against ~5); elsewhere
    as ``argmax``.
    """

    classes: torch.Tensor  # buffer (1, C, 1, 1): each class's index, for the traced argmax

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if not 1 <= num_classes <= 255:
            raise ValueError(f"{num_classes} classes do not fit a uint8 label map")
        self.num_classes = num_classes
        self.register_buffer("classes", torch.arange(num_classes, dtype=torch.float32)
                             .view(1, num_classes, 1, 1), persistent=False)

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        if torch.jit.is_tracing():
            # After the final resize OpenVINO keeps the logits in a blocked layout, where its
            # Softmax kernel beats the exp-and-sum it would otherwise run (5.3 against 6.5 ms
            # at 360x480); ArgMax would become its TopK: 6 ms where this takes ~1.
            softmax = torch.softmax(logits, dim=1)
            top = softmax.amax(dim=1, keepdim=True)
            first = torch.where(softmax == top, self.classes, float(self.num_classes))
            return first.amin(dim=1).to(torch.uint8), top.squeeze(1)
        if logits.device.type == "cpu":
            return self._planes(logits)
        best = logits.amax(dim=1, keepdim=True)
        probability = torch.exp(logits - best).sum(dim=1).reciprocal()
        return logits.argmax(dim=1).to(torch.uint8), probability

    @staticmethod
    def _planes(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels, probabilities = [], []
        for planes in logits:
            best = planes[0].clone()
            index = torch.zeros(best.shape, dtype=torch.uint8)
            for c in range(1, planes.shape[0]):
                better = planes[c] > best
                torch.maximum(best, planes[c], out=best)
                index.masked_fill_(better, c)
            total = torch.zeros_like(best)
            scratch = torch.empty_like(best)
            for c in range(planes.shape[0]):
                total.add_(torch.sub(planes[c], best, out=scratch).exp_())
            labels.append(index)
            probabilities.append(total.reciprocal_())
        return torch.stack(labels), torch.stack(probabilities)


def _phase_weights(scale: int) -> torch.Tensor:
    """(3, scale): how much the rows i - 1, i and i + 1 of a source (edge-padded) weigh in each
    of the ``scale`` output rows of row i, for a bilinear resize with ``align_corners=False``:
    output row ``scale * i + k`` lies at source row ``i + (k + 0.5) / scale - 0.5``."""
    weights = torch.zeros(3, scale)
    for k in range(scale):
        position = (k + 0.5) / scale - 0.5  # in (-0.5, 0.5): between rows i - 1, i or i, i + 1
        below = math.floor(position)
        weights[below + 1, k] += 1.0 - (position - below)
        weights[below + 2, k] += position - below
    return weights


def upsample_by_phases(x: torch.Tensor, scale: Sequence[int]) -> torch.Tensor:
    """``network.resize_to`` of x to ``scale`` (whole numbers, height and width) times its
    size, written as shifted slices, products and sums (each output row and column is a fixed
    mix of two source ones; the edges repeat, as the resize clamps).  OpenVINO runs these as
    a few fused elementwise kernels in a plain layout: with the top class after it 4.1 ms at
    360x480 against 5.3 for its resize, which writes a blocked layout that must be reordered.
    Traced, height and width stay free."""
    n, c, h, w = x.shape
    scale_y, scale_x = int(scale[0]), int(scale[1])
    if min(scale_y, scale_x) < 1:
        raise ValueError(f"upsampling scales must be whole numbers >= 1, got {tuple(scale)}")
    wy, wx = _phase_weights(scale_y).to(x), _phase_weights(scale_x).to(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    # Columns first, on the small source: (n, c, h + 2, w, scale_x) -> (n, c, h + 2, W).
    cols = [padded[..., i:i + w, None] * wx[i] for i in range(3)]
    wide = (cols[0] + cols[1] + cols[2]).reshape(n, c, h + 2, w * scale_x)
    # Then rows, writing the output contiguously: (n, c, h, scale_y, W) -> (n, c, H, W).
    rows = [wide[:, :, i:i + h, None, :] * wy[i][:, None] for i in range(3)]
    return (rows[0] + rows[1] + rows[2]).reshape(n, c, h * scale_y, w * scale_x)


class ResizedTopClass(TopClass):
    """``TopClass`` of coarse logits resized bilinearly as the network's own last step resizes
    them (``network.resize_to``): the exported head after ``DFANet.coarse_logits``.  Either to
    ``size`` (height, width), or by whole-number ``scale`` factors (height, width) with
    ``upsample_by_phases``, which serves every size the factors fit (the network's quarter of
    a size divisible by 4, say)."""

    def __init__(self, num_classes: int, size: Sequence[int] | None = None,
                 scale: Sequence[int] | None = None) -> None:
        super().__init__(num_classes)
        if (size is None) == (scale is None):
            raise ValueError("ResizedTopClass takes a size or a scale, one of them")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.scale = None if scale is None else (int(scale[0]), int(scale[1]))

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale is not None:
            return super().forward(upsample_by_phases(logits, self.scale))
        assert self.size is not None  # one of the two, checked at construction
        return super().forward(resize_to(logits, self.size))


class _Exportable(nn.Module):
    """What an exported graph runs: ``model``, up to its coarse logits when ``coarse`` (a model
    without ``coarse_logits`` gives its full-size ones); with ``normalise``, from images
    (N, H, W, 3) in 0..255, normalised first, so that the runtime normalises the image as it
    reorders it for the first convolution (0.9 ms less than torch's pass at 360x480)."""

    def __init__(self, model: nn.Module, coarse: bool, normalise: Normalise | None) -> None:
        super().__init__()
        self.model = model
        self.coarse = coarse and hasattr(model, "coarse_logits")
        self.normalise = normalise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise is not None:
            x = self.normalise(x.permute(0, 3, 1, 2))
        if self.coarse:  # a method, which Module's attribute typing cannot tell
            return cast(Callable[[torch.Tensor], torch.Tensor], self.model.coarse_logits)(x)
        return self.model(x)


def _onnx_bytes(module: nn.Module, example: torch.Tensor, outputs: Sequence[str],
                dynamic: bool, channels_last: bool = False) -> bytes:
    """``module`` exported to ONNX (opset 17) in memory; ``dynamic``: batch, height and width
    free (so named; the input (N, C, H, W), or (N, H, W, C) when ``channels_last``), so one
    export serves every input shape."""
    buffer = io.BytesIO()
    height = 1 if channels_last else 2
    axes = {"input": {0: "batch", height: "height", height + 1: "width"}} if dynamic else None
    # The TorchScript exporter takes ~2 s here against ~10 s for dynamo=True, with equal
    # graphs.  Its warnings say that the trace fixes shape-dependent branches: the network's
    # resizes take their sizes from tensors (``network.resize_like``), which the trace keeps.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # export writes to a file object too; its stubs name only paths.
        torch.onnx.export(module, (example.contiguous(),),
                          buffer,  # type: ignore[arg-type]
                          input_names=["input"],
                          output_names=list(outputs), dynamic_axes=axes, dynamo=False,
                          opset_version=17)
    return buffer.getvalue()


def _ort_session(graph: bytes, sizes: Sequence[int] | None = None) -> Any:
    """An ONNX Runtime CPU session of ``graph`` on torch's thread count; ``sizes``: the
    (batch, height, width) its free dimensions are fixed to, so that it plans for that
    shape."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    if sizes is not None:
        for name, size in zip(("batch", "height", "width"), sizes, strict=True):
            options.add_free_dimension_override_by_name(name, int(size))
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _ov_model(graph: bytes, shape: Sequence[int]) -> Any:
    """OpenVINO's model of ``graph`` with its input fixed to ``shape`` (its output shapes then
    known, before compiling)."""
    import openvino as ov

    model = ov.Core().read_model(graph)
    model.reshape({0: list(shape)})
    return model


def _ov_request(model: Any, bf16: bool) -> Any:
    """An OpenVINO CPU infer request of ``model`` (``_ov_model``), fp32 or with the bf16
    precision hint, on torch's thread count, one stream (latency)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if bf16
              else "f32"}
    return core.compile_model(model, "CPU", config).create_infer_request()


def cpu_has_native_bf16() -> bool:
    """OpenVINO reports bf16 among the CPU's capabilities (AVX-512 BF16 or AMX)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def available_exported_backends(bf16_checked: bool = False) -> list[str]:
    """The exported backends installed here (``openvino-bf16`` only with native bf16 and
    ``bf16_checked`` weights): the candidates ``auto`` measures on the CPU."""
    found = []
    if importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnxruntime")
    if importlib.util.find_spec("openvino") is not None:
        found.append("openvino")
        if bf16_checked and cpu_has_native_bf16():
            found.append("openvino-bf16")
    return found


class _Exported(nn.Module):
    """The network exported once to ONNX with free height and width, and for ``head`` the
    ``TopClass`` graph after it (OpenVINO; ONNX Runtime runs ``TopClass`` in torch), compiled
    per input shape by the backend's runtime.

    ``backend`` ``auto`` measures the installed candidates at the first input shape
    (``AUTO_ROUNDS`` interleaved rounds) and keeps the fastest for every later shape,
    so a new shape costs one compilation (0.1-0.9 s) and never another export.
    """

    def __init__(self, model: nn.Module, backend: str, num_classes: int | None,
                 bf16_checked: bool = False, normalise: Normalise | None = None) -> None:
        """``num_classes``: add the ``TopClass`` post-processing for that many classes;
        ``normalise``: take images in 0..255 and normalise them in the graph first."""
        super().__init__()
        self.backend = backend
        self.bf16_checked = bf16_checked
        self.timings_ms: dict[str, float] = {}  # what ``auto`` measured, by backend
        self._model = model
        self._normalise = normalise
        self._top_class = None if num_classes is None else TopClass(num_classes).eval()
        # Only the graphs are kept: every shape runs from them.  Exported here, once, those
        # the backend (for ``auto``: each candidate) runs.
        self._graphs: dict[bool, bytes] = {}
        # By the scale (one graph, free height and width) or by the shapes in and out.
        self._heads: dict[tuple[int, ...], bytes] = {}
        candidates = ([backend] if backend != "auto"
                      else available_exported_backends(bf16_checked))
        for name in candidates:
            self._graph(self._coarse(name))
        if self._top_class is not None and any(map(self._coarse, candidates)):
            # The head for sizes divisible by the network's stride, found on a 64x64 input.
            with torch.no_grad():
                coarse = tuple(_Exportable(model, True, None)(torch.zeros(1, 3, 64, 64)).shape)
            if coarse[2:] != (64, 64):
                self._head(coarse, (64, 64))
        self._cache: dict[tuple[int, ...], Callable[[torch.Tensor], Any]] = {}

    def _coarse(self, backend: str) -> bool:
        """Whether ``backend`` runs the network to its coarse logits only, the final resize
        going with the post-processing (OpenVINO with a top class)."""
        return backend != "onnxruntime" and self._top_class is not None

    def _graph(self, coarse: bool) -> bytes:
        """The network's ONNX graph (to its coarse logits or whole), exported on first use."""
        graph = self._graphs.get(coarse)
        if graph is None:
            example = (torch.zeros(1, 64, 64, 3) if self._normalise is not None
                       else torch.zeros(1, 3, 64, 64))
            graph = self._graphs[coarse] = _onnx_bytes(
                _Exportable(self._model, coarse, self._normalise), example, ["logits"],
                dynamic=True, channels_last=self._normalise is not None)
        return graph

    def _head(self, coarse: tuple[int, ...], size: tuple[int, int]) -> bytes:
        """The ``ResizedTopClass`` graph from ``coarse`` logits (N, C, h, w) to ``size``: one
        graph for every size a whole multiple of its logits' (exported once, compiled per
        shape); any other size its own (exported for it: 0.3 s)."""
        assert self._top_class is not None  # a head only follows a top class
        num_classes, (height, width) = self._top_class.num_classes, coarse[2:]
        whole = size[0] % height == 0 and size[1] % width == 0 and size != (height, width)
        scale = (size[0] // height, size[1] // width)
        key = scale if whole else (*coarse, *size)
        graph = self._heads.get(key)
        if graph is None:
            head = (ResizedTopClass(num_classes, scale=scale) if whole
                    else ResizedTopClass(num_classes, size=size))
            example = torch.zeros(1, num_classes, 8, 8) if whole else torch.zeros(coarse)
            graph = self._heads[key] = _onnx_bytes(head.eval(), example, ["labels", "probability"],
                                                   dynamic=whole)
        return graph

    def forward(self, x: torch.Tensor) -> Any:
        if x.device.type != "cpu":
            raise ValueError(f"the {self.backend} backend runs on the CPU only, got {x.device}")
        shape = tuple(x.shape)
        if self._normalise is not None:
            # The graph takes the image as it lies, channels-last (no copy for a view of one).
            x = x.permute(0, 2, 3, 1)
        run = self._cache.get(shape)
        if run is None:
            if self.backend == "auto":
                self.backend, run = self._measure(x)
            else:
                run = self._build(self.backend, tuple(x.shape))
            self._cache[shape] = run
        return run(x.contiguous())

    def _build(self, backend: str, shape: tuple[int, ...]) -> Callable[[torch.Tensor], Any]:
        """``backend``'s run for inputs of ``shape``, as the graph takes them."""
        graph = self._graph(self._coarse(backend))
        height, width = shape[1:3] if self._normalise is not None else shape[2:]
        if backend == "onnxruntime":
            session = _ort_session(graph, (shape[0], height, width))
            # The post-processing in torch: ONNX Runtime ran the TopClass graph ~10 ms slower
            # than torch's running maximum at 360x480 (one thread, BENCHMARKS.md).
            head = self._top_class

            def run_ort(x: torch.Tensor) -> Any:
                logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
                return logits if head is None else head(logits)
            return run_ort
        model = _ov_model(graph, shape)
        bf16 = backend == "openvino-bf16"
        if self._top_class is None:
            network = _ov_request(model, bf16)

            def run_logits(x: torch.Tensor) -> Any:
                network.infer({0: x.numpy()}, share_inputs=True)
                return torch.from_numpy(network.get_output_tensor(0).data.copy())
            return run_logits
        # The network stops at its coarse logits (a sixteenth of the pixels); their resize to
        # the input's size and the post-processing run as a second graph, in fp32 whatever
        # the network's precision.  The bf16 network's final resize and the reorder of its
        # output into fp32 took 3.5 ms at 360x480; the head's reductions in bf16 fall back to
        # slow layouts (25 ms instead of 1) and would round the probability.
        coarse = tuple(model.output(0).get_shape())
        head = _ov_model(self._head(coarse, (height, width)), coarse)
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The head compiles on another core meanwhile: a new size's set-up 0.72 s instead
            # of 0.97 at 360x480 (OpenVINO's compilation runs without the GIL).
            compiling = pool.submit(_ov_request, head, False)
            network = _ov_request(model, bf16)
            post = compiling.result()
        # The head reads the network's output buffer (fixed for a fixed shape): no copy.
        post.set_input_tensor(network.get_output_tensor(0))

        def run_ov(x: torch.Tensor) -> Any:
            network.infer({0: x.numpy()}, share_inputs=True)
            post.infer()
            return (torch.from_numpy(post.get_output_tensor(0).data.copy()),
                    torch.from_numpy(post.get_output_tensor(1).data.copy()))
        return run_ov

    def _measure(self, x: torch.Tensor) -> tuple[str, Callable[[torch.Tensor], Any]]:
        """The fastest installed exported backend on ``x`` and its run, built for that shape:
        each candidate built and called twice, then ``AUTO_ROUNDS`` interleaved rounds (load
        from other processes falls on all alike), the lowest median wins."""
        candidates = available_exported_backends(self.bf16_checked)
        if not candidates:
            raise ValueError("backend auto on the CPU needs onnxruntime or openvino installed")
        x = x.contiguous()
        runs = {name: self._build(name, tuple(x.shape)) for name in candidates}
        for run in runs.values():
            run(x)
            run(x)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(AUTO_ROUNDS):
            for name, run in runs.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
        self.timings_ms = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
        best = min(self.timings_ms, key=self.timings_ms.__getitem__)
        return best, runs[best]

    def extra_repr(self) -> str:
        return (f"backend={self.backend}, top_class={self._top_class is not None}, "
                f"shapes={list(self._cache)}")


def _legacy_ort_build(model: nn.Module, x: torch.Tensor) -> Callable:
    """``onnxruntime-logits``: a static export and session per input shape."""
    session = _ort_session(_onnx_bytes(model, x, ["output"], dynamic=False))
    return lambda inp: torch.from_numpy(session.run(None, {"input": inp.contiguous().numpy()})[0])


def _resolve_backend(backend: str, device: torch.device, half: bool) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if half and device.type != "cuda":
        raise ValueError(f"half=True needs a CUDA device, got {device}")
    if backend == "auto":
        backend = AUTO_BACKEND.get(device.type, "eager")
        if backend == "auto" and not available_exported_backends():
            backend = "eager"
    if (backend == "auto" or backend in EXPORTED_BACKENDS or backend == "onnxruntime-logits") \
            and device.type != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU only, got {device}")
    return backend


def prepare_for_inference(model: nn.Module, device: torch.device | str = "cpu",
                          half: bool = False, channels_last: bool = True,
                          backend: str = "auto", compile_mode: str | None = None,
                          bf16_checked: bool = False) -> nn.Module:
    """An eval-mode inference copy of ``model`` (BN folded) on ``device``; ``model`` untouched.

    ``half`` runs in fp16 (CUDA only).  ``backend`` is one of ``BACKENDS``; ``auto`` takes the
    one measured fastest for the device type.  ``compile_mode`` is passed to ``torch.compile``
    (backend "compile" only; None is its default mode).  ``bf16_checked``: these weights were
    measured to keep their accuracy in bf16, so ``auto`` may take ``openvino-bf16``.
    """
    return _prepare(model, device, half, channels_last, backend, compile_mode, bf16_checked,
                    head=False)


def prepare_top_class(model: nn.Module, device: torch.device | str = "cpu",
                      half: bool = False, channels_last: bool = True,
                      backend: str = "auto", bf16_checked: bool = False,
                      normalise: Normalise | None = None) -> _Prepared:
    """``prepare_for_inference`` followed by ``TopClass``: a normalised float image batch in,
    (class ids (N, H, W) uint8, top-class probability (N, H, W) float32) out.  The exported
    backends run the post-processing as a graph of their own runtime after the network's.

    With ``normalise`` the images go in as they are, RGB in 0..255 (N, 3, H, W), and are
    normalised first: by the exported backends inside their graph, which takes them
    channels-last (a view of an (N, H, W, 3) buffer is passed without a copy)."""
    return _prepare(model, device, half, channels_last, backend, None, bf16_checked,
                    head=True, normalise=normalise)


def _prepare(model: nn.Module, device: torch.device | str, half: bool, channels_last: bool,
             backend: str, compile_mode: str | None, bf16_checked: bool, head: bool,
             normalise: Normalise | None = None) -> _Prepared:
    device = torch.device(device)
    backend = _resolve_backend(backend, device, half)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and head:
        raise ValueError("prepare_top_class needs a model with num_classes")
    exported = backend == "auto" or backend in EXPORTED_BACKENDS
    if exported or backend == "onnxruntime-logits":
        channels_last = False  # the runtimes pick their own blocked layouts (NCHWc) inside
    dtype = torch.float16 if half else torch.float32
    if backend == "onnxruntime-logits":
        folded = fold_batch_norms(model)
    else:
        folded = inference_copy(model)
    folded = folded.to(device=device, dtype=dtype)
    if channels_last:
        # Module.to takes memory_format at run time; torch's overloads leave it out.
        folded = folded.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if normalise is not None:
        normalise = copy.deepcopy(normalise).to(device)
    inner: nn.Module
    if exported:  # the post-processing inside, in the runtime's own graph where it pays
        inner = _Exported(folded, backend, num_classes if head else None, bf16_checked,
                          normalise)
    elif backend == "eager":
        inner = folded
    elif backend == "onnxruntime-logits":
        inner = _PerShape(folded, _legacy_ort_build, backend)
    else:  # compile
        compiled = torch.compile(folded, mode=compile_mode, dynamic=False)
        # Compiling a module gives a module (OptimizedModule); the stubs say only "callable".
        assert isinstance(compiled, nn.Module)
        inner = compiled
    if head and not exported:
        assert num_classes is not None  # checked above
        inner = nn.Sequential(inner, TopClass(num_classes).to(device))
    return _Prepared(inner, dtype, channels_last, backend, num_classes, normalise,
                     in_graph=exported).eval()


class ImageToLabels(nn.Module):
    """uint8 images (N, H, W, 3) RGB -> uint8 label maps (N, H, W): normalise, model, argmax.

    The permute makes an NCHW view with channels-last strides, so no copy is needed before a
    channels-last model; ``torch.compile`` fuses the normalisation and the argmax into few
    kernels.  ``model`` is any module with the DFANet contract (e.g. a prepared one) or, with
    ``top_class``, one that returns ``TopClass``'s outputs (``prepare_top_class``).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 dtype: torch.dtype = torch.float32, top_class: bool = False) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.top_class = top_class
        self.norm = Normalise(mean, std)

    @property
    def backend(self) -> str:
        """The model's backend as it runs now (``auto``'s choice once it has measured)."""
        return getattr(self.model, "backend", "eager")

    def to_float(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) channels-last, 0..255."""
        if image.dim() != 4 or image.shape[-1] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected uint8 RGB images of shape (N, H, W, 3), got "
                             f"{image.dtype} {tuple(image.shape)}")
        return image.permute(0, 3, 1, 2).float()

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) channels-last, normalised."""
        return self.norm(self.to_float(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if getattr(self.model, "normalises", False):  # prepared with the normalisation
            x = self.to_float(image)
        else:
            x = self.normalise(image).to(self.dtype)
        out = self.model(x)
        if self.top_class:
            return out[0]
        return out.argmax(dim=1).to(torch.uint8)


def prepare_labels(model: nn.Module, mean: Sequence[float], std: Sequence[float],
                   device: torch.device | str = "cpu", half: bool = False,
                   channels_last: bool = True, backend: str = "auto") -> nn.Module:
    """``prepare_top_class`` behind the normalisation: the whole uint8-image-to-labels path
    (``ImageToLabels``), the class computed by ``TopClass`` (OpenVINO: in a graph of its own;
    torch's argmax over the classes of an NCHW tensor is several times slower on the CPU,
    BENCHMARKS.md)."""
    prepared = prepare_top_class(model, device, half, channels_last, backend,
                                 normalise=Normalise(mean, std))
    dtype = torch.float16 if half else torch.float32
    return ImageToLabels(prepared, mean, std, dtype, top_class=True).to(device).eval()


class CudaGraph(Generic[_T]):
    """A function recorded once into a CUDA graph by ``capture_cuda_graph``.

    Calling it copies new inputs into the static ones, replays the graph and returns the
    function's outputs as captured: the same tensors on every call, overwritten by the next
    (clone them to keep them).
    """

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: tuple[torch.Tensor, ...],
                 outputs: _T) -> None:
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs

    @property
    def pool(self) -> Any:
        """The graph's memory pool: graphs that share it (and run one at a time) share memory."""
        return self.graph.pool()

    def __call__(self, *inputs: torch.Tensor) -> _T:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"this CUDA graph takes {len(self.inputs)} input(s), "
                             f"got {len(inputs)}")
        for static, x in zip(self.inputs, inputs, strict=True):
            if x.shape != static.shape or x.dtype != static.dtype:
                raise ValueError(f"this CUDA graph was captured for {tuple(static.shape)} "
                                 f"{static.dtype}, got {tuple(x.shape)} {x.dtype}")
            static.copy_(x)
        self.graph.replay()
        return self.outputs


def capture_cuda_graph(fn: Callable[..., _T], *examples: torch.Tensor, warmup: int = 3,
                       device: torch.device | str | None = None, pool: Any = None
                       ) -> CudaGraph[_T]:
    """Record ``fn(*static_inputs)`` into a CUDA graph, the static inputs being copies of
    ``examples`` (later inputs must have their shapes, dtypes and devices).

    ``fn`` may return a tensor, several (e.g. labels and confidence), or nothing when it writes
    into buffers of its own: whatever it returns is what the graph returns.  Without examples
    ``fn`` takes no argument and ``device`` names the GPU.  ``pool``: a memory pool to share
    (``CudaGraph.pool`` of another graph over the same buffers).
    """
    for example in examples:
        if example.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA tensor, got one on {example.device}")
    if device is None:
        if not examples:
            raise ValueError("capture_cuda_graph needs example inputs or a device")
        device = examples[0].device
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
    static_in = tuple(example.clone() for example in examples)
    # Warm up on a side stream, as torch.cuda.graph's documentation asks: lazy initialisation
    # (cuDNN algorithm search, library handles and workspaces, compilation) must happen before
    # capture.  Capturing on that same stream finds the per-stream handles already made.
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*static_in)
    side.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph, pool=pool, stream=side):
        static_out = fn(*static_in)
    torch.cuda.current_stream(device).wait_stream(side)
    return CudaGraph(graph, static_in, static_out)
