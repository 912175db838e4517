"""Inference copies of DFANet: batch norm folded into the convolutions, then run by the fastest
correct backend for the device.

``prepare_for_inference(model)`` never changes ``model``: it folds a deep copy, so training can
go on with the original.  The prepared module keeps the model's contract: a float NCHW
normalised image in, logits at the input's height and width out (in fp16 when ``half``).

Backends (each one checked against the eager model by ``test/test_fast.py``):

* ``eager``        the folded module itself (channels-last where asked).
* ``compile``      ``torch.compile`` (Inductor); recompiles when the input shape changes.
* ``onnxruntime``  an ONNX Runtime CPU session per input shape (an export fixes the
                   shape-dependent resizes), graph optimisation level ALL.
* ``auto``         the backend measured fastest on that kind of device (``AUTO_BACKEND``;
                   figures in BENCHMARKS.md).

Around the network: ``Normalise`` (the one normalisation), ``ImageToLabels`` and
``prepare_labels`` (uint8 image to labels) and ``capture_cuda_graph``.  The node's
segmentation engine is built from these same parts, so what the benchmarks time is what the
node runs.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import warnings
from typing import Any, Callable, Generic, Sequence, TypeVar

import torch
from torch import nn

BACKENDS = ("auto", "eager", "compile", "onnxruntime")

# CPU: measured side by side (BENCHMARKS.md): ONNX Runtime 2.2-2.8x eager on one thread,
# 4.2-4.8x on two, torch.compile 1.45x, the folded eager module 1.2-1.3x.  CUDA: not measured
# yet; the eager backend in fp16 under a CUDA graph (the engine's default) is the safe choice
# until scripts/bench/gpu_bench.sh has compared it with torch.compile.
AUTO_BACKEND = {"cpu": "onnxruntime", "cuda": "eager"}

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
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
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
    """Casts and lays out the input as the inner module wants, then runs it."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, channels_last: bool,
                 backend: str, num_classes: int | None) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.channels_last = channels_last
        self.backend = backend
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float image batch of shape (N, 3, H, W), "
                             f"got {tuple(x.shape)}")
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x)

    def extra_repr(self) -> str:
        return f"backend={self.backend}, dtype={self.dtype}, channels_last={self.channels_last}"


def _ort_build(model: nn.Module, x: torch.Tensor) -> Callable:
    import onnxruntime as ort

    if x.device.type != "cpu":
        raise ValueError("the onnxruntime backend runs on the CPU only")
    buffer = io.BytesIO()
    # The TorchScript exporter takes ~4 s here against ~10 s for dynamo=True, with equal
    # graphs.  Its warnings say that the trace fixes shape-dependent branches: hence one
    # session per input shape.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x.contiguous(),), buffer, input_names=["image"],
                          output_names=["output"], dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(inp: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"image": inp.contiguous().numpy()})[0]
        return torch.from_numpy(out)

    return run


def prepare_for_inference(model: nn.Module, device: torch.device | str = "cpu",
                          half: bool = False, channels_last: bool = True,
                          backend: str = "auto", compile_mode: str | None = None) -> nn.Module:
    """An eval-mode inference copy of ``model`` (BN folded) on ``device``; ``model`` untouched.

    ``half`` runs in fp16 (CUDA only).  ``backend`` is one of ``BACKENDS``; ``auto`` takes the
    one measured fastest for the device type.  ``compile_mode`` is passed to ``torch.compile``
    (backend "compile" only; None is its default mode).
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if half and device.type != "cuda":
        raise ValueError(f"half=True needs a CUDA device, got {device}")
    if backend == "auto":
        backend = AUTO_BACKEND.get(device.type, "eager")
        if backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
            backend = "eager"
    if backend == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"the onnxruntime backend runs on the CPU only, got {device}")
    if backend == "onnxruntime":
        channels_last = False  # ONNX Runtime picks its own blocked layout (NCHWc) inside
    dtype = torch.float16 if half else torch.float32
    folded = fold_batch_norms(model).to(device=device, dtype=dtype)
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    inner: nn.Module
    if backend == "eager":
        inner = folded
    elif backend == "onnxruntime":
        inner = _PerShape(folded, _ort_build, "onnxruntime")
    else:  # compile
        inner = torch.compile(folded, mode=compile_mode, dynamic=False)
    return _Prepared(inner, dtype, channels_last, backend,
                     getattr(model, "num_classes", None)).eval()


class Normalise(nn.Module):
    """Float RGB images (N, 3, H, W) in 0..255 -> ``(x / 255 - mean) / std`` per channel.

    One multiply and one add in float32: every inference path (``ImageToLabels``, the
    segmentation engine, the benchmarks) normalises here.
    """

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
        """``out`` (may be ``image`` itself) receives the result instead of a new tensor."""
        return torch.mul(image, self.scale, out=out).add_(self.shift)


class ImageToLabels(nn.Module):
    """uint8 images (N, H, W, 3) RGB -> uint8 label maps (N, H, W): normalise, model, argmax.

    The permute makes an NCHW view with channels-last strides, so no copy is needed before a
    channels-last model; ``torch.compile`` fuses the normalisation and the argmax into few
    kernels.  ``model`` is any module with the DFANet contract (e.g. a prepared one).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.backend = getattr(model, "backend", "eager")
        self.norm = Normalise(mean, std)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) channels-last, normalised."""
        if image.dim() != 4 or image.shape[-1] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected uint8 RGB images of shape (N, H, W, 3), got "
                             f"{image.dtype} {tuple(image.shape)}")
        return self.norm(image.permute(0, 3, 1, 2).float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.normalise(image).to(self.dtype))
        return logits.argmax(dim=1).to(torch.uint8)


def prepare_labels(model: nn.Module, mean: Sequence[float], std: Sequence[float],
                   device: torch.device | str = "cpu", half: bool = False,
                   channels_last: bool = True, backend: str = "auto") -> nn.Module:
    """``prepare_for_inference`` for the whole uint8-image-to-labels path (``ImageToLabels``).

    With the onnxruntime backend the normalisation and the argmax go into the ONNX graph too:
    torch's argmax over the channels of an NCHW tensor is several times slower on the CPU
    than ONNX Runtime's ArgMax (measured in BENCHMARKS.md).
    """
    device = torch.device(device)
    prepared = prepare_for_inference(model, device, half, channels_last, backend)
    dtype = torch.float16 if half else torch.float32
    if prepared.backend != "onnxruntime":
        return ImageToLabels(prepared, mean, std, dtype).to(device).eval()
    pipeline = ImageToLabels(prepared.inner.model, mean, std, dtype).eval()
    return _PerShape(pipeline, _ort_build, "onnxruntime").eval()


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
