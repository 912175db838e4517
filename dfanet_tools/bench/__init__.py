"""``dfanet bench``: how fast the model (and the engine) runs.  Prints figures, asserts none.

``dfanet bench model`` times DFANet variants at several input sizes and batch sizes in several
modes.  For each (variant, size, batch) every mode is built, warmed up, then run in
interleaved rounds (one call of each mode per round), so that load from other processes on a
shared machine falls on all modes alike; ratios to ``eager`` are the figures to trust.  Timing
is synchronised: CUDA events around each call on the GPU, ``time.perf_counter`` on the CPU.
Each mode's output is compared with the eager model's on the same input (max |logit
difference| and argmax agreement), so a fast but wrong path shows itself in the table.

``dfanet bench engine`` times the uint8-frame-to-outputs path of ``dfanet_ros.engine``, and
``dfanet bench node`` the ROS 2 node over DDS (``dfanet_tools.bench.node``); ``dfanet bench
soak`` feeds that node for minutes at twice its sustainable rate and watches its memory,
latency and frame accounting.  The last three need ``dfanet_ros`` and are imported only by
their subcommand, so ``dfanet bench model`` runs without ROS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dfanet_model.args import parse_size
from dfanet_model.checkpoint import ModelCard, load_model
from dfanet_model.fast import (
    ImageToLabels,
    capture_cuda_graph,
    prepare_for_inference,
    prepare_labels,
)
from dfanet_model.network import VARIANTS, build_dfanet

SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1024, 2048), (512, 1024), (720, 960), (360, 480))

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


@dataclass
class Result:
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




def _csv(choices: Any, what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or repr(text)}; valid: {', '.join(choices)}")
        return items
    return parse


def _variants(text: str) -> list[str]:
    return _csv(VARIANTS, "variant")(text.upper())


def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(t) for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    m = sub.add_parser("model", help="the network alone, in each mode",
                       description=__doc__.split("\n\n")[1])
    m.add_argument("--variants", type=_variants, default=list(VARIANTS),
                   help="comma-separated variants (default: A,B)")
    m.add_argument("--sizes", type=_sizes, default=list(SIZES),
                   help="comma-separated HEIGHTxWIDTH list (default: "
                        + ",".join(f"{h}x{w}" for h, w in SIZES) + ")")
    m.add_argument("--batch", type=int, nargs="+", default=[1],
                   help="batch sizes (default 1; e.g. --batch 1 6 for a six-camera rig)")
    m.add_argument("--modes", type=_csv(MODES, "mode"), default=None,
                   help="comma-separated modes (default: "
                        + "; ".join(f"{d}: {','.join(v)}" for d, v in DEFAULT_MODES.items())
                        + "). " + "; ".join(f"{k}: {v[1]}" for k, v in MODES.items()))
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when available)")
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
    e = sub.add_parser("engine", help="dfanet_ros.engine: uint8 frame to label/colour/overlay",
                       description="Time SegmentationEngine.run on host uint8 frames (the "
                                   "node's per-frame work without ROS): wall clock per call, "
                                   "which includes the copies in and out and the sync.")
    e.add_argument("--checkpoint", type=Path, default=None,
                   help="deployable checkpoint (default: the shipped one, else random weights "
                        "of DFANet A with the CamVid classes)")
    e.add_argument("--sizes", type=_sizes, default=[(720, 960), (1024, 2048)],
                   help="camera frame HEIGHTxWIDTH list (default 720x960,1024x2048)")
    e.add_argument("--model-size", type=parse_size, default=None,
                   help="network input HEIGHTxWIDTH (default: each frame's own size)")
    e.add_argument("--outputs", type=_csv(("label", "color", "overlay", "confidence"), "output"),
                   nargs="+", default=[["label"], ["label", "color", "overlay"]],
                   help="output sets, each comma-separated, from label, color, overlay and "
                        "confidence (default: label label,color,overlay); compare label with "
                        "label,confidence for the confidence's cost")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--fp16", action="store_true", help="fp16 on CUDA")
    e.add_argument("--backend", default="auto", help="network backend (dfanet_model.fast)")
    e.add_argument("--iters", type=int, default=None,
                   help="timed frames (default: 200 on CUDA, 10 on the CPU)")
    e.add_argument("--warmup", type=int, default=None,
                   help="untimed frames first (default: 20 on CUDA, 2 on the CPU)")
    e.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    e.add_argument("--json", type=Path, default=None, help="also write the results here")


    n = sub.add_parser("node", help="the ROS 2 node over DDS, fed by a camera process",
                       description="Start the segmentation node and a camera publisher "
                                   "process; measure stamp-to-output latency, sustained "
                                   "rate and drops per scenario (size x rate x cameras).")
    n.add_argument("--checkpoint", type=Path, default=None,
                   help="deployable checkpoint (default: the shipped one, else random weights "
                        "of DFANet A with the CamVid classes)")
    n.add_argument("--sizes", type=_sizes, default=[(720, 960), (1024, 2048)],
                   help="camera frame HEIGHTxWIDTH list (default 720x960,1024x2048)")
    n.add_argument("--rates", type=_rates, default=[30.0, 60.0, 100.0, 0.0],
                   help="frames per second per camera, 0 = flat out (default 30,60,100,0)")
    n.add_argument("--cameras", type=int, nargs="+", default=[1],
                   help="numbers of cameras to run (default 1; e.g. --cameras 1 4 6)")
    n.add_argument("--outputs", type=_csv(("label", "color", "overlay"), "output"),
                   default=["label"], help="outputs subscribed (default label)")
    n.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    n.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of frames before measuring (3; the first frame of a new size "
                        "plans, exports or captures)")
    n.add_argument("--drain", type=float, default=1.0,
                   help="seconds to wait for the last answers (1)")
    n.add_argument("--model-size", type=parse_size, default=None,
                   help="network input HEIGHTxWIDTH (default: each frame's own size)")
    n.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    n.add_argument("--fp16", action="store_true", help="fp16 on CUDA")
    n.add_argument("--threads", type=int, default=None, help="the node's CPU threads")
    n.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID for the node and both bench processes (default 231)")
    n.add_argument("--startup-timeout", type=float, default=120.0,
                   help="seconds to wait for the node (120)")
    n.add_argument("--node-arg", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter (repeatable)")
    n.add_argument("--node-log", type=Path, default=None,
                   help="keep the node's output in this file (default: discarded)")
    n.add_argument("--json", type=Path, default=None, help="also write the results here")

    k = sub.add_parser("soak", help="the node fed for minutes at twice its sustainable rate",
                       description="Start the segmentation node, measure the rate it sustains "
                                   "flat out (or take --rate), then feed one camera at "
                                   "--factor times that rate for --duration seconds, sampling "
                                   "the node's memory: memory slope, latency per window (first "
                                   "against last), and sent = answered + dropped from the "
                                   "node's own counters.  Prints figures, asserts none.")
    k.add_argument("--checkpoint", type=Path, default=None,
                   help="deployable checkpoint (default: the shipped one, else random weights "
                        "of DFANet A with the CamVid classes)")
    k.add_argument("--size", type=parse_size, default=(720, 960),
                   help="camera frame HEIGHTxWIDTH (default 720x960, rgb8)")
    k.add_argument("--model-size", type=parse_size, default=(384, 512),
                   help="network input HEIGHTxWIDTH (default 384x512)")
    k.add_argument("--rate", type=float, default=None,
                   help="the node's sustainable rate in Hz (default: measured flat out)")
    k.add_argument("--factor", type=float, default=2.0,
                   help="feed this multiple of the sustainable rate (default 2)")
    k.add_argument("--duration", type=float, default=600.0, help="fed seconds (600)")
    k.add_argument("--measure", type=float, default=10.0,
                   help="seconds flat out to measure the sustainable rate (10)")
    k.add_argument("--warmup", type=float, default=3.0,
                   help="seconds flat out before measuring (3)")
    k.add_argument("--window", type=float, default=60.0,
                   help="seconds per latency and memory window (60)")
    k.add_argument("--sample-period", type=float, default=2.0,
                   help="seconds between memory samples (2)")
    k.add_argument("--diagnostics-period", type=float, default=1.0,
                   help="the node's /diagnostics period, whose counters close the accounting "
                        "(1)")
    k.add_argument("--drain", type=float, default=2.0,
                   help="seconds to wait for the last answers (2)")
    k.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    k.add_argument("--fp16", action="store_true", help="fp16 on CUDA")
    k.add_argument("--threads", type=int, default=1, help="the node's CPU threads (1)")
    k.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID for the node and both bench processes (default 231)")
    k.add_argument("--startup-timeout", type=float, default=120.0,
                   help="seconds to wait for the node (120)")
    k.add_argument("--node-arg", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter (repeatable)")
    k.add_argument("--node-log", type=Path, default=None,
                   help="keep the node's output in this file (default: discarded)")
    k.add_argument("--json", type=Path, default=None,
                   help="also write everything here (windows, samples, every frame)")


def _rates(text: str) -> list[float]:
    try:
        rates = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must be numbers, got {text!r}") from None
    if not rates or any(r < 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be >= 0 (0: flat out), got {text!r}")
    return rates


# ---------------------------------------------------------------------------- model bench

def _normalise(image: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), the same arithmetic as ImageToLabels."""
    return ImageToLabels(nn.Identity(), card.mean, card.std).to(image.device).normalise(image)


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


