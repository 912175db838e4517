"""Offline bag evaluation: the engine in this process, no DDS and no node; deterministic."""
from __future__ import annotations

import time

from .frames import camera_frames, decode_camera, progress_bar, stamp_str
from .io import BagReader
from .plan import EvalError, EvalOptions, Plan
from .result import BagEvalResult, Snapshot, overlay_snapshot, pick_snapshots
from .scoring import FrameLog, FrameRecord, Scorer

LATENCY_DEFINITION = "the wall time of engine.run per frame (message decoding excluded)"


def evaluate_offline(opts: EvalOptions, reader: BagReader, plan: Plan
                     ) -> tuple[BagEvalResult, list[Snapshot]]:
    """Every camera frame in order through ``SegmentationEngine.run``, each scored."""
    from dfanet_ros.engine import DeviceError, SegmentationEngine

    if opts.cpu_threads:
        import torch
        torch.set_num_threads(opts.cpu_threads)
    try:
        engine = SegmentationEngine(plan.checkpoint, device=opts.device, model_size=opts.size)
    except DeviceError as e:
        raise EvalError(str(e)) from None
    msgtype = reader.topics[plan.camera_topic].msgtype
    scorer = Scorer(plan.card, plan.ground_truth) if plan.label_topic else None
    frame_log = FrameLog(scorer=scorer)
    snapshot_stamps = pick_snapshots(plan.stamps, opts.overlays)
    snapshots = []
    outputs = frozenset({"label"})
    warmed = False
    try:
        with progress_bar(len(plan.stamps), opts.progress, "offline") as bar:
            for frame in camera_frames(reader, plan.camera_topic):
                record = FrameRecord(frame.stamp)
                frame_log.records.append(record)
                bar.update()
                try:
                    image, encoding = decode_camera(frame, msgtype)
                    if not warmed:  # untimed, unscored runs on the first frame
                        for _ in range(opts.warmup):
                            engine.run(image, encoding=encoding, outputs=outputs)
                        warmed = True
                    record.sent = time.perf_counter()
                    output = engine.run(image, encoding=encoding, outputs=outputs)
                    record.received = time.perf_counter()
                except ValueError as e:  # conversions.BadImage included: the node drops these
                    frame_log.bad_frames.append(f"stamp {stamp_str(frame.stamp)}: {e}")
                    continue
                label = output.label
                assert label is not None  # "label" is among the outputs asked for
                if scorer is not None:
                    record.scored = scorer.add(frame.stamp, label)
                if frame.stamp in snapshot_stamps:
                    snapshots.append(overlay_snapshot(
                        snapshot_stamps[frame.stamp], image, encoding, label,
                        plan.card.class_colors, plan.ground_truth.get(frame.stamp)))
        device = str(engine.device)
    finally:
        engine.release()
    result = BagEvalResult.build(opts, plan, frame_log, pacing="every frame in order",
                                 device=device, latency_definition=LATENCY_DEFINITION)
    return result, snapshots
