"""Online bag evaluation: camera frames over DDS into the segmentation node, its labels back.

``evaluate_online`` runs these steps, each a method of ``_OnlineRun``:

1. ``find_warmup_frame``   the first frame that decodes: the node answers no other
2. ``start``               the node as a subprocess (unless connecting to a running one) and
                           this process's DDS side
3. ``wait_until_matched``  the node subscribes to the camera topic and publishes labels
4. ``warm_up``             re-stamped copies of the warm-up frame until the node answers each
5. ``replay``              every frame in bag order, at the chosen pace
6. ``drain``               the answers still in flight, and their scoring
7. ``result``              the numbers, with the device and timing the node reported

The answers arrive on the DDS client's thread; ``_Answers`` is all the state the two threads
share.
"""
from __future__ import annotations

import itertools
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from dfanet_ros.topics import output_topic

from ..ros_process import NodeProcess
from ..stamps import header_stamp_ns
from .frames import (
    CameraFrame,
    camera_frames,
    decode_camera,
    label_array,
    progress_bar,
    restamp,
    stamp_str,
)
from .io import BagReader, normalize_topic
from .plan import EvalError, EvalOptions, Plan
from .replayer import Replayer, node_command_for
from .result import BagEvalResult, NodeLatency, Snapshot, overlay_snapshot, pick_snapshots
from .scoring import FrameLog, FrameRecord, Scorer

log = logging.getLogger("dfanet.bag_eval")

LATENCY_DEFINITION = ("from publishing the camera message to receiving the node's label "
                      "message, both in the evaluating process")


def evaluate_online(opts: EvalOptions, reader: BagReader, plan: Plan
                    ) -> tuple[BagEvalResult, list[Snapshot]]:
    """Replay the camera frames through the node over DDS and score its answers."""
    import torch

    # This process only scores labels (a few ms a frame on one thread); more threads contend
    # with the node for the CPU and, on a busy machine, made scoring 10x slower, not faster.
    torch.set_num_threads(1)
    run = _OnlineRun(opts, plan, reader.topics[plan.camera_topic].msgtype)
    frames = camera_frames(reader, plan.camera_topic)
    leading = run.find_warmup_frame(frames)
    with ExitStack() as stack:
        run.start(stack)
        # Start-up: both ends matched, then warm-up frames (re-stamped, never scored or timed)
        # until the node answers; resending covers discovery that completed on one side first.
        deadline = time.monotonic() + opts.startup_timeout
        run.wait_until_matched(deadline)
        run.warm_up(leading[-1], deadline)
        with progress_bar(len(plan.stamps), opts.progress, "online") as bar:
            last = run.replay(itertools.chain(leading, frames), leading[0], bar)
            run.drain(last)
        time.sleep(0.1)  # the info message follows its label
        # Stop spinning before reading what the callbacks wrote.
        stack.pop_all().close()
    return run.result()


class _Answers:
    """The node's answers: written by the DDS callbacks, waited for by the replay loop.

    ``cond`` guards the records; an answer is scored outside it, so that the next frame may
    leave while the previous one is scored.
    """

    def __init__(self, frame_log: FrameLog, snapshot_stamps: dict[int, int]) -> None:
        self.cond = threading.Condition()
        self.frame_log = frame_log
        self.snapshot_stamps = snapshot_stamps
        self.records: dict[int, FrameRecord] = {}  # the frames sent, by stamp
        self.warmup: set[int] = set()              # answered stamps of no frame sent
        self.labels: dict[int, np.ndarray] = {}    # predictions for the snapshot frames
        self.node_info: dict[int, tuple[float, float, str]] = {}  # total ms, inference ms, device
        self.scoring = 0                           # answers being scored right now

    def expect(self, stamp: int) -> FrameRecord:
        """The record of a frame about to be sent; its send time is taken now."""
        record = FrameRecord(stamp)
        with self.cond:
            self.records[stamp] = record
            record.sent = time.perf_counter()
        self.frame_log.records.append(record)
        return record

    def on_label(self, msg: Any, received: float) -> None:
        stamp = header_stamp_ns(msg)
        with self.cond:
            record = self.records.get(stamp)
            if record is None:
                self.warmup.add(stamp)
                self.cond.notify_all()
                return
            if record.received is not None:  # a repeated answer: the first one counts
                return
            # Answered: the next frame may leave while this one is scored.
            record.received = received
            self.scoring += 1
            self.cond.notify_all()
        try:
            label = label_array(msg)
        except ValueError as e:
            self.frame_log.bad_answers.append(f"stamp {stamp_str(stamp)}: {e}")
        else:
            if self.frame_log.scorer is not None:
                record.scored = self.frame_log.scorer.add(stamp, label)
            if stamp in self.snapshot_stamps:
                self.labels[stamp] = label.copy()
        finally:
            with self.cond:
                self.scoring -= 1
                self.cond.notify_all()

    def on_info(self, msg: Any) -> None:
        self.node_info[header_stamp_ns(msg)] = (msg.total_ms, msg.inference_ms, msg.device)

    def wait_warmup(self, stamp: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: stamp in self.warmup, timeout=timeout)

    def wait_answer(self, record: FrameRecord, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: record.received is not None, timeout=timeout)

    def drain(self, last: FrameRecord | None, timeout: float) -> None:
        """Wait for ``last`` to be answered, then for every answer to be scored."""
        with self.cond:
            if last is not None:
                self.cond.wait_for(lambda: last.received is not None, timeout=timeout)
            self.cond.wait_for(lambda: self.scoring == 0, timeout=60.0)


