"""``dfanet bench node``: the segmentation node over real DDS, fed by a camera process.

Three processes, as on a robot: the node (``dfanet_ros.segmentation_node``), the camera
publisher (``camera.py``) and this process, which subscribes to the node's outputs
(``collector.py``).  For each scenario (frame size x rate x number of cameras) the camera
sends frames for a warm-up period and then for the measured period, stamping each with the
wall clock as it publishes, and reports the stamps it sent.  Here, each answer's arrival time
minus its stamp is the stamp-to-output latency (publish, DDS to the node, the node's work,
DDS back); a measured frame without an answer counts as dropped (replaced by a newer frame in
the node's one-frame slot, or lost in transport).  The node's own ``SegmentationInfo.total_ms``
(callback start to the last publish returning) is collected too.  Every process uses the
package's Fast DDS shared-memory profile (config/fastdds_large_images.xml) unless one is
already configured.

The node's settings and start-up here are shared with ``dfanet bench soak`` (``soak.py``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfanet_model.args import MODEL_SIZE_HELP, parse_model_size
from dfanet_model.resources import checkpoint_or_default

from ..ros_process import NodeProcess, dds_environment, node_command
from ..stats import percentiles
from .camera import camera_topic, run_camera
from .collector import Collector
from .machine import write_json
from .options import CHECKPOINT_HELP, choice_list, rate_list, size_list

DESCRIPTION = ("Start the segmentation node and a camera publisher process; measure "
               "stamp-to-output latency, sustained rate and drops per scenario (size x rate x "
               "cameras).")
DEFAULT_DOMAIN_ID = 231  # apart from the test suites' ranges
OUTPUTS = ("label", "color", "overlay")


@dataclass
class NodeSettings:
    """How a benchmark starts the node under test."""

    checkpoint: Path
    device: str = "auto"
    fp16: bool = False
    model_size: tuple[int, int] | None = None  # parse_model_size: None the checkpoint's
    threads: int | None = None  # the node's CPU threads; None: torch's choice
    domain_id: int = DEFAULT_DOMAIN_ID  # for the node, the camera and the collector
    startup_timeout: float = 120.0
    node_args: list[str] = field(default_factory=list)  # extra "name:=value" parameters
    node_log: Path | None = None  # keep the node's output here (default: discarded)


@dataclass
class NodeBenchConfig:
    """The scenarios of ``dfanet bench node``: every size x camera count x rate."""

    node: NodeSettings
    sizes: list[tuple[int, int]]
    rates: list[float]  # per camera; 0: flat out
    cameras: list[int]
    outputs: list[str]  # subscribed; an answer is complete when all arrived
    duration: float = 10.0  # measured seconds per scenario
    warmup: float = 3.0  # seconds of frames first (a new size plans, exports or captures)
    drain: float = 1.0  # seconds to wait for the last answers


@dataclass
class NodeBenchResult:
    height: int
    width: int
    rate_hz: float  # requested per camera; 0: flat out
    cameras: int
    outputs: str
    device: str
    duration_s: float
    published: int  # measured frames, all cameras
    published_rate_hz: float  # per camera, achieved by the publisher
    answered: int
    dropped: int
    answered_rate_hz: float  # per camera: the sustained rate
    latency_p50_ms: float  # stamp to the last subscribed output's arrival here
    latency_p99_ms: float
    latency_max_ms: float
    node_total_p50_ms: float  # SegmentationInfo.total_ms: callback start to last publish
    node_total_p99_ms: float
    node_inference_p50_ms: float


def configure_dds(domain_id: int) -> None:
    """This process's environment (inherited by the node and the camera): the domain, and DDS
    on loopback with a transport able to carry large images (``dds.dds_environment``).
    Measured here: with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA 480x640 rgb8 frames and larger
    never arrived between processes in a loopback-only namespace; the package's shared-memory
    profile carries 1024x2048."""
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ.update(dds_environment())  # read by the DDS participants created later


def bench_node_command(settings: NodeSettings, cameras: int, outputs: list[str],
                       diagnostics_period: float = 0.0) -> list[str]:
    """The node's command line for the bench's camera topics and ``settings``."""
    from dfanet_ros.parameters import model_size_parameters

    params: dict[str, Any] = {
        "checkpoint": settings.checkpoint, "device": settings.device, "fp16": settings.fp16,
        "camera_topics": [camera_topic(i) for i in range(cameras)],
        **model_size_parameters(settings.model_size),
        "diagnostics_period": diagnostics_period,
    }
    for out in OUTPUTS:
        params[f"publish_{out}"] = out in outputs
    if settings.threads:
        params["cpu_threads"] = settings.threads
    return node_command(params, extra=settings.node_args)


def wait_for_node(node: NodeProcess, collector: Collector, cameras: int,
                  timeout: float) -> None:
    """Until the node publishes every output ``collector`` listens to; RuntimeError with the
    node's log when it exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not collector.matched(cameras):
        if not node.alive() or time.monotonic() > deadline:
            raise RuntimeError(
                "the segmentation node did not start"
                + (f" (exit code {node.proc.returncode})" if not node.alive()
                   else f" within {timeout:g} s")
                + f"; its log:\n{node.tail()}")
        time.sleep(0.1)


