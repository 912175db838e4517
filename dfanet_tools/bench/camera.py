"""The camera of ``dfanet bench node`` and ``dfanet bench soak``: a process of its own that
publishes rgb8 frames, as a camera driver would, and reports the stamps it sent.

``python -m dfanet_tools.bench.camera --cameras N --height H --width W --rate HZ --warmup S
--duration S --out FILE`` publishes one random frame per camera on ``camera_topic(i)`` until
the node has answered each camera once, then for ``--warmup`` seconds and then for the
measured ``--duration``, stamping each with the wall clock as it publishes, and writes the
measured stamps to ``FILE`` (JSON).  Rate 0 means flat out: at most two frames per camera in
flight (the next leaves when the node's answer on ``--answer-output`` arrives), so the
answered rate is the node's sustained throughput without a flooding publisher taking the CPU
from it.  ``run_camera`` starts the process and reads
its report.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dfanet_ros.topics import output_topic

from ..ros_process import spin_in_background
from ..stamps import header_stamp_ns, split_stamp

MODULE = "dfanet_tools.bench.camera"  # run as python -m MODULE


def camera_topic(index: int) -> str:
    return f"/bench/cam{index}/image"


def camera_output_topic(index: int, output: str) -> str:
    """The node's ``output`` topic for camera ``index``."""
    return output_topic(camera_topic(index), output)


def run_camera(workdir: Path, cameras: int, size: tuple[int, int], rate: float,
               warmup: float, duration: float, answer_output: str, depth: int = 1,
               env: dict[str, str] | None = None) -> tuple[dict[int, list[int]], float]:
    """Run the camera process once in ``env`` (default: this process's DDS environment);
    the stamps it sent in the measured period per camera, and that period's length in
    seconds."""
    out = workdir / "sent.json"
    command = [sys.executable, "-m", MODULE,
               "--cameras", str(cameras), "--height", str(size[0]), "--width", str(size[1]),
               "--rate", str(rate), "--warmup", str(warmup), "--duration", str(duration),
               "--out", str(out), "--answer-output", answer_output, "--depth", str(depth)]
    done = subprocess.run(command, env=dict(os.environ if env is None else env),
                          capture_output=True, text=True,
                          timeout=warmup + duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"camera publisher failed: {done.stderr.strip()[-2000:]}")
    report = json.loads(out.read_text())
    return {int(k): v for k, v in report["sent"].items()}, report["measured_s"]


def main(argv: list[str] | None = None) -> int:
    """The camera process: publish frames on ``--cameras`` topics, report the stamps sent."""
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description="the camera process of dfanet bench node/soak")
    p.add_argument("--cameras", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="per camera; 0: flat out")
    p.add_argument("--warmup", type=float, required=True, help="seconds before measuring")
    p.add_argument("--duration", type=float, required=True, help="measured seconds")
    p.add_argument("--answer-output", default="label",
                   help="flat out: the output whose arrival frees a frame's place")
    p.add_argument("--depth", type=int, default=1, help="the publishers' queue depth (1)")
    p.add_argument("--match-timeout", type=float, default=60.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from dfanet_ros.conversions import array_to_image

    rclpy.init()
    node = rclpy.create_node("dfanet_bench_camera")
    try:
        # Reliable (depth 1 unless told), as most camera drivers: a best-effort subscriber
        # still matches.
        qos = QoSProfile(depth=args.depth, reliability=ReliabilityPolicy.RELIABLE)
        pubs = [node.create_publisher(Image, camera_topic(i), qos) for i in range(args.cameras)]
        frame = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3),
                                                  dtype=np.uint8)
        messages = [array_to_image(frame, "rgb8", Header(frame_id=f"cam{i}"))
                    for i in range(args.cameras)]
        deadline = time.monotonic() + args.match_timeout
        while any(pub.get_subscription_count() == 0 for pub in pubs):
            if time.monotonic() > deadline:
                print(f"error: nobody subscribed to {camera_topic(0)} within "
                      f"{args.match_timeout:g} s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        answers = _FlatOut(node, args.cameras, args.answer_output)
        deadline = time.monotonic() + args.match_timeout
        while not answers.matched():
            if time.monotonic() > deadline:
                print(f"error: nobody publishes {camera_output_topic(0, args.answer_output)} "
                      f"within {args.match_timeout:g} s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        # The node's first frame of a size builds its plan (with onnxruntime, a session too):
        # seconds on a loaded machine, longer than a fixed warm-up.  Each camera sends until
        # it is answered once; only then does the timed warm-up start.
        if not answers.prime(pubs, messages, args.match_timeout):
            print(f"error: no answer on {camera_output_topic(0, args.answer_output)} within "
                  f"{args.match_timeout:g} s of sending", file=sys.stderr)
            return 1
        window = answers if args.rate == 0 else None
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
                ready: Sequence[int] = range(args.cameras)
            else:
                assert window is not None  # no period only flat out (rate 0), which has one
                ready = window.wait_for_room(min(0.05, end - now))
            measuring = time.perf_counter() >= measure_from
            for i in ready:
                msg = messages[i]
                stamp = time.time_ns()
                msg.header.stamp.sec, msg.header.stamp.nanosec = split_stamp(stamp)
                if window is not None:
                    window.sending(i, stamp)
                pubs[i].publish(msg)
                if measuring:
                    sent[i].append(stamp)
            tick += 1
        measured_s = time.perf_counter() - measure_from
        answers.close()
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
        self.answered = [0] * cameras
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = [
            node.create_subscription(Image, camera_output_topic(i, output),
                                     lambda msg, i=i: self._answered(i, msg), qos)
            for i in range(cameras)]
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self.thread = spin_in_background(self.executor, "bench camera")

    def _answered(self, camera: int, msg: Any) -> None:
        with self.cond:
            self.in_flight[camera].pop(header_stamp_ns(msg), None)
            self.answered[camera] += 1
            self.cond.notify_all()

    def matched(self) -> bool:
        return all(self.node.count_publishers(camera_output_topic(i, self.output)) > 0
                   for i in range(self.cameras))

    def prime(self, pubs: list[Any], messages: list[Any], timeout: float) -> bool:
        """Send each camera's frame (every 0.5 s) until every camera has one answer; False
        after ``timeout`` seconds without."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pub, msg, answered in zip(pubs, messages, self.answered, strict=True):
                if not answered:
                    msg.header.stamp.sec, msg.header.stamp.nanosec = split_stamp(
                        time.time_ns())
                    pub.publish(msg)
            with self.cond:
                if self.cond.wait_for(lambda: all(self.answered), timeout=0.5):
                    return True
        return False

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
        """Stop spinning and wait for the thread: a thread still inside rclpy when the
        process exits aborts it ("terminate called without an active exception")."""
        self.executor.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=5.0)


if __name__ == "__main__":
    sys.exit(main())
