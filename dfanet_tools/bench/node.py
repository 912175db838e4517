"""``dfanet bench node``: the segmentation node over real DDS, fed by a camera process.

Three processes, as on a robot: the node (``dfanet_ros.segmentation_node``), a camera
publisher (``python -m dfanet_tools.bench.node publish``, this module) and this process, which
subscribes to the node's outputs.  For each scenario (frame size x rate x number of cameras)
the publisher sends frames for a warm-up period and then for the measured period, stamping
each with the wall clock as it publishes; it reports the stamps it sent.  Here, each answer's
arrival time minus its stamp is the stamp-to-output latency (publish, DDS to the node, the
node's work, DDS back); a measured frame without an answer counts as dropped (replaced by a
newer frame in the node's one-frame slot, or lost in transport).  The node's own
``SegmentationInfo.total_ms`` (callback start to the last publish returning) is collected too.

Rate 0 means flat out: the publisher keeps two frames per camera in flight (the next leaves
when an answer arrives), so the answered rate is the node's sustained throughput without a
flooding publisher taking the CPU from it.  Every process uses the package's Fast DDS
shared-memory profile (config/fastdds_large_images.xml) unless one is already configured.

``dfanet bench soak`` (:func:`soak`) keeps one node fed for minutes at a multiple of the rate
it sustains: after a flat-out phase that measures that rate, one camera publishes at twice it
while a thread samples the node's resident memory (/proc/PID/status; GPU memory through
nvidia-smi on CUDA).  It reports latency per window (first minute against last), the memory
slope, and where every frame went, from the node's own /diagnostics counters taken before
and after the feed and the collector's answers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from ..bag.io import header_stamp_ns
from ..report import percentiles
from ..ros_process import DdsClient, NodeProcess, dds_environment, node_command, spin_in_background

DEFAULT_DOMAIN_ID = 231  # apart from the test suites' ranges


def camera_topic(index: int) -> str:
    return f"/bench/cam{index}/image"


def output_topic(index: int, output: str) -> str:
    return f"/bench/cam{index}/segmentation/{output}"


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


# ------------------------------------------------------------------------ camera publisher

def publish_main(argv: list[str]) -> int:
    """The camera process: publish frames on ``--cameras`` topics, report the stamps sent."""
    p = argparse.ArgumentParser(prog="python -m dfanet_tools.bench.node publish")
    p.add_argument("--cameras", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="per camera; 0: flat out")
    p.add_argument("--warmup", type=float, required=True, help="seconds before measuring")
    p.add_argument("--duration", type=float, required=True, help="measured seconds")
    p.add_argument("--answer-output", default="label",
                   help="flat out: the output whose arrival frees a frame's place")
    p.add_argument("--match-timeout", type=float, default=60.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from dfanet_ros.conversions import array_to_image

    rclpy.init()
    node = rclpy.create_node("dfanet_bench_camera")
    try:
        # Reliable, depth 1, as most camera drivers: a best-effort subscriber still matches.
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pubs = [node.create_publisher(Image, camera_topic(i), qos) for i in range(args.cameras)]
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        messages = [array_to_image(frame, "rgb8", _header(node, f"cam{i}"))
                    for i in range(args.cameras)]
        deadline = time.monotonic() + args.match_timeout
        while any(pub.get_subscription_count() == 0 for pub in pubs):
            if time.monotonic() > deadline:
                print(f"error: nobody subscribed to {camera_topic(0)} within "
                      f"{args.match_timeout:g} s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        window = _FlatOut(node, args.cameras, args.answer_output) if args.rate == 0 else None
        deadline = time.monotonic() + args.match_timeout
        while window is not None and not window.matched():
            if time.monotonic() > deadline:
                print(f"error: nobody publishes {output_topic(0, args.answer_output)} within "
                      f"{args.match_timeout:g} s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        sent: dict[int, list[int]] = {i: [] for i in range(args.cameras)}
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        start = time.perf_counter()
        measure_from = start + args.warmup
        end = measure_from + args.duration
        tick = 0
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if period:
                # A camera that fell behind skips the frames it missed; it never bursts.
                tick = max(tick, int((now - start) / period))
                wait = start + tick * period - now
                if wait > 0:
                    time.sleep(wait)
                ready = range(args.cameras)
            else:
                ready = window.wait_for_room(min(0.05, end - now))
            measuring = time.perf_counter() >= measure_from
            for i in ready:
                msg = messages[i]
                stamp = time.time_ns()
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                if window is not None:
                    window.sending(i, stamp)
                pubs[i].publish(msg)
                if measuring:
                    sent[i].append(stamp)
            tick += 1
        measured_s = time.perf_counter() - measure_from
        if window is not None:
            window.close()
        args.out.write_text(json.dumps({"sent": sent, "measured_s": measured_s}))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


class _FlatOut:
    """Flat out without flooding: at most WINDOW frames per camera in flight; a frame leaves
    flight when its answer arrives or after EXPIRE_S (then it is a drop).  Two in flight let
    the node receive one frame while it segments the other."""

    WINDOW = 2
    EXPIRE_S = 1.0

    def __init__(self, node: Any, cameras: int, output: str) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.node, self.cameras, self.output = node, cameras, output
        self.cond = threading.Condition()
        self.in_flight: list[dict[int, float]] = [{} for _ in range(cameras)]
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = [
            node.create_subscription(Image, output_topic(i, output),
                                     lambda msg, i=i: self._answered(i, msg), qos)
            for i in range(cameras)]
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self.thread = spin_in_background(self.executor, "bench camera")

    def _answered(self, camera: int, msg: Any) -> None:
        with self.cond:
            self.in_flight[camera].pop(header_stamp_ns(msg), None)
            self.cond.notify_all()

    def matched(self) -> bool:
        return all(self.node.count_publishers(output_topic(i, self.output)) > 0
                   for i in range(self.cameras))

    def wait_for_room(self, timeout: float) -> list[int]:
        """Cameras with room for another frame (after waiting up to ``timeout`` for one)."""
        def room() -> list[int]:
            now = time.perf_counter()
            for flight in self.in_flight:
                for stamp in [s for s, t in flight.items() if now - t > self.EXPIRE_S]:
                    del flight[stamp]
            return [i for i, f in enumerate(self.in_flight) if len(f) < self.WINDOW]
        with self.cond:
            ready = room()
            if not ready and self.cond.wait(max(timeout, 0.0)):
                ready = room()
            return ready

    def sending(self, camera: int, stamp: int) -> None:
        with self.cond:
            self.in_flight[camera][stamp] = time.perf_counter()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)


def _header(node: Any, frame_id: str) -> Any:
    from std_msgs.msg import Header
    return Header(stamp=node.get_clock().now().to_msg(), frame_id=frame_id)


# ------------------------------------------------------------------------ output collector

class _Collector(DdsClient):
    """This process's DDS side: subscribes to every camera's outputs and info, timestamps
    arrivals; with ``diagnostics``, keeps the node's latest /diagnostics counters too."""

    def __init__(self, cameras: int, outputs: list[str], diagnostics: bool = False) -> None:
        from dfanet_ros.msg import SegmentationInfo
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        super().__init__("dfanet_bench_collector")
        self.outputs = outputs
        self.lock = threading.Lock()
        # (camera, stamp) -> {output: arrival ns}
        self.arrivals: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        self.info: dict[tuple[int, int], tuple[float, float]] = {}
        # camera topic -> (the report's stamp in ns, its key-value pairs)
        self.diagnostics: dict[str, tuple[int, dict[str, str]]] = {}
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = []
        if diagnostics:
            from diagnostic_msgs.msg import DiagnosticArray
            self.subscriptions.append(self.node.create_subscription(
                DiagnosticArray, "/diagnostics", self._diagnostics, qos))
        for cam in range(cameras):
            for out in outputs:
                self.subscriptions.append(self.node.create_subscription(
                    Image, output_topic(cam, out),
                    lambda msg, c=cam, o=out: self._arrived(c, o, msg), qos))
            self.subscriptions.append(self.node.create_subscription(
                SegmentationInfo, output_topic(cam, "info"),
                lambda msg, c=cam: self._info(c, msg), qos))

    def _arrived(self, camera: int, output: str, msg: Any) -> None:
        now = time.time_ns()
        with self.lock:
            self.arrivals[(camera, header_stamp_ns(msg))][output] = now

    def _info(self, camera: int, msg: Any) -> None:
        with self.lock:
            self.info[(camera, header_stamp_ns(msg))] = (msg.total_ms, msg.inference_ms)

    def _diagnostics(self, msg: Any) -> None:
        stamp = header_stamp_ns(msg)
        with self.lock:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if "topic" in values:
                    self.diagnostics[values["topic"]] = (stamp, values)

    def diagnostics_after(self, topic: str, after_ns: int, timeout: float) -> dict[str, str]:
        """The node's /diagnostics values for ``topic`` from a report stamped after
        ``after_ns`` (wall clock); RuntimeError when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                stamp, values = self.diagnostics.get(topic, (0, {}))
            if stamp > after_ns:
                return values
            time.sleep(0.05)
        raise RuntimeError(f"no /diagnostics report for {topic} within {timeout:g} s")

    def matched(self, cameras: int) -> bool:
        """The node publishes every output the collector listens to."""
        return all(self.node.count_publishers(output_topic(c, o)) > 0
                   for c in range(cameras) for o in self.outputs)


# ------------------------------------------------------------------------------ scenarios

def _score(sent: dict[int, list[int]], measured_s: float, collector: _Collector,
           size: tuple[int, int], rate: float, cameras: int, device: str) -> NodeBenchResult:
    latencies, totals, inference = [], [], []
    answered = 0
    with collector.lock:
        for cam, stamps in sent.items():
            for stamp in stamps:
                got = collector.arrivals.get((cam, stamp), {})
                if len(got) == len(collector.outputs):
                    answered += 1
                    latencies.append((max(got.values()) - stamp) / 1e6)
                info = collector.info.get((cam, stamp))
                if info is not None:
                    totals.append(info[0])
                    inference.append(info[1])
    published = sum(len(s) for s in sent.values())
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


def _configure_dds(domain_id: int) -> None:
    """This process's environment (inherited by the node and the camera): the domain, and DDS
    on loopback with a transport able to carry large images (``dds.dds_environment``).
    Measured here: with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA 480x640 rgb8 frames and larger
    never arrived between processes in a loopback-only namespace; the package's shared-memory
    profile carries 1024x2048."""
    import os

    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ.update(dds_environment())  # read by the DDS participants created below


def bench_node_command(args: argparse.Namespace, checkpoint: Path, cameras: int,
                       outputs: list[str], diagnostics_period: float = 0.0) -> list[str]:
    """The node's command line for the bench's camera topics and ``args``' settings."""
    params: dict[str, Any] = {
        "checkpoint": checkpoint, "device": args.device, "fp16": args.fp16,
        "camera_topics": [camera_topic(i) for i in range(cameras)],
        "model_height": args.model_size[0] if args.model_size else -1,
        "model_width": args.model_size[1] if args.model_size else -1,
        "diagnostics_period": diagnostics_period,
    }
    for out in ("label", "color", "overlay"):
        params[f"publish_{out}"] = out in outputs
    if args.threads:
        params["cpu_threads"] = args.threads
    return node_command(params, extra=args.node_arg)