def node_device(log_path: Path) -> str | None:
    """The device the node reports in its log ("... device cpu ..."), if it does."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        # "configured: DFANet A (...) from CHECKPOINT on DEVICE (BACKEND)"
        if "configured: DFANet" in line and " on " in line:
            return line.rsplit(" on ", 1)[1].rsplit(" (", 1)[0].strip()
    return None


def score(sent: dict[int, list[int]], measured_s: float, collector: Collector,
          size: tuple[int, int], rate: float, cameras: int, device: str) -> NodeBenchResult:
    """One scenario's figures from the stamps the camera sent and what the collector saw."""
    latencies, totals, inference = [], [], []
    with collector.lock:
        for cam, stamps in sent.items():
            for stamp in stamps:
                latency = collector.answered_latency_ms(cam, stamp)
                if latency is not None:
                    latencies.append(latency)
                info = collector.info.get((cam, stamp))
                if info is not None:
                    totals.append(info[0])
                    inference.append(info[1])
    published, answered = sum(len(s) for s in sent.values()), len(latencies)
    lat, tot, inf = percentiles(latencies), percentiles(totals), percentiles(inference)
    return NodeBenchResult(
        size[0], size[1], rate, cameras, ",".join(collector.outputs), device,
        round(measured_s, 3), published, published / cameras / measured_s, answered,
        published - answered, answered / cameras / measured_s, lat["p50"], lat["p99"],
        lat["max"], tot["p50"], tot["p99"], inf["p50"])


def format_table(results: list[NodeBenchResult]) -> str:
    head = (f"{'frame':>9} {'rate':>5} {'cams':>4} {'outputs':<14} {'sent/s':>7} "
            f"{'answered/s':>10} {'dropped':>11} {'lat p50':>8} {'lat p99':>8} "
            f"{'node p50':>8} {'node p99':>8} {'infer':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        rate = "max" if r.rate_hz == 0 else f"{r.rate_hz:g}"
        dropped = f"{r.dropped}/{r.published}"
        lines.append(
            f"{f'{r.height}x{r.width}':>9} {rate:>5} {r.cameras:>4} {r.outputs:<14} "
            f"{r.published_rate_hz:>7.1f} {r.answered_rate_hz:>10.1f} {dropped:>11} "
            f"{r.latency_p50_ms:>8.1f} {r.latency_p99_ms:>8.1f} {r.node_total_p50_ms:>8.1f} "
            f"{r.node_total_p99_ms:>8.1f} {r.node_inference_p50_ms:>6.1f}")
    return "\n".join(lines)


def bench_node(config: NodeBenchConfig) -> tuple[list[NodeBenchResult], str]:
    """Every scenario of ``config`` against one node process; the results and the device the
    node ran on."""
    settings, max_cameras = config.node, max(config.cameras)
    configure_dds(settings.domain_id)
    command = bench_node_command(settings, max_cameras, config.outputs)
    results: list[NodeBenchResult] = []
    device = settings.device
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-node-") as tmp:
        log_path = settings.node_log or Path(tmp) / "node.log"
        with NodeProcess(command, log_path=log_path) as node:
            collector = Collector(max_cameras, config.outputs)
            try:
                wait_for_node(node, collector, max_cameras, settings.startup_timeout)
                for size in config.sizes:
                    for cameras in config.cameras:
                        for rate in config.rates:
                            sent, measured_s = run_camera(Path(tmp), cameras, size, rate,
                                                          config.warmup, config.duration,
                                                          config.outputs[0])
                            time.sleep(config.drain)  # answers still on their way
                            results.append(score(sent, measured_s, collector, size, rate,
                                                 cameras, device))
                            print(format_table(results[-1:]).splitlines()[-1], flush=True)
                            if not node.alive():
                                raise RuntimeError(f"the segmentation node exited; its log:\n"
                                                   f"{node.tail()}")
                device = node_device(log_path) or device
            finally:
                collector.close()
    return results, device


def add_node_arguments(parser: argparse.ArgumentParser, threads: int | None) -> None:
    """The options of ``NodeSettings`` but the model size (its default differs per bench)."""
    parser.add_argument("--checkpoint", type=Path, default=None, help=CHECKPOINT_HELP)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--fp16", action="store_true", help="fp16 on CUDA")
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"the node's CPU threads ({threads or 'default: torch decides'})")
    parser.add_argument("--domain-id", type=int, default=DEFAULT_DOMAIN_ID,
                        help="ROS_DOMAIN_ID for the node and both bench processes "
                             f"(default {DEFAULT_DOMAIN_ID})")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for the node (120)")
    parser.add_argument("--node-arg", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable)")
    parser.add_argument("--node-log", type=Path, default=None,
                        help="keep the node's output in this file (default: discarded)")


