"""``dfanet bench engine``: ``dfanet_ros.engine.SegmentationEngine.run`` on host uint8 frames,
the node's per-frame work without ROS.

The wall clock per call includes the copies in and out and the synchronisation.  Every
backend (one engine each) and output set runs in interleaved rounds (one frame of each per
round), so load from other processes falls on all alike: the ratio of two backends is the
speed-up, the difference between two sets the cost of what one adds.  The defaults are the
node's: the checkpoint's model size, the label and the mean confidence, backend ``auto``;
``--backends onnxruntime-logits,auto`` keeps the earlier path as the contender.  "set-up"
is the first frame of each size (plans and the network's compilation for that size).
The engine comes from ``dfanet_ros`` and is imported only when this benchmark runs.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dfanet_model.args import MODEL_SIZE_HELP, parse_model_size
from dfanet_model.fast import BACKENDS
from dfanet_model.resources import checkpoint_or_default

from ..stats import percentile
from .machine import cpu_model, load_average, write_json
from .options import CHECKPOINT_HELP, choice_list, size_list

if TYPE_CHECKING:  # imported by main only: this module loads without dfanet_ros
    from dfanet_ros.engine import SegmentationEngine

DESCRIPTION = ("Time SegmentationEngine.run on host uint8 frames (the node's per-frame work "
               "without ROS): wall clock per call, which includes the copies in and out and "
               "the sync.")
# "mean_confidence": the frame's mean top-class probability without the confidence image.
OUTPUTS = ("label", "color", "overlay", "confidence", "mean_confidence")
# What the node makes for a label subscriber by default: min_mean_confidence > 0 asks for the
# mean confidence of every frame (/diagnostics).
NODE_OUTPUTS = ["label", "mean_confidence"]


@dataclass
class EngineBenchResult:
    height: int
    width: int
    model_height: int
    model_width: int
    outputs: str
    device: str
    backend: str
    fp16: bool
    setup_s: float  # the first frame of this size: plan and network compilation
    iterations: int
    median_ms: float  # wall clock of SegmentationEngine.run, host frame in, host arrays out
    p10_ms: float
    p90_ms: float
    p99_ms: float
    fps: float  # 1000 / median_ms
    copy_in_median_ms: float
    compute_median_ms: float
    times_ms: list[float] = field(repr=False, default_factory=list)


def bench_engine(engines: dict[str, SegmentationEngine], size: tuple[int, int],
                 output_sets: list[frozenset[str]], iters: int,
                 warmup: int) -> list[EngineBenchResult]:
    """Time each engine on one random rgb8 frame of ``size`` for each set of outputs."""
    h, w = size
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cases = [(name, wanted) for name in engines for wanted in output_sets]
    # Each case's call, made before the timing: the engine's images, and the mean as its flag.
    calls = {(name, wanted): functools.partial(
        engines[name].run, frame, "rgb8", wanted - {"mean_confidence"},
        mean_confidence="mean_confidence" in wanted) for name, wanted in cases}

    def run(name: str, wanted: frozenset[str]) -> Any:
        return calls[name, wanted]()

    setup: dict[str, float] = {}
    for name, wanted in cases:
        t0 = time.perf_counter()
        run(name, wanted)
        setup.setdefault(name, time.perf_counter() - t0)
        for _ in range(warmup):
            run(name, wanted)
        print(f"  {name} {h}x{w} {','.join(sorted(wanted))}: ready in "
              f"{time.perf_counter() - t0:.1f} s (first frame {setup[name]:.2f} s, "
              f"{engines[name].backend})", flush=True)
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    copy_in: dict[tuple, list[float]] = {case: [] for case in cases}
    compute: dict[tuple, list[float]] = {case: [] for case in cases}
    model_size: tuple[int, int] = run(*cases[0]).model_size  # one network size for all
    for _ in range(iters):
        for case in cases:
            call = calls[case]
            began = time.perf_counter()
            res = call()
            times[case].append((time.perf_counter() - began) * 1e3)
            copy_in[case].append(res.timings_ms["copy_in"])
            compute[case].append(res.timings_ms["compute"])
    results = []
    for case in cases:
        engine, t = engines[case[0]], times[case]
        median = statistics.median(t)
        results.append(EngineBenchResult(
            h, w, *model_size, ",".join(sorted(case[1])), str(engine.device), engine.backend,
            engine.fp16, setup[case[0]], iters, median, percentile(t, 10), percentile(t, 90),
            percentile(t, 99), 1000.0 / median, statistics.median(copy_in[case]),
            statistics.median(compute[case]), t))
    return results


def format_table(results: list[EngineBenchResult]) -> str:
    head = (f"{'frame':>9} {'network':>9} {'outputs':<30} {'device':<7} {'backend':<18} "
            f"{'median ms':>9} {'p90 ms':>8} {'p99 ms':>8} {'FPS':>8} {'in ms':>6} "
            f"{'compute':>8} {'set-up s':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{f'{r.height}x{r.width}':>9} {f'{r.model_height}x{r.model_width}':>9} "
            f"{r.outputs:<30} {r.device + (' fp16' if r.fp16 else ''):<7} {r.backend:<18} "
            f"{r.median_ms:>9.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} {r.fps:>8.1f} "
            f"{r.copy_in_median_ms:>6.2f} {r.compute_median_ms:>8.2f} {r.setup_s:>8.2f}")
    return "\n".join(lines)


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--checkpoint", type=Path, default=None, help=CHECKPOINT_HELP)
    e.add_argument("--sizes", type=size_list, default=[(720, 960), (1024, 2048)],
                   help="camera frame HEIGHTxWIDTH list (default 720x960,1024x2048)")
    e.add_argument("--model-size", type=parse_model_size, default=None,
                   help=MODEL_SIZE_HELP)
    e.add_argument("--outputs", type=choice_list(OUTPUTS, "output"), nargs="+",
                   default=[NODE_OUTPUTS],
                   help="output sets, each comma-separated, from " + ", ".join(OUTPUTS)
                        + " (default: " + ",".join(NODE_OUTPUTS) + ", the node's for a label "
                        "subscriber); compare label with label,confidence for the "
                        "confidence's cost")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--fp16", action="store_true", help="fp16 on CUDA")
    e.add_argument("--backends", type=choice_list(BACKENDS, "backend"), default=["auto"],
                   help="comma-separated network backends, one engine each, timed side by "
                        "side (default: auto, the node's); valid: " + ", ".join(BACKENDS))
    e.add_argument("--iters", type=int, default=None,
                   help="timed frames (default: 200 on CUDA, 10 on the CPU)")
    e.add_argument("--warmup", type=int, default=None,
                   help="untimed frames first (default: 20 on CUDA, 2 on the CPU)")
    e.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    e.add_argument("--json", type=Path, default=None, help="also write the results here")


def main(args: argparse.Namespace) -> int:
    """``dfanet bench engine``: build the engine, time every frame size, print, write."""
    try:  # the engine (dfanet_ros) is imported by its subcommand only
        from dfanet_ros.engine import SegmentationEngine
    except ImportError as e:
        print(f"error: dfanet bench engine needs dfanet_ros.engine ({e})", file=sys.stderr)
        return 2
    try:
        checkpoint = checkpoint_or_default(args.checkpoint)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = {name: SegmentationEngine(checkpoint, args.device, args.fp16, args.model_size,
                                        backend=name) for name in args.backends}
    engine = next(iter(engines.values()))
    cuda = engine.device.type == "cuda"
    iters = args.iters or (200 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    print(f"dfanet bench engine: {checkpoint.name} (DFANet {engine.card.variant}) on "
          f"{engine.device} ({cpu_model()}, {torch.get_num_threads()} threads), backends "
          f"{', '.join(engines)}; {warmup} warm-up + {iters} timed frames each, backends and "
          f"output sets interleaved; load average {load_average()}")
    output_sets = [frozenset(outputs) for outputs in args.outputs]
    results: list[EngineBenchResult] = []
    try:
        for size in args.sizes:
            results += bench_engine(engines, size, output_sets, iters, warmup)
    finally:
        for one in engines.values():
            one.release()
    print()
    print(format_table(results))
    if args.json:
        write_json(args.json, engine.device, results=[asdict(r) for r in results],
                   failures=[])
    return 0
