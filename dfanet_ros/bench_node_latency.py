"""Receive-to-publish latency and sustained rate of the segmentation node, as its own process.

    python -m dfanet_ros.bench_node_latency                       # 360x480 and 1024x2048
    python -m dfanet_ros.bench_node_latency --sizes 720x960 --rate 15 --seconds 20

A benchmark, not a test: it prints figures and asserts nothing.  It starts the node (with the
shipped checkpoint, or a randomly initialised DFANet of the same shape when none is shipped:
speed does not depend on the weights), publishes rgb8 camera frames at a fixed rate with
sensor-data QoS as a camera driver would, subscribes to every output, and reports per size:

* node latency p50/p99: ``SegmentationInfo.total_ms``, from the node's subscription callback
  to its last output publish returning (includes waiting for the worker);
* end-to-end p50/p99: header stamp (set when this process publishes) to the label's arrival
  here, i.e. also serialisation and DDS transport both ways;
* sustained rate: frames answered per second, and how many of those sent were answered (the
  node drops frames it cannot keep up with, newest first, never building a backlog).

Both processes use config/fastdds_large_images.xml (default Fast DDS transports drop images
above ~0.5 MB between processes).  Run it confined (scripts/confined.sh) on shared machines.
"""
from __future__ import annotations

import argparse
import array
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CAMERA = "/bench/image"


def _profile() -> Path:
    local = PACKAGE_ROOT / "config" / "fastdds_large_images.xml"
    if local.is_file():
        return local
    from ament_index_python.packages import get_package_share_directory
    return Path(get_package_share_directory("dfanet_ros")) / "config" / local.name


def _checkpoint(requested: str | None, variant: str, workdir: Path) -> Path:
    if requested:
        return Path(requested)
    from dfanet_model.resources import DEFAULT_CHECKPOINT
    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    import torch

    from dfanet_model.checkpoint import ModelCard, save_model
    from dfanet_model.classes import CAMVID
    from dfanet_model.network import build_dfanet

    path = workdir / f"random_{variant.lower()}_camvid.safetensors"
    model = build_dfanet(variant, CAMVID.num_classes)
    # Batch-norm statistics of noise, so activations keep a trained network's scale (with the
    # initial statistics they shrink layer by layer towards subnormal floats, slow on a CPU).
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(2, 3, 96, 128) * 4 - 2)
    card = ModelCard(variant=variant, num_classes=CAMVID.num_classes,
                     class_names=list(CAMVID.names),
                     class_colors=[list(c) for c in CAMVID.colors],
                     ignore_index=CAMVID.ignore_index, input_size=[360, 480], dataset="camvid")
    save_model(path, model.eval(), card)
    print(f"no shipped checkpoint: using a random DFANet {variant} (360x480 network input)")
    return path


