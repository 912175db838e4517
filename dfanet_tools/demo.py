"""``dfanet demo``: the main job on the shipped sample drive, end to end.

Makes a rosbag2 from the CamVid sample's test frames (one drive, Seq05VD, shipped in the
package), replays it through the real segmentation node over DDS with the default checkpoint
(one frame in flight, so none is dropped on a slow machine), scores the node's label outputs
against the ground truth and writes the report with an overlay of every frame.  Runs on a
machine without a ROS install or a GPU; uses the GPU when there is one (``--device auto``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DEFAULT_OUT = Path("demo_out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder: the bag, the report, overlays ({DEFAULT_OUT})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="model checkpoint (default: the shipped CamVid model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dfanet_model.checkpoint import CheckpointError, read_checkpoint
    from dfanet_model.resources import SAMPLE_CAMVID_DIR

    from .bag.evaluate import EvalError, EvalOptions, checkpoint_to_use, evaluate_and_report
    from .bag.make import make_bag
    from .report import SUMMARY_MD

    out: Path = args.out
    try:
        checkpoint = checkpoint_to_use(args.checkpoint)
        read_checkpoint(checkpoint)  # fail before making anything
    except (CheckpointError, EvalError) as e:
        print(f"dfanet demo: {e}", file=sys.stderr)
        return 1
    bag, report = out / "sample_drive", out / "report"
    # Both are this command's own output from an earlier run: replace them.
    for old in (bag, report):
        if old.exists():
            shutil.rmtree(old)
    made = make_bag(bag, SAMPLE_CAMVID_DIR, split="test", rate=1.0)
    print(f"bag: {made.path} ({made.frames} CamVid test frames, {made.camera_topic} + "
          f"{made.label_topic})")
    opts = EvalOptions(bag=made.path, checkpoint=checkpoint, mode="online",
                       as_fast_as_possible=True, out=report, device=args.device,
                       overlays=made.frames, progress=not args.no_progress)
    print(f"replaying it through the segmentation node (checkpoint {checkpoint}, "
          f"device {args.device}) ...", flush=True)
    status = evaluate_and_report(opts, "dfanet demo")
    if status == 0:
        print(f"report: {report / SUMMARY_MD}  overlays: {report / 'overlays'}")
    return status
