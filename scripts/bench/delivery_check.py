#!/usr/bin/env python3
"""How a camera stream from another process fares through the node, per Fast DDS setting.

Three processes, as on a robot: a camera publishing rgb8 frames with a driver's usual QoS
(reliable, depth 10; the benchmarks' camera process), the segmentation node (shipped model,
CPU, one thread), and this process as a viewer subscribing to the outputs with default QoS.
The camera and the viewer run with Fast DDS's defaults unless ``--camera-profile`` is given;
the node gets ``--node-profile`` (what the launch file's ``large_images`` sets).  The camera
first sends until the node answers once (the node plans, and builds its ONNX Runtime
session, on the first frame), then 8 s of warm-up and ``--frames`` frames at ``--rate``.
Prints one JSON line: frames sent and answered on the first ``--watch`` output, answered
within 200 ms and after more than 1 s, latency from the camera's stamp, and the answered
rate.  Run it confined:

    scripts/confined.sh .venv/bin/python scripts/bench/delivery_check.py --rate 5 --frames 60 \
        --watch overlay,color,label [--node-profile config/fastdds_large_images.xml]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dfanet_ros.dds_profile import profile_environment
from dfanet_tools.ros_process.dds import without_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--node-profile", default="", help="Fast DDS profile for the node only")
    ap.add_argument("--camera-profile", default="", help="Fast DDS profile for the camera")
    ap.add_argument("--size", default="360x480", help="frame HEIGHTxWIDTH")
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--watch", default="label",
                    help="outputs the viewer subscribes to, comma-separated; the first is scored")
    ap.add_argument("--domain", type=int, default=117)
    a = ap.parse_args()
    base = without_profile(dict(os.environ))
    base.update(ROS_DOMAIN_ID=str(a.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    os.environ.clear()
    os.environ.update(base)  # this process, the viewer: Fast DDS defaults
    node_env = dict(base, **(profile_environment(a.node_profile) if a.node_profile else {}))
    camera_env = dict(base, **(profile_environment(a.camera_profile) if a.camera_profile
                               else {}))
    from dfanet_tools.bench.camera import camera_output_topic, camera_topic, run_camera
    from dfanet_tools.ros_process import NodeProcess, node_command
    from dfanet_tools.stamps import header_stamp_ns

    # The node's environment is this check's subject, so it is given whole (not confined).
    node = NodeProcess(node_command({"device": "cpu", "cpu_threads": 1, "diagnostics_period": 0.0,
                                     "camera_topics": [camera_topic(0)]}), env=node_env)
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    viewer = rclpy.create_node("delivery_check_viewer")
    answers: dict[int, tuple[float, float]] = {}

    def on_answer(msg: Image) -> None:
        stamp = header_stamp_ns(msg)
        answers[stamp] = ((time.time_ns() - stamp) / 1e6, time.monotonic())

    watch = a.watch.split(",")
    viewer.create_subscription(Image, camera_output_topic(0, watch[0]), on_answer, 10)
    for other in watch[1:]:
        viewer.create_subscription(Image, camera_output_topic(0, other), lambda m: None, 10)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            rclpy.spin_once(viewer, timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        deadline = time.time() + 90
        while (viewer.count_publishers(camera_output_topic(0, watch[0])) == 0
               and time.time() < deadline):
            time.sleep(0.1)
        height, width = (int(n) for n in a.size.split("x"))
        error = None
        with tempfile.TemporaryDirectory(prefix="delivery-check-") as tmp:
            try:
                sent, _ = run_camera(Path(tmp), 1, (height, width), a.rate, 8.0,
                                     a.frames / a.rate, watch[0], depth=10, env=camera_env)
            except RuntimeError as e:  # e.g. no frame of the camera's ever answered
                sent, error = {0: []}, str(e).splitlines()[-1]
        time.sleep(5.0)  # answers still on their way
    finally:
        stop.set()
        spinner.join(2.0)
        node.stop()
    measured = {k: answers[k] for k in sent[0] if k in answers}
    latency = np.array([v[0] for v in measured.values()])
    times = sorted(v[1] for v in measured.values())
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    print(json.dumps({
        "size": a.size, "rate_hz": a.rate, "watch": a.watch, "node_profile": bool(a.node_profile),
        "camera_profile": bool(a.camera_profile), "sent": len(sent[0]), "answered": len(measured),
        "within_200ms": int((latency < 200).sum()), "after_1s": int((latency > 1000).sum()),
        "latency_p50_ms": round(float(np.median(latency)), 1) if latency.size else None,
        "latency_max_ms": round(float(latency.max()), 1) if latency.size else None,
        "answered_rate_hz": round(rate, 2), **({"error": error} if error else {})}))


if __name__ == "__main__":
    main()
