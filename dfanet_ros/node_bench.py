"""``dfanet bench node``: the segmentation node over real DDS, fed by a camera process.

Three processes, as on a robot: the node (``dfanet_ros.segmentation_node``), a camera
publisher (``python -m dfanet_ros.node_bench publish``, this module) and this process, which
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
from pathlib import Path
from typing import Any

import numpy as np

from .bag import header_stamp_ns
from .bag_eval import NodeProcess, dds_environment
from .report import percentiles

DEFAULT_DOMAIN_ID = 231  # apart from the test suites' ranges


def large_image_profile() -> Path | None:
    """config/fastdds_large_images.xml from the source tree or the installed share folder."""
    local = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"
    if local.is_file():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory("dfanet_ros")) / "config" / local.name
    except Exception:  # not installed as a ROS package
        return None
    return installed if installed.is_file() else None


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
    p = argparse.ArgumentParser(prog="python -m dfanet_ros.node_bench publish")
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

    from .conversions import array_to_image

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
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shut down under spin()
            pass

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

class _Collector:
    """This process's DDS side: subscribes to every camera's outputs and info, timestamps
    arrivals."""

    def __init__(self, cameras: int, outputs: list[str]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from dfanet_ros.msg import SegmentationInfo

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("dfanet_bench_collector", context=self.context)
        self.outputs = outputs
        self.lock = threading.Lock()
        # (camera, stamp) -> {output: arrival ns}
        self.arrivals: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        self.info: dict[tuple[int, int], tuple[float, float]] = {}
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = []
        for cam in range(cameras):
            for out in outputs:
                self.subscriptions.append(self.node.create_subscription(
                    Image, output_topic(cam, out),
                    lambda msg, c=cam, o=out: self._arrived(c, o, msg), qos))
            self.subscriptions.append(self.node.create_subscription(
                SegmentationInfo, output_topic(cam, "info"),
                lambda msg, c=cam: self._info(c, msg), qos))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="bench collector", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context shut down under spin()
            pass

    def _arrived(self, camera: int, output: str, msg: Any) -> None:
        now = time.time_ns()
        with self.lock:
            self.arrivals[(camera, header_stamp_ns(msg))][output] = now

    def _info(self, camera: int, msg: Any) -> None:
        with self.lock:
            self.info[(camera, header_stamp_ns(msg))] = (msg.total_ms, msg.inference_ms)

    def matched(self, cameras: int) -> bool:
        """The node publishes every output the collector listens to."""
        return all(self.node.count_publishers(output_topic(c, o)) > 0
                   for c in range(cameras) for o in self.outputs)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self.context.ok():
            self._rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)


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


def run(args: argparse.Namespace, checkpoint: Path) -> tuple[list[NodeBenchResult], str]:
    """Every scenario of ``args`` against one node process; returns results and the device."""
    import os

    max_cameras = max(args.cameras)
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    profile = large_image_profile()
    if profile is not None and not (os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE")
                                    or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")):
        # Measured here: with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (dds_environment's
        # fallback) 480x640 rgb8 frames and larger never arrived between processes in a
        # loopback-only namespace; the package's shared-memory profile carries 1024x2048.
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    os.environ.update(dds_environment())  # read by the DDS participants created below
    params = {
        "checkpoint": str(checkpoint), "device": args.device, "fp16": args.fp16,
        "camera_topics": "[" + ",".join(camera_topic(i) for i in range(max_cameras)) + "]",
        "model_height": args.model_size[0] if args.model_size else -1,
        "model_width": args.model_size[1] if args.model_size else -1,
        "diagnostics_period": 0.0,
    }
    for out in ("label", "color", "overlay"):
        params[f"publish_{out}"] = out in args.outputs
    if args.threads:
        params["cpu_threads"] = args.threads
    command = [sys.executable, "-m", "dfanet_ros.segmentation_node", "--ros-args"]
    for name, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        command += ["-p", f"{name}:={text}"]
    for extra in args.node_arg:
        command += ["-p", extra]
    results: list[NodeBenchResult] = []
    device = args.device
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-node-") as tmp:
        log_path = args.node_log or Path(tmp) / "node.log"
        with NodeProcess(command, log_path) as node:
            collector = _Collector(max_cameras, args.outputs)
            try:
                deadline = time.monotonic() + args.startup_timeout
                while not collector.matched(max_cameras):
                    if not node.alive() or time.monotonic() > deadline:
                        raise RuntimeError(
                            "the segmentation node did not start"
                            + (f" (exit code {node.proc.returncode})" if not node.alive()
                               else f" within {args.startup_timeout:g} s")
                            + f"; its log:\n{node.tail()}")
                    time.sleep(0.1)
                for size in args.sizes:
                    for cameras in args.cameras:
                        for rate in args.rates:
                            out = Path(tmp) / "sent.json"
                            publisher = [sys.executable, "-m", "dfanet_ros.node_bench",
                                         "publish", "--cameras", str(cameras),
                                         "--height", str(size[0]), "--width", str(size[1]),
                                         "--rate", str(rate), "--warmup", str(args.warmup),
                                         "--duration", str(args.duration), "--out", str(out),
                                         "--answer-output", args.outputs[0]]
                            done = subprocess.run(
                                publisher, env=dict(os.environ), capture_output=True,
                                text=True, timeout=args.warmup + args.duration + 120)
                            if done.returncode != 0:
                                raise RuntimeError(f"camera publisher failed: "
                                                   f"{done.stderr.strip()[-2000:]}")
                            time.sleep(args.drain)  # answers still on their way
                            report = json.loads(out.read_text())
                            sent = {int(k): v for k, v in report["sent"].items()}
                            results.append(_score(sent, report["measured_s"], collector, size,
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
        if "engine: DFANet" in line and "device " in line:
            return line.split("device ", 1)[1].split(",")[0]
    return None


def results_json(results: list[NodeBenchResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        sys.exit(publish_main(sys.argv[2:]))
    print("usage: python -m dfanet_ros.node_bench publish ... (the camera process of "
          "dfanet bench node)", file=sys.stderr)
    sys.exit(2)
