"""``dfanet train``: DFANet training as in the paper's section 4, on one CPU, one GPU or many.

  config.py    TrainConfig: every setting, checked; YAML files and ``--set`` fill it
  job.py       what a process trains with (data, model, loss, optimiser, poly schedule), one
               step, and the resumable state
  run_dir.py   what a run leaves behind, and the resume from it
  loop.py      the loop: start or resume, log, evaluate, save, stop, finish

Everything a run produces goes into its run directory:
  config.yaml        the resolved configuration
  log.jsonl          one JSON object per line: periodic train loss, every evaluation, events
  last.pt            training state at the last save (resume from it with --resume)
  snapshot_*.pt      periodic copies of last.pt, the newest ``keep_snapshots`` kept
  best.pt            training state of the best validation mIoU
  best.safetensors   the deployable model of best.pt (what the node loads), with metrics
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..data import DataError
from ..device import DeviceError
from .config import WEIGHT_SCHEMES, ConfigError, TrainConfig, load_config
from .job import Job, PolyLR, Progress, build_job, criterion, train_one_step
from .loop import RunOptions, benchmark, main, train
from .run_dir import RunDir

__all__ = [
    "WEIGHT_SCHEMES", "ConfigError", "Job", "PolyLR", "Progress", "RunDir", "RunOptions",
    "TrainConfig", "add_arguments", "benchmark", "build_job", "criterion", "load_config",
    "main", "run", "train", "train_one_step",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of settings (see config/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one setting (YAML value); repeat")
    parser.add_argument("--run-dir", type=Path,
                        help="where checkpoints and the log go (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last.pt")
    parser.add_argument("--time-budget", type=float, default=0, metavar="MINUTES",
                        help="stop cleanly (saving last.pt) before this many minutes pass")
    parser.add_argument("--stop-after", type=int, default=0, metavar="N",
                        help="stop cleanly after iteration N (continue later with --resume)")
    parser.add_argument("--benchmark-steps", type=int, default=0, metavar="N",
                        help="only time N training steps (after 3 warm-up) and print images/s")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    """``dfanet train``: 0, 128 + signal after a stop, 1 when the run fails, 2 on bad settings."""
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"dfanet train: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = args.run_dir or Path("runs") / (args.config.stem if args.config else "train")
    try:
        return main(cfg, run_dir, RunOptions(args.resume, args.time_budget * 60,
                                             args.stop_after, args.benchmark_steps))
    except (ConfigError, DataError, CheckpointError, DeviceError, FloatingPointError) as e:
        print(f"dfanet train: {e}", file=sys.stderr)
        return 1