class _OnlineRun:
    """One online evaluation: the node, this process's DDS side, and what came back."""

    def __init__(self, opts: EvalOptions, plan: Plan, camera_type: str) -> None:
        self.opts, self.plan, self.camera_type = opts, plan, camera_type
        self.label_topic = normalize_topic(
            opts.output_topic or output_topic(plan.camera_topic, "label"))
        self.info_topic = self.label_topic.rsplit("/", 1)[0] + "/info"
        self.snapshot_stamps = pick_snapshots(plan.stamps, opts.overlays)
        scorer = Scorer(plan.card, plan.ground_truth) if plan.label_topic else None
        self.frame_log = FrameLog(scorer=scorer)
        self.answers = _Answers(self.frame_log, self.snapshot_stamps)
        self.images: dict[int, tuple[np.ndarray, str]] = {}  # the snapshot frames, decoded
        self.known_bad: set[int] = set()  # stamps found bad before the warm-up frame
        self.node: NodeProcess | None = None
        self.node_log = Path()
        self.replayer: Replayer | None = None

    def find_warmup_frame(self, frames: Iterator[CameraFrame]) -> list[CameraFrame]:
        """The frames up to the first that decodes, which is the last of them."""
        # The node answers no frame it cannot decode.  Frames before it are still sent in
        # order by ``replay``, and counted as bad, as the offline mode counts them.
        leading: list[CameraFrame] = []
        for frame in frames:
            leading.append(frame)
            if self._decode(frame) is not None:
                self.known_bad = {f.stamp for f in leading[:-1]}
                return leading
        bad = self.frame_log.bad_frames
        raise EvalError(f"no frame on {self.plan.camera_topic} can be segmented: all "
                        f"{len(leading)} are bad (first: {bad[0] if bad else 'none'})")

    def start(self, stack: ExitStack) -> None:
        """The node as a subprocess (unless connecting) and the replayer, closed by ``stack``."""
        if self.opts.out is not None:
            self.node_log = Path(self.opts.out) / "node.log"
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="dfanet-bag-eval-"))
            self.node_log = Path(tmp) / "node.log"
        if not self.opts.connect:
            self.node = stack.enter_context(NodeProcess(node_command_for(self.opts, self.plan),
                                                        log_path=self.node_log))
        self.replayer = Replayer(self.plan.camera_topic, self.camera_type, self.label_topic,
                                 self.info_topic, self.answers.on_label, self.answers.on_info)
        stack.callback(self.replayer.close)

    def _started(self) -> Replayer:
        """The replayer ``start`` made; every step that sends runs after it."""
        if self.replayer is None:
            raise RuntimeError("the bag replayer is used before start()")
        return self.replayer

    def check_node(self) -> None:
        """EvalError with its log when the node this evaluation started has exited."""
        if self.node is not None and not self.node.alive():
            raise EvalError(f"the segmentation node exited with code "
                            f"{self.node.proc.returncode} (log {self.node_log}):\n"
                            f"{self.node.tail()}")

    def wait_until_matched(self, deadline: float) -> None:
        while not self._started().ready():
            self.check_node()
            if time.monotonic() > deadline:
                node = self.node
                raise EvalError(
                    f"no segmentation node within {self.opts.startup_timeout:g} s: nobody "
                    f"subscribes to {self.plan.camera_topic} and publishes {self.label_topic}"
                    + (f" (node log {self.node_log}:\n{node.tail()})" if node is not None
                       else ""))
            time.sleep(0.1)
        self._started().subscribe()

    def warm_up(self, frame: CameraFrame, deadline: float) -> None:
        """Send re-stamped copies of ``frame``, each until the node answers it."""
        taken = set(self.plan.stamps) | set(self.plan.ground_truth)
        warm_stamps = [s for s in range(frame.stamp - 1000, frame.stamp) if s not in taken]
        for k in range(max(1, self.opts.warmup)):
            stamp = warm_stamps[-1 - k]
            raw = restamp(frame, stamp)
            while True:
                self._started().publish(raw)
                if self.answers.wait_warmup(stamp, timeout=5.0):
                    break
                self.check_node()
                if time.monotonic() > deadline:
                    raise EvalError(f"the segmentation node did not answer a warm-up frame on "
                                    f"{self.label_topic} within {self.opts.startup_timeout:g} s")

    def replay(self, frames: Iterable[CameraFrame], first: CameraFrame, bar: Any
               ) -> FrameRecord | None:
        """Send every frame in order at the chosen pace; the record of the last good one."""
        opts = self.opts
        last_good = None
        t_start = time.perf_counter()
        for i, frame in enumerate(frames):
            if not opts.as_fast_as_possible:
                offset = i / opts.rate if opts.rate else (frame.bag_time - first.bag_time) / 1e9
                delay = t_start + offset - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            record = self.answers.expect(frame.stamp)
            self._started().publish(frame.raw)
            # Checked after sending (the node works on it meanwhile): a frame the node
            # refuses is never answered, so it is counted, not waited for.
            image = None if frame.stamp in self.known_bad else self._decode(frame)
            if image is not None:
                last_good = record
                if frame.stamp in self.snapshot_stamps:
                    self.images[frame.stamp] = image
                if opts.as_fast_as_possible and not self.answers.wait_answer(record,
                                                                             opts.timeout):
                    log.warning("no answer for the frame at stamp %s within %g s; counted as "
                                "dropped", stamp_str(frame.stamp), opts.timeout)
            self.check_node()
            bar.update()
        return last_good

    def drain(self, last: FrameRecord | None) -> None:
        # The node answers in order: once the last frame is answered (or the time is up),
        # anything still unanswered was dropped.
        self.answers.drain(last, self.opts.timeout)

    def result(self) -> tuple[BagEvalResult, list[Snapshot]]:
        """The numbers of the run, with the device and timing the node reported."""
        opts, plan, answers = self.opts, self.plan, self.answers
        devices = {info[2] for info in answers.node_info.values()}
        device = ", ".join(sorted(devices)) if devices else f"{opts.device} (not reported)"
        timings = [answers.node_info[r.stamp] for r in self.frame_log.records
                   if r.stamp in answers.node_info]
        snapshots = [overlay_snapshot(self.snapshot_stamps[s], *self.images[s], answers.labels[s],
                                      plan.card.class_colors, plan.ground_truth.get(s))
                     for s in sorted(answers.labels) if s in self.images]
        result = BagEvalResult.build(
            opts, plan, self.frame_log, pacing=_pacing(opts), device=device,
            latency_definition=LATENCY_DEFINITION,
            node_latency=NodeLatency.of([t[0] for t in timings], [t[1] for t in timings]))
        return result, snapshots

    def _decode(self, frame: CameraFrame) -> tuple[np.ndarray, str] | None:
        """The frame's pixels and encoding, or None (counted as bad) when the node would
        refuse it."""
        try:
            return decode_camera(frame, self.camera_type)
        except ValueError as e:  # conversions.BadImage included
            self.frame_log.bad_frames.append(f"stamp {stamp_str(frame.stamp)}: {e}")
            return None


def _pacing(opts: EvalOptions) -> str:
    if opts.as_fast_as_possible:
        return "as fast as possible, one frame in flight"
    if opts.rate:
        return f"{opts.rate:g} frames/s"
    return "the recorded rate"