def _wait_for_node(node: NodeProcess, collector: _Collector, cameras: int,
                   timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not collector.matched(cameras):
        if not node.alive() or time.monotonic() > deadline:
            raise RuntimeError(
                "the segmentation node did not start"
                + (f" (exit code {node.proc.returncode})" if not node.alive()
                   else f" within {timeout:g} s")
                + f"; its log:\n{node.tail()}")
        time.sleep(0.1)


def _camera(workdir: Path, cameras: int, size: tuple[int, int], rate: float, warmup: float,
            duration: float, answer_output: str) -> tuple[dict[int, list[int]], float]:
    """Run the camera process once; the stamps it sent per camera and the measured seconds."""
    import os

    out = workdir / "sent.json"
    publisher = [sys.executable, "-m", "dfanet_tools.bench.node", "publish",
                 "--cameras", str(cameras), "--height", str(size[0]), "--width", str(size[1]),
                 "--rate", str(rate), "--warmup", str(warmup), "--duration", str(duration),
                 "--out", str(out), "--answer-output", answer_output]
    done = subprocess.run(publisher, env=dict(os.environ), capture_output=True, text=True,
                          timeout=warmup + duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"camera publisher failed: {done.stderr.strip()[-2000:]}")
    report = json.loads(out.read_text())
    return {int(k): v for k, v in report["sent"].items()}, report["measured_s"]


def run(args: argparse.Namespace, checkpoint: Path) -> tuple[list[NodeBenchResult], str]:
    """Every scenario of ``args`` against one node process; returns results and the device."""
    max_cameras = max(args.cameras)
    _configure_dds(args.domain_id)
    command = bench_node_command(args, checkpoint, max_cameras, args.outputs)
    results: list[NodeBenchResult] = []
    device = args.device
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-node-") as tmp:
        log_path = args.node_log or Path(tmp) / "node.log"
        with NodeProcess(command, log_path=log_path) as node:
            collector = _Collector(max_cameras, args.outputs)
            try:
                _wait_for_node(node, collector, max_cameras, args.startup_timeout)
                for size in args.sizes:
                    for cameras in args.cameras:
                        for rate in args.rates:
                            sent, measured_s = _camera(Path(tmp), cameras, size, rate,
                                                       args.warmup, args.duration,
                                                       args.outputs[0])
                            time.sleep(args.drain)  # answers still on their way
                            results.append(_score(sent, measured_s, collector, size,
                                                  rate, cameras, device))
                            print(format_table(results[-1:]).splitlines()[-1], flush=True)
                            if not node.alive():
                                raise RuntimeError(f"the segmentation node exited; its log:\n"
                                                   f"{node.tail()}")
                device = _node_device(log_path) or device
            finally:
                collector.close()
    return results, device


def _node_device(log_path: Path) -> str | None:
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


def results_json(results: list[NodeBenchResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


# ---------------------------------------------------------------------------------- soak

def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def gpu_mib(pid: int) -> float | None:
    """GPU memory used by process ``pid`` in MiB (nvidia-smi), None when it reports none."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                               "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return float(fields[1])
    return None


class _MemorySampler:
    """Samples the node's resident (and, on CUDA, GPU) memory every ``period`` seconds in a
    thread; ``progress`` is called with each sample."""

    def __init__(self, pid: int, period: float, gpu: bool,
                 progress: Any = None) -> None:
        self.pid, self.period, self.gpu, self.progress = pid, period, gpu, progress
        self.samples: list[tuple[int, float, float | None]] = []  # (wall ns, RSS, GPU MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                sample = (time.time_ns(), rss_mib(self.pid),
                          gpu_mib(self.pid) if self.gpu else None)
            except (OSError, RuntimeError):  # the node exited: the caller reports it
                return
            self.samples.append(sample)
            if self.progress is not None:
                self.progress(sample)
            if self._stop.wait(self.period):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30.0)


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, value) points; NaN below two distinct times."""
    if len({t for t, _ in points}) < 2:
        return float("nan")
    t, v = np.asarray(points, dtype=np.float64).T
    return float(np.polyfit(t, v, 1)[0])


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def soak_report(stamps: list[int], measured_s: float, collector: _Collector,
                samples: list[tuple[int, float, float | None]], before: dict[str, str],
                after: dict[str, str], window_s: float) -> dict[str, Any]:
    """Windows of latency and memory, memory slopes and the frame accounting of one soak.

    ``stamps``: the frames the camera sent (wall-clock ns); ``before``/``after``: the node's
    /diagnostics counters just before the camera started and after the last answers."""
    t0 = stamps[0] if stamps else time.time_ns()
    t_end = stamps[-1] if stamps else t0
    window_ns = int(window_s * 1e9)
    latency: dict[int, float] = {}  # stamp -> ms, answered frames only
    node_total: dict[int, float] = {}
    with collector.lock:
        for stamp in stamps:
            got = collector.arrivals.get((0, stamp), {})
            if len(got) == len(collector.outputs):
                latency[stamp] = (max(got.values()) - stamp) / 1e6
            info = collector.info.get((0, stamp))
            if info is not None:
                node_total[stamp] = info[0]

    def window(lo: int, hi: int, label: str) -> dict[str, Any]:
        sent = [s for s in stamps if lo <= s < hi]
        lat = percentiles([latency[s] for s in sent if s in latency])
        node = percentiles([node_total[s] for s in sent if s in node_total])
        rss = [m for t, m, _ in samples if lo <= t < hi]
        gpu = [g for t, _, g in samples if lo <= t < hi and g is not None]
        answered = sum(s in latency for s in sent)
        return {"window": label, "start_s": (lo - t0) / 1e9, "end_s": (hi - t0) / 1e9,
                "sent": len(sent), "answered": answered, "dropped": len(sent) - answered,
                "latency_p50_ms": lat["p50"], "latency_p99_ms": lat["p99"],
                "latency_max_ms": lat["max"], "node_total_p50_ms": node["p50"],
                "node_total_p99_ms": node["p99"], "rss_mean_mib": _mean(rss),
                "gpu_mean_mib": _mean(gpu) if gpu else None}

    # Windows from the first frame on; a tail shorter than half a window joins the last one.
    edges = [t0]
    while edges[-1] + window_ns <= t_end:
        edges.append(edges[-1] + window_ns)
    if len(edges) > 1 and t_end + 1 - edges[-1] < window_ns // 2:
        edges.pop()
    edges.append(t_end + 1)
    windows = [window(lo, hi, f"{(lo - t0) / 1e9:.0f}-{(hi - t0) / 1e9:.0f} s")
               for lo, hi in pairwise(edges)]
    # The first and the last full window of the soak (the last ends with the last frame).
    first = window(t0, t0 + window_ns, "first")
    last = window(t_end + 1 - window_ns, t_end + 1, "last")

    def minutes(t: int) -> float:
        return (t - t0) / 60e9

    # Slopes over the fed period only (the camera process starts and ends around it).
    fed = [(t, m, g) for t, m, g in samples if t0 <= t <= t_end]
    rss_points = [(minutes(t), m) for t, m, _ in fed]
    gpu_points = [(minutes(t), g) for t, _, g in fed if g is not None]
    settled = [(t, m) for t, m in rss_points if t * 60.0 >= window_s]
    memory = {
        "samples": len(fed),
        "rss_slope_mib_per_min": _slope_per_minute(rss_points),
        "rss_slope_after_first_window_mib_per_min": _slope_per_minute(settled),
        "rss_first_window_mib": first["rss_mean_mib"],
        "rss_last_window_mib": last["rss_mean_mib"],
        "rss_min_mib": min((m for _, m in rss_points), default=float("nan")),
        "rss_max_mib": max((m for _, m in rss_points), default=float("nan")),
        "gpu_slope_mib_per_min": _slope_per_minute(gpu_points) if gpu_points else None,
        "gpu_first_window_mib": first["gpu_mean_mib"],
        "gpu_last_window_mib": last["gpu_mean_mib"],
    }
    # Where every frame went.  The node counts what it received, segmented, replaced by a
    # newer frame in its one-frame slot, was told DDS lost, refused as bad input or skipped
    # unwatched; the camera's count and the collector's answers bound the rest.
    node = {k.removeprefix("frames_"): int(after.get(k, 0)) - int(before.get(k, 0))
            for k in ("frames_received", "frames_processed", "frames_dropped_newer",
                      "frames_lost_dds", "frames_bad", "frames_unwatched")}
    sent, answered = len(stamps), len(latency)
    never_delivered = sent - node["received"] - node["lost_dds"]
    not_arrived = node["processed"] - answered
    node_unaccounted = node["received"] - (node["processed"] + node["dropped_newer"]
                                           + node["bad"] + node["unwatched"])
    dropped = sent - answered
    accounting = {
        "sent": sent, "answered": answered, "dropped": dropped,
        "dropped_newer_frame": node["dropped_newer"], "lost_dds_reported": node["lost_dds"],
        "never_delivered": never_delivered, "bad": node["bad"], "unwatched": node["unwatched"],
        "processed_not_arrived": not_arrived, "node_counters": node,
        "node_unaccounted": node_unaccounted,
        # sent == answered + (newer + DDS lost + never delivered + bad + unwatched + not
        # arrived) holds exactly when the node's own books close and no term is negative.
        "closes": (node_unaccounted == 0 and never_delivered >= 0 and not_arrived >= 0
                   and dropped == node["dropped_newer"] + node["lost_dds"] + never_delivered
                   + node["bad"] + node["unwatched"] + not_arrived),
    }
    return {"duration_s": measured_s, "window_s": window_s,
            "fed_rate_hz": sent / measured_s if measured_s > 0 else float("nan"),
            "answered_rate_hz": answered / measured_s if measured_s > 0 else float("nan"),
            "first_window": first, "last_window": last, "windows": windows,
            "memory": memory, "accounting": accounting,
            "memory_samples": [{"t_s": (t - t0) / 1e9, "rss_mib": m, "gpu_mib": g}
                               for t, m, g in samples],
            "frames": [{"t_s": (s - t0) / 1e9, "latency_ms": latency.get(s)}
                       for s in stamps]}


def soak(args: argparse.Namespace, checkpoint: Path) -> dict[str, Any]:
    """Warm the node up and measure its sustainable rate flat out (unless ``args.rate``), then
    feed one camera at ``args.factor`` times that rate for ``args.duration`` seconds while
    sampling the node's memory; the report of :func:`soak_report` plus the set-up."""
    _configure_dds(args.domain_id)
    outputs, topic, size = ["label"], camera_topic(0), args.size
    command = bench_node_command(args, checkpoint, 1, outputs, args.diagnostics_period)
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-soak-") as tmp:
        log_path = args.node_log or Path(tmp) / "node.log"
        with NodeProcess(command, log_path=log_path) as node:
            collector = _Collector(1, outputs, diagnostics=True)
            try:
                _wait_for_node(node, collector, 1, args.startup_timeout)
                measure = 0.0 if args.rate else args.measure
                sent, measured_s = _camera(Path(tmp), 1, size, 0.0, args.warmup, measure,
                                           outputs[0])
                time.sleep(args.drain)
                device = _node_device(log_path) or args.device
                flat_out = None if args.rate else _score(sent, measured_s, collector, size,
                                                         0.0, 1, device)
                sustainable = args.rate or flat_out.answered_rate_hz
                if not sustainable > 0:
                    raise RuntimeError(f"the node answered no frame flat out; its log:\n"
                                       f"{node.tail()}")
                feed = args.factor * sustainable
                print(f"sustainable rate {sustainable:.1f} Hz"
                      + ("" if flat_out is None else f" (flat out for {measured_s:.1f} s, "
                         f"latency p50 {flat_out.latency_p50_ms:.1f} ms)")
                      + f"; feeding {feed:.1f} Hz for {args.duration:g} s", flush=True)
                mark = time.time_ns()
                timeout = 5 * args.diagnostics_period + 5
                before = collector.diagnostics_after(topic, mark, timeout)
                device = before.get("device") or device
                last_print = [0]

                def progress(sample: tuple[int, float, float | None]) -> None:
                    if sample[0] - last_print[0] >= args.window * 1e9:
                        last_print[0] = sample[0]
                        gpu = "" if sample[2] is None else f", GPU {sample[2]:.0f} MiB"
                        print(f"  {(sample[0] - mark) / 1e9:6.0f} s: RSS {sample[1]:.1f} "
                              f"MiB{gpu}", flush=True)

                sampler = _MemorySampler(node.proc.pid, args.sample_period,
                                         device.startswith("cuda"), progress)
                try:
                    sent, measured_s = _camera(Path(tmp), 1, size, feed, 0.0, args.duration,
                                               outputs[0])
                finally:
                    sampler.stop()
                time.sleep(args.drain)
                if not node.alive():
                    raise RuntimeError(f"the segmentation node exited; its log:\n"
                                       f"{node.tail()}")
                after = collector.diagnostics_after(topic, time.time_ns(), timeout)
                report = soak_report(sent[0], measured_s, collector, sampler.samples, before,
                                     after, args.window)
            finally:
                collector.close()
    report.update({"height": size[0], "width": size[1], "device": device,
                   "sustainable_rate_hz": sustainable, "rate_measured": not args.rate,
                   "factor": args.factor,
                   "flat_out": asdict(flat_out) if flat_out is not None else None})
    return _finite(report)


def _finite(obj: Any) -> Any:
    """NaN and infinities become None (strict JSON readers reject them)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def format_soak(report: dict[str, Any]) -> str:
    """The soak's per-window table and its summary lines."""
    def f(value: float | None, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    head = (f"{'window':>13} {'sent':>6} {'answered':>8} {'dropped':>7} {'lat p50':>8} "
            f"{'lat p99':>8} {'node p50':>8} {'RSS MiB':>8}")
    lines = [head, "-" * len(head)]
    rows = [*report["windows"], report["first_window"], report["last_window"]]
    for i, w in enumerate(rows):
        if i == len(report["windows"]):
            lines.append("-" * len(head))
        lines.append(f"{w['window']:>13} {w['sent']:>6} {w['answered']:>8} {w['dropped']:>7} "
                     f"{f(w['latency_p50_ms']):>8} {f(w['latency_p99_ms']):>8} "
                     f"{f(w['node_total_p50_ms']):>8} {f(w['rss_mean_mib']):>8}")
    m, a = report["memory"], report["accounting"]
    first, last = report["first_window"], report["last_window"]
    lines += [
        "",
        f"fed {report['fed_rate_hz']:.1f} Hz ({report['factor']:g} x sustainable "
        f"{report['sustainable_rate_hz']:.1f} Hz) for {report['duration_s']:.0f} s, "
        f"{report['height']}x{report['width']} rgb8, device {report['device']}; answered "
        f"{report['answered_rate_hz']:.1f} Hz",
        f"latency of answered frames, first vs last {report['window_s']:g} s: p50 "
        f"{f(first['latency_p50_ms'])} -> {f(last['latency_p50_ms'])} ms, p99 "
        f"{f(first['latency_p99_ms'])} -> {f(last['latency_p99_ms'])} ms",
        f"RSS: {m['samples']} samples, first {f(m['rss_first_window_mib'])} MiB, last "
        f"{f(m['rss_last_window_mib'])} MiB (min {f(m['rss_min_mib'])}, max "
        f"{f(m['rss_max_mib'])}); slope {f(m['rss_slope_mib_per_min'], 3)} MiB/min, "
        f"{f(m['rss_slope_after_first_window_mib_per_min'], 3)} MiB/min after the first "
        "window",
        "GPU memory: " + ("not sampled (no CUDA device)" if m["gpu_slope_mib_per_min"] is None
                          and m["gpu_first_window_mib"] is None else
                          f"first {f(m['gpu_first_window_mib'])} MiB, last "
                          f"{f(m['gpu_last_window_mib'])} MiB, slope "
                          f"{f(m['gpu_slope_mib_per_min'], 3)} MiB/min"),
        f"frames: sent {a['sent']} = answered {a['answered']} + dropped {a['dropped']} "
        f"(newer frame in the node's slot {a['dropped_newer_frame']}, lost in DDS "
        f"{a['lost_dds_reported']} reported + {a['never_delivered']} never delivered, bad "
        f"{a['bad']}, unwatched {a['unwatched']}, segmented but no answer arrived "
        f"{a['processed_not_arrived']})",
        f"node's counters: received {a['node_counters']['received']} = processed "
        f"{a['node_counters']['processed']} + newer {a['dropped_newer_frame']} + bad "
        f"{a['bad']} + unwatched {a['unwatched']} + {a['node_unaccounted']} unaccounted; "
        f"accounting {'closes' if a['closes'] else 'DOES NOT close'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        sys.exit(publish_main(sys.argv[2:]))
    print("usage: python -m dfanet_tools.bench.node publish ... (the camera process of "
          "dfanet bench node)", file=sys.stderr)
    sys.exit(2)
