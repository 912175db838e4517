"""``dfanet bench model``: DFANet variants at several input sizes and batch sizes, each mode
side by side.

For each (variant, size, batch) every mode (``modes.MODES``) is built, warmed up, then run in
interleaved rounds (one call of each mode per round), so that load from other processes on a
shared machine falls on all modes alike; ratios to ``eager`` are the figures to trust.  Timing
is synchronised: CUDA events around each call on the GPU, ``time.perf_counter`` on the CPU.
Each mode's output is compared with the eager model's on the same input (max |logit
difference| and argmax agreement), so a fast but wrong path shows itself in the table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dfanet_model.checkpoint import ModelCard, load_model, read_checkpoint
from dfanet_model.device import DeviceError, resolve_device
from dfanet_model.network import VARIANTS, build_dfanet

from ..stats import percentile
from .machine import cpu_model, write_json
from .modes import DEFAULT_MODES, MODES, Runner, build_runner
from .options import choice_list, size_list

DESCRIPTION = __doc__.split("\n\n")[1]
SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1024, 2048), (512, 1024), (720, 960), (360, 480))


@dataclass
class ModelBenchResult:
    variant: str
    height: int
    width: int
    batch: int
    mode: str
    device: str
    iterations: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    fps: float  # images per second at the median time: batch * 1000 / median_ms
    vs_eager: float | None  # eager median / this median, same run
    max_abs_diff: float | None  # against eager fp32 logits (None for label outputs)
    argmax_agreement: float  # fraction of pixels whose class equals eager's
    first_call_s: float  # build + first call: export, compilation, graph capture
    times_ms: list[float] = field(repr=False, default_factory=list)


def _time_interleaved(runners: dict[str, Runner], iters: int, warmup: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Milliseconds per call of each runner, measured in interleaved rounds."""
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for fn, inp in runners.values():
            for _ in range(warmup):
                fn(inp)
        if cuda:
            torch.cuda.synchronize(device)
            events = {k: [(torch.cuda.Event(enable_timing=True),
                           torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
                      for k in runners}
        times: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(iters):
            for name, (fn, inp) in runners.items():
                if cuda:
                    start, end = events[name][i]
                    start.record()
                    fn(inp)
                    end.record()
                else:
                    t0 = time.perf_counter()
                    fn(inp)
                    times[name].append((time.perf_counter() - t0) * 1e3)
        if cuda:
            torch.cuda.synchronize(device)
            times = {k: [s.elapsed_time(e) for s, e in ev] for k, ev in events.items()}
    return times


def bench_model(variant: str, size: tuple[int, int], batch: int, modes: list[str],
                device: torch.device, iters: int, warmup: int, num_classes: int = 19,
                checkpoint: Path | None = None, compile_mode: str | None = None,
                log: Callable[[str], None] = print,
                failures: list[dict[str, Any]] | None = None) -> list[ModelBenchResult]:
    """Time ``modes`` of one (variant, size, batch) side by side; see the module docstring.

    A mode that fails to build or run is reported through ``log`` (and ``failures``) and
    left out, so one broken path does not cost the figures of the others.
    """
    if checkpoint is not None:
        model, card = load_model(checkpoint, device)
    else:
        torch.manual_seed(0)
        model = build_dfanet(variant, num_classes).to(device).eval()
        card = ModelCard(variant, num_classes, [f"class{i}" for i in range(num_classes)],
                         [[0, 0, 0]] * num_classes)
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8, generator=gen).to(device)
    # The card's preprocessing, as every path applies it (the labels modes too, inside
    # ImageToLabels): their argmax agreement measures the network, not a rounding difference.
    x = card.preprocessing()(image)
    with torch.inference_mode():
        reference = model(x).float()
    ref_labels = reference.argmax(1)
    if any("compile" in m for m in modes):
        # A fresh start per configuration: every compiled DFANet shares one forward code
        # object, and past dynamo's recompile limit it would silently fall back to eager.
        torch._dynamo.reset()
    runners: dict[str, Runner] = {"eager": (model, x)}
    checks: dict[str, tuple[float | None, float, float]] = {}
    for mode in ["eager", *modes]:
        if mode in checks:
            continue
        t0 = time.perf_counter()
        try:
            if mode not in runners:
                runners[mode] = build_runner(mode, model, card, device, image, x, compile_mode)
            fn, inp = runners[mode]
            with torch.inference_mode():
                out = fn(inp)  # the first call: exports and compilations happen here
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 - report any failure of a path and go on
            if mode == "eager":
                raise
            runners.pop(mode, None)
            message = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            log(f"  {mode}: FAILED ({message})")
            if failures is not None:
                failures.append({"variant": variant, "height": size[0], "width": size[1],
                                 "batch": batch, "mode": mode, "error": message})
            continue
        first_call_s = time.perf_counter() - t0
        if out.dtype == torch.uint8:  # labels
            checks[mode] = (None, (out.long() == ref_labels).float().mean().item(),
                            first_call_s)
        else:
            out = out.float()
            checks[mode] = ((out - reference).abs().max().item(),
                            (out.argmax(1) == ref_labels).float().mean().item(), first_call_s)
        if mode != "eager":
            log(f"  {mode}: built and first call in {first_call_s:.1f} s")
    times = _time_interleaved(runners, iters, warmup, device)
    del runners  # frees CUDA graphs and their memory pools before the next configuration
    if device.type == "cuda":
        torch.cuda.empty_cache()
    eager_median = statistics.median(times["eager"])
    results = []
    for name in (["eager"] if "eager" not in modes else []) + modes:
        if name not in times:
            continue
        t = times[name]
        median = statistics.median(t)
        diff, agreement, first_call_s = checks[name]
        results.append(ModelBenchResult(
            variant, size[0], size[1], batch, name, str(device), len(t), median,
            percentile(t, 10), percentile(t, 90), batch * 1000.0 / median,
            eager_median / median, diff, agreement, first_call_s, t))
    return results


def format_table(results: list[ModelBenchResult]) -> str:
    head = (f"{'variant':<7} {'size':>9} {'batch':>5} {'mode':<14} {'median ms':>9} "
            f"{'p90 ms':>8} {'FPS':>8} {'vs eager':>8} {'max|dlogit|':>11} {'argmax=':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        lines.append(
            f"{r.variant:<7} {f'{r.height}x{r.width}':>9} {r.batch:>5} {r.mode:<14} "
            f"{r.median_ms:>9.2f} {r.p90_ms:>8.2f} {r.fps:>8.1f} {r.vs_eager or 0:>7.2f}x "
            f"{diff:>11} {r.argmax_agreement:>8.2%}")
    return "\n".join(lines)


def _variant_list(text: str) -> list[str]:
    return choice_list(VARIANTS, "variant")(text.upper())


def add_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--variants", type=_variant_list, default=list(VARIANTS),
                   help="comma-separated variants (default: A,B)")
    m.add_argument("--sizes", type=size_list, default=list(SIZES),
                   help="comma-separated HEIGHTxWIDTH list (default: "
                        + ",".join(f"{h}x{w}" for h, w in SIZES) + ")")
    m.add_argument("--batch", type=int, nargs="+", default=[1],
                   help="batch sizes (default 1; e.g. --batch 1 6 for a six-camera rig)")
    m.add_argument("--modes", type=choice_list(MODES, "mode"), default=None,
                   help="comma-separated modes (default: "
                        + "; ".join(f"{d}: {','.join(v)}" for d, v in DEFAULT_MODES.items())
                        + "). " + "; ".join(f"{k}: {v[1]}" for k, v in MODES.items()))
    m.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: "
                   "cuda when available)")
    m.add_argument("--iters", type=int, default=None,
                   help="timed calls per mode (default: 200 on CUDA, 10 on the CPU)")
    m.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per mode first (default: 20 on CUDA, 2 on the CPU)")
    m.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (default: torch's choice, "
                        f"{torch.get_num_threads()} here)")
    m.add_argument("--classes", type=int, default=19, help="number of classes (default 19)")
    m.add_argument("--checkpoint", type=Path, default=None,
                   help="time these weights instead of random ones (variant from the card)")
    m.add_argument("--compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (default: default).  On CUDA the bench captures "
                        "its own CUDA graph, except under reduce-overhead and max-autotune, "
                        "which record their own")
    m.add_argument("--json", type=Path, default=None, help="also write the results here")


