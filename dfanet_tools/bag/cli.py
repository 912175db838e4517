"""``dfanet bag make|eval``: write a rosbag2 drive from images, and score the node on a bag."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dfanet_model.args import parse_size

from .io import BAG_CAMERA_TOPIC, DEFAULT_LABEL_TOPIC, STORAGES, BagError


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bag_command", metavar="{make,eval}", required=True)

    make = sub.add_parser(
        "make", help="write a rosbag2 from an image folder or a dataset split",
        description="Write a rosbag2 (what `ros2 bag play` reads) from an image folder or a "
                    "SegNet-layout dataset split: camera images and, where labels exist, "
                    "mono8 ground-truth labels with the same stamps, in file-name order.")
    make.add_argument("out", type=Path, help="bag directory to create (must not exist)")
    make.add_argument("--from", dest="source", type=Path, required=True, metavar="DIR",
                      help="dataset root (CamVid: DIR/SPLIT + DIR/SPLITannot; Cityscapes: "
                           "DIR/leftImg8bit + DIR/gtFine) or a folder of images")
    make.add_argument("--split", default="test", help="split of a dataset root (default: test)")
    make.add_argument("--dataset", choices=("camvid", "cityscapes"), default=None,
                      help="layout of DIR (default: detected; a folder of images is neither)")
    make.add_argument("--rate", type=_positive, default=15.0, help="frames/s (default: 15)")
    make.add_argument("--storage", choices=STORAGES, default="mcap",
                      help="rosbag2 storage (default: mcap)")
    make.add_argument("--compressed", action="store_true",
                      help="sensor_msgs/CompressedImage with each file's JPEG/PNG bytes, on "
                           "TOPIC/compressed")
    make.add_argument("--topic", default=BAG_CAMERA_TOPIC,
                      help=f"camera topic ({BAG_CAMERA_TOPIC})")
    make.add_argument("--label-topic", default=DEFAULT_LABEL_TOPIC,
                      help=f"ground-truth topic ({DEFAULT_LABEL_TOPIC})")
    make.add_argument("--frame-id", default="camera", help="header frame_id (camera)")
    make.add_argument("--limit", type=int, default=None, metavar="N",
                      help="only the first N frames")

    ev = sub.add_parser(
        "eval", help="score the segmentation node (or the engine) on a bag",
        description="Replay a bag's camera topic through the segmentation node (online) or the "
                    "engine (offline), match the label outputs to the bag's ground truth by "
                    "header stamp, and report mIoU, per-class IoU, drops, latency and "
                    "throughput.")
    ev.add_argument("bag", type=Path, help="rosbag2 directory (or a bare .mcap / .db3 file)")
    ev.add_argument("--checkpoint", type=Path, default=None,
                    help="model checkpoint (default: the shipped one)")
    ev.add_argument("--mode", choices=("online", "offline"), default="online",
                    help="online: through the node over DDS (default); offline: the engine "
                         "in this process, no DDS and no node")
    pace = ev.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive, default=None, metavar="HZ",
                      help="send at HZ frames/s (not a multiplier as in `ros2 bag play`); "
                           "default: the recorded rate")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="send each frame once the previous one is answered (backpressure)")
    ev.add_argument("--camera-topic", default=None,
                    help=f"camera topic in the bag (default: {BAG_CAMERA_TOPIC}, else the "
                         "only image topic)")
    ev.add_argument("--label-topic", default=DEFAULT_LABEL_TOPIC,
                    help=f"mono8 ground-truth topic in the bag ({DEFAULT_LABEL_TOPIC})")
    ev.add_argument("--no-ground-truth", action="store_true",
                    help="the bag has no labels: report drops, latency and throughput only")
    ev.add_argument("--out", type=Path, default=None, metavar="REPORT_DIR",
                    help="report folder (default: BAG_eval_MODE beside the bag)")
    ev.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                    help="network input size (default: the checkpoint's training size)")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto)")
    ev.add_argument("--cpu-threads", type=int, default=0, metavar="N",
                    help="CPU threads of the engine, here (offline) or in the node (online); "
                         "0: the library default, all cores")
    ev.add_argument("--connect", action="store_true",
                    help="use a segmentation node that is already running instead of starting "
                         "one (it must subscribe to the camera topic; its own device and size "
                         "apply, the checkpoint only names the classes)")
    ev.add_argument("--output-topic", default=None,
                    help="the node's label topic (default: derived from the camera topic)")
    ev.add_argument("--timeout", type=_positive, default=10.0,
                    help="seconds to wait for each answer before counting a drop (10)")
    ev.add_argument("--startup-timeout", type=_positive, default=120.0,
                    help="seconds for the node to come up and answer a warm-up frame (120)")
    ev.add_argument("--warmup", type=int, default=2, help="untimed warm-up frames (2)")
    ev.add_argument("--overlays", type=int, default=4,
                    help="overlay snapshots written to the report (4)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_make(args: argparse.Namespace) -> int:
    from .make import make_bag

    try:
        made = make_bag(args.out, args.source, split=args.split, dataset=args.dataset,
                        rate=args.rate, storage=args.storage, compressed=args.compressed,
                        topic=args.topic, label_topic=args.label_topic, frame_id=args.frame_id,
                        limit=args.limit, progress=sys.stderr.isatty())
    except (BagError, FileNotFoundError, ValueError) as e:
        print(f"dfanet bag make: {e}", file=sys.stderr)
        return 1
    labels = (f", {made.labels} ground-truth labels on {made.label_topic}" if made.labels
              else ", no labels found")
    source = f"{made.dataset} {args.split}" if made.dataset else "image folder"
    print(f"wrote {made.path} ({made.storage}) from the {source}: {made.frames} frames on "
          f"{made.camera_topic} at {made.rate:g} Hz{labels}")
    return 0


def eval_options(args: argparse.Namespace):
    from .evaluate import EvalOptions

    out = args.out or args.bag.parent / f"{args.bag.name}_eval_{args.mode}"
    return EvalOptions(
        bag=args.bag, checkpoint=args.checkpoint, mode=args.mode, rate=args.rate,
        as_fast_as_possible=args.as_fast_as_possible, camera_topic=args.camera_topic,
        label_topic=None if args.no_ground_truth else args.label_topic, out=out,
        size=args.size, device=args.device, cpu_threads=max(0, args.cpu_threads),
        connect=args.connect,
        output_topic=args.output_topic, timeout=args.timeout, warmup=max(0, args.warmup),
        startup_timeout=args.startup_timeout,
        overlays=max(0, args.overlays), progress=not args.no_progress)


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_and_report

    opts = eval_options(args)
    status = evaluate_and_report(opts, "dfanet bag eval")
    if status == 0:
        print(f"report: {opts.out}")
    return status


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.bag_command == "make":
        return run_make(args)
    return run_eval(args)
