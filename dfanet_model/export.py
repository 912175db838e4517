"""``dfanet export``: TorchScript and ONNX graphs of a checkpoint, each checked after writing.

The exported graph takes a normalised float image batch (N, 3, H, W) (the card's
preprocessing, ``dfanet_model.preprocess``) and returns logits (N, C, H, W) or, with
``--labels``, uint8 label maps (N, H, W): a thin wrapper adds the argmax.  The network is the
inference copy the CPU backends run (``fast.inference_copy``: batch norm folded, each strided
shortcut one stride-2 1x1 convolution), so the file runs as fast as they do.  Any
H and W work (batch, height and width are dynamic axes of the ONNX graph).  After writing, the
file is loaded back (``torch.jit.load``; onnxruntime on the CPU) and compared with PyTorch at
two sizes; the command fails if they disagree.

ONNX goes through the TorchScript-based exporter: on a 2-core machine it wrote DFANet B in 4 s
where the newer ``torch.export``-based one took 85 s, both files within 2e-5 of PyTorch at two
sizes.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .args import parse_size
from .checkpoint import METADATA_KEY, CheckpointError, ModelCard, load_model
from .fast import inference_copy

LOGIT_TOLERANCE = 1e-3  # largest accepted |exported - PyTorch| of a logit


class SegmentationExport(nn.Module):
    """The network and, for ``labels``, the per-pixel argmax as uint8."""

    def __init__(self, model: nn.Module, labels: bool) -> None:
        super().__init__()
        self.model = model
        self.labels = labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits.argmax(1).to(torch.uint8) if self.labels else logits


@dataclass
class Check:
    size: tuple[int, int]
    batch: int
    max_abs_diff: float      # logits; for label outputs, of the PyTorch logits' margins
    label_mismatches: int    # pixels whose labels differ (label outputs only)
    pixels: int
    ok: bool

    def describe(self, labels: bool) -> str:
        where = f"{self.size[0]}x{self.size[1]} (batch {self.batch})"
        if not labels:
            return f"  {where}: max abs difference {self.max_abs_diff:.2e} vs PyTorch"
        if not self.label_mismatches:
            return f"  {where}: labels identical to PyTorch at all {self.pixels:,d} pixels"
        return (f"  {where}: labels differ at {self.label_mismatches} of {self.pixels:,d} "
                f"pixels, where PyTorch's top two logits are within {self.max_abs_diff:.1e}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence tracing chatter: the network's shape comparisons depend only on the input's
    structure (the checks at two sizes confirm it), and the exporter's deprecation notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def export_torchscript(wrapper: nn.Module, example: torch.Tensor, out: Path,
                       card: ModelCard) -> None:
    with _quiet():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": card.to_json()})


def export_onnx(wrapper: nn.Module, example: torch.Tensor, out: Path, card: ModelCard,
                opset: int = 17) -> None:
    import onnx

    output = "labels" if wrapper.labels else "logits"
    axes = {0: "batch", 2: "height", 3: "width"}
    with _quiet():
        torch.onnx.export(wrapper, (example,), str(out), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=[output],
                          dynamic_axes={"image": axes,
                                        output: {0: "batch", 1: "height", 2: "width"}
                                        if wrapper.labels else axes})
    graph = onnx.load(str(out))
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    onnx.save(graph, str(out))


def load_exported(path: Path, fmt: str):
    """A callable float tensor -> tensor running the exported file (its own runtime)."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            # The graph as saved: the profiling executor would spend seconds specialising it
            # for each new size before its first result, and it is the graph that is checked.
            with torch.jit.optimized_execution(False):
                return module(x)
        return run
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


