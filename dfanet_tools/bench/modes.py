"""The ways of running the network that ``dfanet bench model`` compares, and how each is built."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dfanet_model.checkpoint import ModelCard
from dfanet_model.fast import capture_cuda_graph, prepare_for_inference, prepare_labels

# mode -> (devices it runs on, what it is)
MODES: dict[str, tuple[tuple[str, ...], str]] = {
    "eager": (("cpu", "cuda"), "the model as built, fp32, NCHW (the reference)"),
    "folded": (("cpu", "cuda"), "batch norm folded, fp32, channels-last"),
    "folded-nchw": (("cpu", "cuda"), "batch norm folded, fp32, plain NCHW layout"),
    "onnxruntime": (("cpu",), "batch norm folded, ONNX Runtime CPU session"),
    "fp16": (("cuda",), "batch norm folded, fp16, channels-last"),
    "cudagraph": (("cuda",), "fp16 channels-last, replayed from a CUDA graph"),
    "cudagraph-nchw": (("cuda",), "as cudagraph in the plain NCHW layout"),
    "compile": (("cpu", "cuda"), "torch.compile of the folded model (CUDA: fp16 channels-last "
                                 "in a CUDA graph)"),
    "labels": (("cpu", "cuda"), "uint8 RGB image on the device -> uint8 labels (CPU: the auto "
                                "backend, argmax inside; CUDA: fp16 channels-last in a CUDA "
                                "graph)"),
    "labels-compile": (("cuda",), "as labels, the whole path torch.compile'd, in a CUDA graph"),
}
DEFAULT_MODES = {"cpu": ("eager", "folded", "onnxruntime"),
                 "cuda": ("eager", "folded", "fp16", "cudagraph", "compile", "labels",
                          "labels-compile")}

# A callable and the input it takes: the normalised float NCHW batch or the uint8 NHWC image.
Runner = tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]

# torch.compile modes that record CUDA graphs themselves (cudagraph trees): no capture of ours.
_COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")


def _graph_tree_step(fn: Callable[[torch.Tensor], torch.Tensor]
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Call a module compiled with CUDA graphs, marking each call a new step (its outputs may
    be overwritten by the next call, as with our own graphs)."""
    def step(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return fn(x)
    return step


def build_runner(mode: str, model: nn.Module, card: ModelCard, device: torch.device,
                 image: torch.Tensor, x: torch.Tensor, compile_mode: str | None) -> Runner:
    """``mode`` of ``model`` and the input it takes: ``x`` (normalised float NCHW) or
    ``image`` (uint8 NHWC) for the modes that include the normalisation."""
    cuda = device.type == "cuda"
    if mode == "eager":
        return model, x
    if mode in ("folded", "folded-nchw"):
        return prepare_for_inference(model, device, backend="eager",
                                     channels_last=mode == "folded"), x
    if mode == "onnxruntime":
        return prepare_for_inference(model, device, backend="onnxruntime"), x
    if mode == "fp16":
        return prepare_for_inference(model, device, half=True, backend="eager"), x
    if mode in ("cudagraph", "cudagraph-nchw"):
        prepared = prepare_for_inference(model, device, half=True, backend="eager",
                                         channels_last=mode == "cudagraph")
        return capture_cuda_graph(prepared, x), x
    if mode == "compile":
        prepared = prepare_for_inference(model, device, half=cuda, backend="compile",
                                         compile_mode=compile_mode)
        if not cuda:
            return prepared, x
        if compile_mode in _COMPILE_MODES_WITH_GRAPHS:
            return _graph_tree_step(prepared), x
        return capture_cuda_graph(prepared, x), x
    if mode == "labels":
        if not cuda:
            return prepare_labels(model, card.mean, card.std, device), image
        pipeline = prepare_labels(model, card.mean, card.std, device, half=True,
                                  backend="eager")
        return capture_cuda_graph(pipeline, image), image
    if mode == "labels-compile":
        pipeline = prepare_labels(model, card.mean, card.std, device, half=True,
                                  backend="eager")
        compiled = torch.compile(pipeline, mode=compile_mode, dynamic=False)
        if compile_mode in _COMPILE_MODES_WITH_GRAPHS:
            return _graph_tree_step(compiled), image
        return capture_cuda_graph(compiled, image), image
    raise ValueError(f"unknown mode {mode!r}")