def _build(mode: str, model: nn.Module, card: ModelCard, device: torch.device,
           image: torch.Tensor, x: torch.Tensor, compile_mode: str | None) -> Runner:
    """A callable and the input it takes (float NCHW or uint8 NHWC) for one mode."""
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


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_model(variant: str, size: tuple[int, int], batch: int, modes: list[str],
                device: torch.device, iters: int, warmup: int, num_classes: int = 19,
                checkpoint: Path | None = None, compile_mode: str | None = None,
                log: Callable[[str], None] = print,
                failures: list[dict[str, Any]] | None = None) -> list[Result]:
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
    x = _normalise(image, card)
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
                runners[mode] = _build(mode, model, card, device, image, x, compile_mode)
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
        results.append(Result(
            variant, size[0], size[1], batch, name, str(device), len(t), median,
            _percentile(t, 0.1), _percentile(t, 0.9), batch * 1000.0 / median,
            eager_median / median, diff, agreement, first_call_s, t))
    return results


def format_table(results: list[Result]) -> str:
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


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["dfanet", *sys.argv[1:]]) if sys.argv else "",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _write_json(path: Path, device: torch.device, results: list[Any],
                failures: list[dict[str, Any]] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(device), "results": [asdict(r) for r in results],
               "failures": failures or []}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def run_model(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available here", file=sys.stderr)
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
        from dfanet_model.checkpoint import read_checkpoint
        variants = [read_checkpoint(args.checkpoint).card.variant]
    print(f"dfanet bench model on {device} ({_cpu_model()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
          + f"); {warmup} warm-up + {iters} timed calls per mode, interleaved")
    results: list[Result] = []
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
        _write_json(args.json, device, results, failures)
    return 1 if failures else 0


# --------------------------------------------------------------------------- engine bench

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
    iterations: int
    median_ms: float  # wall clock of SegmentationEngine.run, host frame in, host arrays out
    p10_ms: float
    p90_ms: float
    p99_ms: float
    fps: float  # 1000 / median_ms
    copy_in_median_ms: float
    compute_median_ms: float
    times_ms: list[float] = field(repr=False, default_factory=list)


def _engine_checkpoint(path: Path | None, workdir: Path) -> Path:
    """The checkpoint to time: the given one, the shipped one, else random DFANet A weights."""
    if path is not None:
        return path
    from dfanet_model.resources import DEFAULT_CHECKPOINT
    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT
    from dfanet_model.checkpoint import save_training_state
    from dfanet_model.classes import CAMVID
    torch.manual_seed(0)
    card = ModelCard("A", CAMVID.num_classes, list(CAMVID.names),
                     [list(c) for c in CAMVID.colors], dataset="random weights (bench)")
    # The training-state format needs only torch (a GPU machine may lack safetensors).
    out = workdir / "dfanet_a_random.pt"
    save_training_state(out, {"model": build_dfanet("A", CAMVID.num_classes).state_dict()},
                        card)
    return out


def format_engine_table(results: list[EngineBenchResult]) -> str:
    head = (f"{'frame':>9} {'network':>9} {'outputs':<30} {'device':<7} {'backend':<11} "
            f"{'median ms':>9} {'p90 ms':>8} {'p99 ms':>8} {'FPS':>8} {'in ms':>6} "
            f"{'compute':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{f'{r.height}x{r.width}':>9} {f'{r.model_height}x{r.model_width}':>9} "
            f"{r.outputs:<30} {r.device + (' fp16' if r.fp16 else ''):<7} {r.backend:<11} "
            f"{r.median_ms:>9.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} {r.fps:>8.1f} "
            f"{r.copy_in_median_ms:>6.2f} {r.compute_median_ms:>8.2f}")
    return "\n".join(lines)


def run_engine(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np
    try:  # the engine (dfanet_ros) is imported by its subcommand only
        from dfanet_ros.engine import SegmentationEngine
    except ImportError as e:
        print(f"error: dfanet bench engine needs dfanet_ros.engine ({e})", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    results: list[EngineBenchResult] = []
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-") as tmp:
        checkpoint = _engine_checkpoint(args.checkpoint, Path(tmp))
        model_size = args.model_size or (0, 0)
        engine = SegmentationEngine(checkpoint, args.device, args.fp16, model_size,
                                    backend=args.backend)
        cuda = engine.device.type == "cuda"
        iters = args.iters or (200 if cuda else 10)
        warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
        print(f"dfanet bench engine: {checkpoint.name} (DFANet {engine.card.variant}) on "
              f"{engine.device}, {engine.backend} backend; {warmup} warm-up + {iters} timed "
              "frames each, output sets interleaved")
        rng = np.random.default_rng(0)
        for h, w in args.sizes:
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            sets = [frozenset(outputs) for outputs in args.outputs]
            for wanted in sets:
                t0 = time.perf_counter()
                engine.warm_up(h, w, "rgb8", wanted)
                for _ in range(warmup):
                    engine.run(frame, "rgb8", wanted)
                print(f"  {h}x{w} {','.join(sorted(wanted))}: ready in "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
            # Interleaved rounds, one frame of each output set per round: load from other
            # processes falls on every set alike, so differences between sets are the cost.
            times: dict[frozenset[str], list[float]] = {wanted: [] for wanted in sets}
            copy_in: dict[frozenset[str], list[float]] = {wanted: [] for wanted in sets}
            compute: dict[frozenset[str], list[float]] = {wanted: [] for wanted in sets}
            model_size: tuple[int, int] = (h, w)
            for _ in range(iters):
                for wanted in sets:
                    t = time.perf_counter()
                    res = engine.run(frame, "rgb8", wanted)
                    times[wanted].append((time.perf_counter() - t) * 1e3)
                    copy_in[wanted].append(res.timings_ms["copy_in"])
                    compute[wanted].append(res.timings_ms["compute"])
                    model_size = res.model_size
            for wanted in sets:
                median = statistics.median(times[wanted])
                results.append(EngineBenchResult(
                    h, w, *model_size, ",".join(sorted(wanted)), str(engine.device),
                    engine.backend, engine.fp16, iters, median, _percentile(times[wanted], 0.1),
                    _percentile(times[wanted], 0.9), _percentile(times[wanted], 0.99),
                    1000.0 / median, statistics.median(copy_in[wanted]),
                    statistics.median(compute[wanted]), times[wanted]))
        engine.release()
    print()
    print(format_engine_table(results))
    if args.json:
        _write_json(args.json, engine.device, results)
    return 0


# ----------------------------------------------------------------------------- node bench

def _node_bench(command: str, args: argparse.Namespace) -> Any:
    """dfanet_tools.bench.node (None, said on stderr, without ROS); fills in the domain id."""
    try:  # ROS is imported by these subcommands only
        from . import node as node_bench
    except ImportError as e:
        print(f"error: dfanet bench {command} needs rclpy and dfanet_ros ({e})",
              file=sys.stderr)
        return None
    if args.domain_id is None:
        args.domain_id = node_bench.DEFAULT_DOMAIN_ID
    return node_bench


def run_node(args: argparse.Namespace) -> int:
    import tempfile

    node_bench = _node_bench("node", args)
    if node_bench is None:
        return 2
    if any(c < 1 for c in args.cameras) or args.duration <= 0:
        print("error: --cameras must be at least 1 and --duration positive", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-") as tmp:
        checkpoint = _engine_checkpoint(args.checkpoint, Path(tmp))
        print(f"dfanet bench node: {checkpoint.name}, device {args.device}"
              f"{' fp16' if args.fp16 else ''}, outputs {','.join(args.outputs)}; "
              f"{args.warmup:g} s warm-up + {args.duration:g} s per scenario, "
              f"ROS_DOMAIN_ID {args.domain_id}", flush=True)
        try:
            results, device = node_bench.run(args, checkpoint)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print()
    print(node_bench.format_table(results))
    if args.json:
        on_gpu = device.startswith("cuda") and torch.cuda.is_available()
        _write_json(args.json, torch.device(device if on_gpu else "cpu"), results)
    return 0


def run_soak(args: argparse.Namespace) -> int:
    import tempfile

    node_bench = _node_bench("soak", args)
    if node_bench is None:
        return 2
    positive = {"--duration": args.duration, "--window": args.window,
                "--sample-period": args.sample_period, "--factor": args.factor,
                "--diagnostics-period": args.diagnostics_period,
                "--measure": args.measure if args.rate is None else 1.0,
                "--rate": 1.0 if args.rate is None else args.rate}
    bad = [name for name, value in positive.items() if not value > 0]
    if bad:
        print(f"error: {', '.join(bad)} must be positive", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-") as tmp:
        checkpoint = _engine_checkpoint(args.checkpoint, Path(tmp))
        print(f"dfanet bench soak: {checkpoint.name}, device {args.device}"
              f"{' fp16' if args.fp16 else ''}, {args.size[0]}x{args.size[1]} frames, network "
              f"{args.model_size[0]}x{args.model_size[1]}, {args.threads} thread(s); "
              f"ROS_DOMAIN_ID {args.domain_id}", flush=True)
        try:
            report = node_bench.soak(args, checkpoint)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    report["checkpoint"] = checkpoint.name
    print()
    print(node_bench.format_soak(report))
    if args.json:
        device = report["device"]
        on_gpu = device.startswith("cuda") and torch.cuda.is_available()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine_info(torch.device(device.split()[0] if on_gpu
                                                        else "cpu")),
                   "soak": report}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"model": run_model, "engine": run_engine, "node": run_node,
            "soak": run_soak}[args.target](args)