@torch.no_grad()
def check(model: nn.Module, run_exported, labels: bool, size: Sequence[int], batch: int,
          seed: int = 0) -> Check:
    """Compare the exported file with PyTorch on a random normalised batch of ``size``."""
    height, width = size
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    logits = model(x)
    got = run_exported(x)
    pixels = batch * height * width
    if not labels:
        diff = float((got.float() - logits).abs().max())
        return Check((height, width), batch, diff, 0, pixels, diff <= LOGIT_TOLERANCE)
    expected = logits.argmax(1)
    wrong = got.long() != expected
    mismatches = int(wrong.sum())
    # A differing label is acceptable only where PyTorch itself nearly ties: the logit of the
    # exported label must be within tolerance of the maximum.
    chosen = logits.gather(1, got.long()[:, None])[:, 0]
    margin = float((logits.max(1).values - chosen)[wrong].max()) if mismatches else 0.0
    return Check((height, width), batch, margin, mismatches, pixels, margin <= LOGIT_TOLERANCE)


def default_check_sizes(input_size: Sequence[int]) -> list[tuple[int, int]]:
    """The training size and an unrelated one (odd, smaller, other aspect ratio)."""
    h, w = input_size
    return [(h, w), (max(33, (h * 3) // 4 + 1), max(33, (w * 3) // 5 + 3))]


def export(checkpoint: str | Path, fmt: str, out: Path | None = None, labels: bool = False,
           sizes: Sequence[Sequence[int]] | None = None, opset: int = 17
           ) -> tuple[Path, ModelCard, list[Check]]:
    """Write ``checkpoint`` as TorchScript or ONNX and check the file against PyTorch."""
    if fmt not in ("torchscript", "onnx"):
        raise ValueError(f"format {fmt!r}; valid: torchscript, onnx")
    model, card = load_model(checkpoint, "cpu")
    if out is None:
        suffix = ".ts" if fmt == "torchscript" else ".onnx"
        out = Path(checkpoint).with_name(Path(checkpoint).stem + ("-labels" if labels else "")
                                         + suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(s) for s in (sizes or default_check_sizes(card.input_size))]
    wrapper = SegmentationExport(inference_copy(model), labels).eval()
    example = torch.zeros(1, 3, *sizes[0])
    with torch.no_grad():
        if fmt == "torchscript":
            export_torchscript(wrapper, example, out, card)
        else:
            export_onnx(wrapper, example, out, card, opset)
    run_exported = load_exported(out, fmt)
    checks = [check(model, run_exported, labels, s, batch=1 + i % 2, seed=i)
              for i, s in enumerate(sizes)]
    return out, card, checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="deployable .safetensors or training .pt file")
    parser.add_argument("--format", choices=("torchscript", "onnx"), required=True)
    parser.add_argument("--out", type=Path, help="output file (default: beside the checkpoint, "
                                                 ".ts or .onnx)")
    parser.add_argument("--labels", action="store_true",
                        help="output uint8 label maps (argmax in the graph) instead of logits")
    parser.add_argument("--check-size", dest="sizes", type=parse_size, action="append",
                        metavar="HxW", help="size to compare at (repeat; default: the "
                                            "training size and one unrelated size)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")


def run(args: argparse.Namespace) -> int:
    try:
        out, card, checks = export(args.checkpoint, args.format, args.out, args.labels,
                                   args.sizes, args.opset)
    except CheckpointError as e:
        print(f"dfanet export: {e}", file=sys.stderr)
        return 1
    kind = "uint8 labels (N, H, W)" if args.labels else f"logits (N, {card.num_classes}, H, W)"
    axes = "dynamic batch, height and width" if args.format == "onnx" else "any batch and size"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): DFANet {card.variant} as "
          f"{args.format}, input normalised float (N, 3, H, W), output {kind}; {axes}")
    runtime = "torch.jit.load" if args.format == "torchscript" else "onnxruntime (CPU)"
    print(f"loaded back with {runtime} and compared with PyTorch:")
    for c in checks:
        print(c.describe(args.labels))
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"dfanet export: {out} does not match PyTorch (tolerance {LOGIT_TOLERANCE})",
              file=sys.stderr)
        return 1
    return 0