def main(args: argparse.Namespace) -> int:
    """``dfanet bench model``: check the arguments, time every configuration, print, write."""
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        print(f"error: --device: {e}", file=sys.stderr)
        return 2
    modes = args.modes or list(DEFAULT_MODES[device.type])
    unsupported = [m for m in modes if device.type not in MODES[m][0]]
    if unsupported:
        valid = ", ".join(k for k, v in MODES.items() if device.type in v[0])
        print(f"error: mode(s) {', '.join(unsupported)} do not run on {device.type}; "
              f"{device.type} modes: {valid}", file=sys.stderr)
        return 2
    if any(b < 1 for b in args.batch) or (args.iters is not None and args.iters < 1):
        print("error: --batch and --iters must be at least 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution per shape
    iters = args.iters or (200 if device.type == "cuda" else 10)
    warmup = args.warmup if args.warmup is not None else (20 if device.type == "cuda" else 2)
    variants = args.variants
    if args.checkpoint is not None:
        variants = [read_checkpoint(args.checkpoint).card.variant]
    print(f"dfanet bench model on {device} ({cpu_model()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
          + f"); {warmup} warm-up + {iters} timed calls per mode, interleaved")
    results: list[ModelBenchResult] = []
    failures: list[dict[str, Any]] = []
    for variant in variants:
        for size in args.sizes:
            for batch in args.batch:
                print(f"DFANet {variant} {size[0]}x{size[1]} batch {batch}", flush=True)
                done = bench_model(variant, size, batch, modes, device, iters, warmup,
                                   args.classes, args.checkpoint, args.compile_mode,
                                   failures=failures)
                results += done
                print(format_table(done), flush=True)
    print()
    print(format_table(results))
    for f in failures:
        print(f"FAILED: DFANet {f['variant']} {f['height']}x{f['width']} batch {f['batch']} "
              f"{f['mode']}: {f['error']}")
    if args.json:
        write_json(args.json, device, results=[asdict(r) for r in results], failures=failures)
    return 1 if failures else 0