def _frame(height: int, width: int) -> np.ndarray:
    """A smooth synthetic camera frame (content does not change the cost)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                     ((x + y) % 256)], axis=-1).astype(np.uint8)


class _Bench:
    """This process's DDS side: a camera publisher and subscribers to the node's outputs."""

    def __init__(self, outputs: list[str]) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from dfanet_ros.msg import SegmentationInfo
        from dfanet_ros.segmentation_node import output_topic

        self.rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node("dfanet_bench")
        self.pub = self.node.create_publisher(Image, CAMERA, qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.answers: dict[int, float] = {}      # stamp ns -> arrival (time.time) of label
        self.node_ms: dict[int, float] = {}      # stamp ns -> info.total_ms
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for out in outputs:
            msg_type = SegmentationInfo if out == "info" else Image
            self.node.create_subscription(msg_type, output_topic(CAMERA, out),
                                          lambda m, out=out: self._on_output(out, m), qos)
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_output(self, out: str, msg) -> None:
        now = time.time()
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            if out == "label":
                self.answers[stamp] = now
            elif out == "info":
                self.node_ms[stamp] = msg.total_ms

    def publish(self, pixels: np.ndarray) -> int:
        from sensor_msgs.msg import Image

        height, width = pixels.shape[:2]
        data = array.array("B")
        data.frombytes(pixels)
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=data)
        msg.header.frame_id = "bench_camera"
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10**9)
        self.pub.publish(msg)
        return now

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def _run_size(bench: _Bench, height: int, width: int, rate: float, seconds: float,
              warmup: float) -> dict[str, float]:
    pixels = _frame(height, width)
    period = 1.0 / rate
    # Warm-up: plans, first-run costs; wait for the first answer.
    deadline = time.time() + 120
    first = None
    while time.time() < deadline:
        stamp = bench.publish(pixels)
        time.sleep(0.3)
        with bench.lock:
            if stamp in bench.answers or (first and bench.answers):
                break
            first = first or stamp
    end_warmup = time.time() + warmup
    while time.time() < end_warmup:
        bench.publish(pixels)
        time.sleep(period)
    time.sleep(1.0)
    sent: list[int] = []
    start = time.time()
    next_send = start
    while time.time() < start + seconds:
        sent.append(bench.publish(pixels))
        next_send += period
        time.sleep(max(0.0, next_send - time.time()))
    time.sleep(2.0)  # let the last answers arrive
    with bench.lock:
        answered = [s for s in sent if s in bench.answers]
        e2e = [(bench.answers[s] - s / 1e9) * 1e3 for s in answered]
        node = [bench.node_ms[s] for s in answered if s in bench.node_ms]
    span = (bench.answers[answered[-1]] - bench.answers[answered[0]]) if len(answered) > 1 \
        else float("nan")
    pct = (lambda v, q: float(np.percentile(v, q)) if v else float("nan"))  # noqa: E731
    return {"sent": len(sent), "answered": len(answered),
            "rate_hz": (len(answered) - 1) / span if len(answered) > 1 else 0.0,
            "offered_hz": len(sent) / seconds,
            "node_p50": pct(node, 50), "node_p99": pct(node, 99),
            "e2e_p50": pct(e2e, 50), "e2e_p99": pct(e2e, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfanet_ros.bench_node_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: the shipped one, else a random DFANet")
    parser.add_argument("--variant", default="A", help="variant of the random stand-in")
    parser.add_argument("--sizes", default="360x480,1024x2048", help="HxW[,HxW...] inputs")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per size")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--outputs", default="label,color,overlay,info",
                        help="outputs to subscribe to (the node computes only these)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--cpu-threads", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    if "label" not in outputs:
        outputs.append("label")  # answers are matched on the label

    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(_profile())  # before any participant
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-") as tmp:
        os.environ.setdefault("ROS_LOG_DIR", tmp)
        checkpoint = _checkpoint(args.checkpoint, args.variant, Path(tmp))
        params = {"checkpoint": checkpoint, "camera_topics": f"[{CAMERA}]",
                  "device": args.device, "backend": args.backend,
                  "cpu_threads": args.cpu_threads, "diagnostics_period": 0.0}
        command = [sys.executable, "-m", "dfanet_ros.segmentation_node", "--ros-args"]
        for k, v in params.items():
            command += ["-p", f"{k}:={v}"]
        log_path = Path(tmp) / "node.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            bench = _Bench(outputs)
            results = {}
            try:
                for height, width in sizes:
                    if proc.poll() is not None:
                        break
                    results[(height, width)] = _run_size(bench, height, width, args.rate,
                                                         args.seconds, args.warmup)
            finally:
                bench.close()
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        node_log = log_path.read_text(errors="replace")
    config = [line.split("]: ", 1)[-1] for line in node_log.splitlines() if "configured:" in line]
    print(f"node: {config[0] if config else '(did not configure)'}")
    print(f"outputs: {', '.join(outputs)}; camera {args.rate:g} Hz, sensor-data QoS; "
          f"{args.seconds:g} s per size; Fast DDS profile {_profile().name}")
    print("| input | offered Hz | answered | sustained Hz | node p50 / p99 ms | "
          "end-to-end p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for (h, w), r in results.items():
        print(f"| {h}x{w} | {r['offered_hz']:.1f} | {r['answered']}/{r['sent']} | "
              f"{r['rate_hz']:.1f} | {r['node_p50']:.1f} / {r['node_p99']:.1f} | "
              f"{r['e2e_p50']:.1f} / {r['e2e_p99']:.1f} |")
    if len(results) < len(sizes):
        print("the node stopped early; its log:\n" + node_log[-3000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