def node_settings(args: argparse.Namespace) -> NodeSettings:
    """``NodeSettings`` from the options of ``add_node_arguments`` and ``--model-size``;
    FileNotFoundError when no checkpoint is given and none is shipped."""
    return NodeSettings(checkpoint_or_default(args.checkpoint), args.device, args.fp16,
                        args.model_size, args.threads, args.domain_id, args.startup_timeout,
                        list(args.node_arg), args.node_log)


def ros_missing(command: str) -> str | None:
    """Why ``dfanet bench COMMAND`` cannot run here (rclpy or the node's messages absent)."""
    try:  # ROS is imported by these subcommands only
        import dfanet_ros.msg  # noqa: F401
        import rclpy  # noqa: F401
    except ImportError as e:
        return f"dfanet bench {command} needs rclpy and dfanet_ros ({e})"
    return None


def add_arguments(n: argparse.ArgumentParser) -> None:
    n.add_argument("--sizes", type=size_list, default=[(720, 960), (1024, 2048)],
                   help="camera frame HEIGHTxWIDTH list (default 720x960,1024x2048)")
    n.add_argument("--rates", type=rate_list, default=[30.0, 60.0, 100.0, 0.0],
                   help="frames per second per camera, 0 = flat out (default 30,60,100,0)")
    n.add_argument("--cameras", type=int, nargs="+", default=[1],
                   help="numbers of cameras to run (default 1; e.g. --cameras 1 4 6)")
    n.add_argument("--outputs", type=choice_list(OUTPUTS, "output"), default=["label"],
                   help="outputs subscribed (default label)")
    n.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    n.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of frames before measuring (3; the first frame of a new size "
                        "plans, exports or captures)")
    n.add_argument("--drain", type=float, default=1.0,
                   help="seconds to wait for the last answers (1)")
    n.add_argument("--model-size", type=parse_model_size, default=None,
                   help=MODEL_SIZE_HELP)
    add_node_arguments(n, threads=None)
    n.add_argument("--json", type=Path, default=None, help="also write the results here")


def main(args: argparse.Namespace) -> int:
    """``dfanet bench node``: the configuration from the command line, run, print, write."""
    problem = ros_missing("node")
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if any(c < 1 for c in args.cameras) or args.duration <= 0:
        print("error: --cameras must be at least 1 and --duration positive", file=sys.stderr)
        return 2
    try:
        settings = node_settings(args)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = NodeBenchConfig(settings, args.sizes, args.rates, args.cameras, args.outputs,
                             args.duration, args.warmup, args.drain)
    print(f"dfanet bench node: {settings.checkpoint.name}, device {settings.device}"
          f"{' fp16' if settings.fp16 else ''}, outputs {','.join(config.outputs)}; "
          f"{config.warmup:g} s warm-up + {config.duration:g} s per scenario, "
          f"ROS_DOMAIN_ID {settings.domain_id}", flush=True)
    try:
        results, device = bench_node(config)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_table(results))
    if args.json:
        write_json(args.json, device, results=[asdict(r) for r in results], failures=[])
    return 0
