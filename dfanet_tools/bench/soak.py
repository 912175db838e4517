"""``dfanet bench soak``: one node kept fed for minutes at a multiple of the rate it sustains.

After a flat-out phase that measures that rate (unless it is given), one camera publishes at
twice it while a thread samples the node's resident memory (/proc/PID/status; GPU memory
through nvidia-smi on CUDA).  The report (``soak_report.py``) gives latency per window (first
minute against last), the memory slope, and where every frame went, from the node's own
/diagnostics counters taken before and after the feed and the collector's answers.  The
node, the camera and the collector are those of ``dfanet bench node``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dfanet_model.args import MODEL_SIZE_HELP, describe_model_size, parse_model_size, parse_size
from dfanet_model.metrics import json_safe

from ..ros_process import NodeProcess
from .camera import camera_topic, run_camera
from .collector import Collector
from .machine import write_json
from .node import (
    NodeBenchResult,
    NodeSettings,
    add_node_arguments,
    bench_node_command,
    configure_dds,
    node_device,
    node_settings,
    ros_missing,
    score,
    wait_for_node,
)
from .soak_report import MemorySample, format_soak, soak_report

DESCRIPTION = ("Start the segmentation node, measure the rate it sustains flat out (or take "
               "--rate), then feed one camera at --factor times that rate for --duration "
               "seconds, sampling the node's memory: memory slope, latency per window (first "
               "against last), and sent = answered + dropped from the node's own counters.  "
               "Prints figures, asserts none.")


@dataclass
class SoakConfig:
    """One soak of ``dfanet bench soak``."""

    node: NodeSettings
    size: tuple[int, int] = (720, 960)  # camera frames, rgb8
    rate: float | None = None  # the node's sustainable rate in Hz; None: measured flat out
    factor: float = 2.0  # feed this multiple of the sustainable rate
    duration: float = 600.0  # fed seconds
    measure: float = 10.0  # seconds flat out to measure the sustainable rate
    warmup: float = 3.0  # seconds flat out before measuring
    window: float = 60.0  # seconds per latency and memory window
    sample_period: float = 2.0  # seconds between memory samples
    diagnostics_period: float = 1.0  # the node's /diagnostics period
    drain: float = 2.0  # seconds to wait for the last answers


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


class MemorySampler:
    """Samples a process's resident (and, on CUDA, GPU) memory every ``period`` seconds in a
    thread; ``progress`` is called with each sample."""

    def __init__(self, pid: int, period: float, gpu: bool,
                 progress: Callable[[MemorySample], None] | None = None) -> None:
        self.pid, self.period, self.gpu, self.progress = pid, period, gpu, progress
        self.samples: list[MemorySample] = []
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


def soak(config: SoakConfig) -> dict[str, Any]:
    """Warm the node up and measure its sustainable rate flat out (unless ``config.rate``),
    then feed one camera at ``config.factor`` times that rate for ``config.duration`` seconds
    while sampling the node's memory; the report of ``soak_report`` plus the set-up, with
    NaN as None."""
    settings, outputs, topic, size = config.node, ["label"], camera_topic(0), config.size
    configure_dds(settings.domain_id)
    command = bench_node_command(settings, 1, outputs, config.diagnostics_period)
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-soak-") as tmp:
        log_path = settings.node_log or Path(tmp) / "node.log"
        with NodeProcess(command, log_path=log_path) as node:
            collector = Collector(1, outputs, diagnostics=True)
            try:
                wait_for_node(node, collector, 1, settings.startup_timeout)
                measure = 0.0 if config.rate else config.measure
                sent, measured_s = run_camera(Path(tmp), 1, size, 0.0, config.warmup, measure,
                                              outputs[0])
                time.sleep(config.drain)
                device = node_device(log_path) or settings.device
                flat_out: NodeBenchResult | None = None
                if config.rate:
                    sustainable = config.rate
                else:
                    flat_out = score(sent, measured_s, collector, size, 0.0, 1, device)
                    sustainable = flat_out.answered_rate_hz
                if not sustainable > 0:
                    raise RuntimeError(f"the node answered no frame flat out; its log:\n"
                                       f"{node.tail()}")
                feed = config.factor * sustainable
                print(f"sustainable rate {sustainable:.1f} Hz"
                      + ("" if flat_out is None else f" (flat out for {measured_s:.1f} s, "
                         f"latency p50 {flat_out.latency_p50_ms:.1f} ms)")
                      + f"; feeding {feed:.1f} Hz for {config.duration:g} s", flush=True)
                mark = time.time_ns()
                timeout = 5 * config.diagnostics_period + 5
                before = collector.diagnostics_after(topic, mark, timeout)
                device = before.get("device") or device
                last_print = [0]

                def progress(sample: MemorySample) -> None:
                    if sample[0] - last_print[0] >= config.window * 1e9:
                        last_print[0] = sample[0]
                        gpu = "" if sample[2] is None else f", GPU {sample[2]:.0f} MiB"
                        print(f"  {(sample[0] - mark) / 1e9:6.0f} s: RSS {sample[1]:.1f} "
                              f"MiB{gpu}", flush=True)

                sampler = MemorySampler(node.proc.pid, config.sample_period,
                                        device.startswith("cuda"), progress)
                try:
                    sent, measured_s = run_camera(Path(tmp), 1, size, feed, 0.0,
                                                  config.duration, outputs[0])
                finally:
                    sampler.stop()
                time.sleep(config.drain)
                if not node.alive():
                    raise RuntimeError(f"the segmentation node exited; its log:\n"
                                       f"{node.tail()}")
                after = collector.diagnostics_after(topic, time.time_ns(), timeout)
                report = soak_report(sent[0], measured_s, collector, sampler.samples, before,
                                     after, config.window)
            finally:
                collector.close()
    report.update({"height": size[0], "width": size[1], "device": device,
                   "sustainable_rate_hz": sustainable, "rate_measured": not config.rate,
                   "factor": config.factor,
                   "flat_out": asdict(flat_out) if flat_out is not None else None})
    # The printed table shows None as "n/a"; the JSON file needs it too.
    return json_safe(report)


def add_arguments(k: argparse.ArgumentParser) -> None:
    k.add_argument("--size", type=parse_size, default=(720, 960),
                   help="camera frame HEIGHTxWIDTH (default 720x960, rgb8)")
    k.add_argument("--model-size", type=parse_model_size, default=None,
                   help=MODEL_SIZE_HELP)
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
    add_node_arguments(k, threads=1)
    k.add_argument("--json", type=Path, default=None,
                   help="also write everything here (windows, samples, every frame)")


def main(args: argparse.Namespace) -> int:
    """``dfanet bench soak``: the configuration from the command line, run, print, write."""
    problem = ros_missing("soak")
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
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
    try:
        settings = node_settings(args)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = SoakConfig(settings, args.size, args.rate, args.factor, args.duration,
                        args.measure, args.warmup, args.window, args.sample_period,
                        args.diagnostics_period, args.drain)
    size, model_size = config.size, settings.model_size
    print(f"dfanet bench soak: {settings.checkpoint.name}, device {settings.device}"
          f"{' fp16' if settings.fp16 else ''}, {size[0]}x{size[1]} frames, network at "
          f"{describe_model_size(model_size)}, {settings.threads} thread(s); "
          f"ROS_DOMAIN_ID {settings.domain_id}", flush=True)
    try:
        report = soak(config)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report["checkpoint"] = settings.checkpoint.name
    print()
    print(format_soak(report))
    if args.json:
        write_json(args.json, report["device"], soak=report)
    return 0
