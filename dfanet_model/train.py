"""``dfanet train``: DFANet training as in the paper's section 4, on one CPU, one GPU or many.

Shape of torchvision's segmentation reference: ``get_dataset``, ``criterion``,
``train_one_step``, ``evaluate`` (in evaluate.py) and ``train``, whose loop fits one screen;
``Job`` holds what a process trains with, ``RunDir`` what a run leaves behind.  The decoded
training split lives on the training device and each step gathers, flips, scales, crops and
normalises its batch there (augment.py): no loader process stands between data and GPU.

Everything a run produces goes into its run directory:
  config.yaml        the resolved configuration
  log.jsonl          one JSON object per line: periodic train loss, every evaluation, events
  last.pt            training state at the last save (resume from it with --resume)
  snapshot_*.pt      periodic copies of last.pt, the newest ``keep_snapshots`` kept
  best.pt            training state of the best validation mIoU
  best.safetensors   the deployable model of best.pt (what the node loads), with metrics
SIGINT/SIGTERM save last.pt before exiting (130/143); ``--time-budget`` stops cleanly in time.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from . import distributed as dist_utils
from .augment import BatchAugment
from .checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    ModelCard,
    read_checkpoint,
    save_model,
    save_training_state,
    stamp_provenance,
)
from .classes import CLASS_TABLES, ClassTable
from .data import (
    PLACEMENTS,
    DataError,
    SegmentationSplit,
    inverse_log_frequency_weights,
    load_split,
    median_frequency_weights,
    sample_indices,
)
from .evaluate import (
    EvalResult,
    autocast,
    effective_precision,
    evaluate,
    format_scores,
    split_batches,
)
from .losses import OhemCrossEntropy
from .metrics import json_safe
from .network import VARIANTS, DFANet, build_dfanet

# Class-weighting schemes computed from the training labels.
WEIGHT_SCHEMES = {"median_frequency": median_frequency_weights,
                  "inverse_log_frequency": inverse_log_frequency_weights}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key or file."""


@dataclass
class TrainConfig:
    """Every setting of a run; YAML files and ``--set key=value`` fill it."""

    dataset: str = "camvid"
    data_root: str = "data/camvid"
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"        # scored with the best weights at the end
    variant: str = "A"
    crop_size: list[int] = field(default_factory=lambda: [360, 480])
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.75])
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    batch_size: int = 16                   # per process
    iterations: int = 10000
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    warmup_iterations: int = 0
    warmup_factor: float = 0.1             # the learning rate starts at lr * warmup_factor
    class_weights: Any = None              # None, a list (one per class), or a scheme:
    #                                        "median_frequency", "inverse_log_frequency"
    loss: str = "cross_entropy"            # cross_entropy, or ohem (hard pixels only)
    ohem_threshold: float = 0.7            # ohem: pixels whose true class is below this prob.
    ohem_min_kept: float = 0.0625          # ohem: at least this fraction of labelled pixels
    color_jitter: float = 0.0              # brightness/contrast/saturation factors 1 +- this
    precision: str = "fp32"                # autocast: bf16 (CUDA, CPU), fp16 (CUDA) or fp32
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = True            # across GPUs of a torchrun job
    eval_every: int = 500                  # iterations; 0: only at the end
    eval_batch_size: int = 8
    eval_size: list[int] | None = None     # inference size for evaluation (None: frame size)
    log_every: int = 20
    save_every: int = 500
    keep_snapshots: int = 3
    seed: int = 0
    data_placement: str = "auto"           # auto, device, host or lazy
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, text: str) -> None:
            if not ok:
                problems.append(text)

        need(self.dataset in CLASS_TABLES,
             f"dataset {self.dataset!r} is not one of {', '.join(CLASS_TABLES)}")
        need(str(self.variant).upper() in VARIANTS,
             f"variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        for name in ("crop_size", "eval_size"):
            v = getattr(self, name)
            need((v is None and name == "eval_size") or _ints(v, 2, 1),
                 f"{name} must be [height, width] of positive integers, got {v!r}")
        need(_nums(self.scale_range, 2) and 0 < self.scale_range[0] <= self.scale_range[1],
             f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range!r}")
        need(_nums(self.mean, 3) and _nums(self.std, 3) and min(self.std) > 0,
             "mean and std must be 3 numbers each, std positive")
        for name in ("batch_size", "iterations", "eval_batch_size", "log_every", "save_every"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                 f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("eval_every", "warmup_iterations", "keep_snapshots", "seed"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                 f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "momentum", "weight_decay", "poly_power", "warmup_factor"):
            need(isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0,
                 f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        need(self.precision in ("bf16", "fp16", "fp32"),
             f"precision must be bf16, fp16 or fp32, got {self.precision!r}")
        need(self.data_placement in PLACEMENTS,
             f"data_placement must be one of {', '.join(PLACEMENTS)}, "
             f"got {self.data_placement!r}")
        cw = self.class_weights
        need(cw is None or cw in WEIGHT_SCHEMES
             or (_nums(cw, CLASS_TABLES.get(self.dataset, CLASS_TABLES["camvid"]).num_classes)
                 and min(cw) >= 0),
             f"class_weights must be null, one of {', '.join(WEIGHT_SCHEMES)} or one number "
             f">= 0 per class, got {cw!r}")
        need(self.loss in ("cross_entropy", "ohem"),
             f"loss must be cross_entropy or ohem, got {self.loss!r}")
        need(isinstance(self.ohem_threshold, (int, float)) and 0 < self.ohem_threshold <= 1,
             f"ohem_threshold must be a probability in (0, 1], got {self.ohem_threshold!r}")
        need(isinstance(self.ohem_min_kept, (int, float)) and 0 < self.ohem_min_kept <= 1,
             f"ohem_min_kept must be a fraction in (0, 1], got {self.ohem_min_kept!r}")
        need(isinstance(self.color_jitter, (int, float)) and 0 <= self.color_jitter < 1,
             f"color_jitter must be in [0, 1), got {self.color_jitter!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def table(self) -> ClassTable:
        return CLASS_TABLES[self.dataset]


def _nums(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _ints(v: Any, n: int, minimum: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in v)


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (or the defaults) and ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"config {path}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path}: invalid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: expected a mapping of settings")
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        data[key.strip()] = yaml.safe_load(value)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        where = f"config {path}" if path else "--set"
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {', '.join(valid)}")
    for key in _FLOAT_KEYS & data.keys():
        # YAML 1.1 reads 5e-4 (no dot) as a string.
        if isinstance(data[key], str):
            try:
                data[key] = float(data[key])
            except ValueError:
                pass
    return TrainConfig(**data)


_FLOAT_KEYS = {"lr", "momentum", "weight_decay", "poly_power", "warmup_factor",
               "ohem_threshold", "ohem_min_kept", "color_jitter"}


# ---------------------------------------------------------------- the pieces of a run


def get_dataset(cfg: TrainConfig, split: str, device: torch.device) -> SegmentationSplit:
    return load_split(cfg.dataset, cfg.data_root, split, device, cfg.data_placement)


def criterion(cfg: TrainConfig, train: SegmentationSplit, device: torch.device) -> nn.Module:
    """Cross-entropy (all pixels, or the hard ones: OHEM), void ignored, optionally
    class-weighted."""
    weight = None
    if isinstance(cfg.class_weights, str):
        weight = WEIGHT_SCHEMES[cfg.class_weights](train)
    elif cfg.class_weights is not None:
        weight = torch.tensor(cfg.class_weights, dtype=torch.float32)
    if weight is not None:
        weight = weight.to(device)
    if cfg.loss == "ohem":
        return OhemCrossEntropy(weight, cfg.table.ignore_index, cfg.ohem_threshold,
                                cfg.ohem_min_kept)
    return nn.CrossEntropyLoss(weight=weight, ignore_index=cfg.table.ignore_index)


class PolyLR:
    """Multiplier of the base lr: (1 - it / total) ** power, after an optional linear warm-up."""

    def __init__(self, total: int, power: float, warmup: int = 0, warmup_factor: float = 0.1
                 ) -> None:
        self.total, self.power = total, power
        self.warmup, self.warmup_factor = warmup, warmup_factor

    def __call__(self, it: int) -> float:
        factor = (1 - min(it, self.total) / self.total) ** self.power
        if it < self.warmup:
            factor *= self.warmup_factor + (1 - self.warmup_factor) * it / self.warmup
        return factor


def make_model(cfg: TrainConfig, ctx: dist_utils.Context) -> DFANet:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_dfanet(cfg.variant, cfg.table.num_classes)
    if ctx.distributed and ctx.device.type == "cuda" and cfg.sync_batchnorm:
        # SyncBatchNorm runs on GPUs only; a gloo job on CPUs keeps per-process statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def wrap(model: nn.Module, cfg: TrainConfig, ctx: dist_utils.Context) -> nn.Module:
    """DDP across processes and torch.compile, as configured."""
    net = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


@dataclass
class Job:
    """Everything one process trains with."""

    cfg: TrainConfig
    ctx: dist_utils.Context
    train_data: SegmentationSplit
    val_data: SegmentationSplit | None
    model: DFANet              # the plain module: what checkpoints hold
    net: nn.Module             # what a step runs: model, or its DDP / compiled wrapper
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    generator: torch.Generator  # drives the augmentation; checkpointed

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's augmented batch of ``iteration`` (frames chosen statelessly)."""
        cfg, ctx = self.cfg, self.ctx
        idx = sample_indices(len(self.train_data), iteration, cfg.batch_size, cfg.seed,
                             ctx.rank, ctx.world_size)
        images, labels = self.train_data.batch(idx, ctx.device)
        x, y = self.augment(images, labels, self.generator)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def state(self, progress: "Progress") -> dict[str, Any]:
        """The resumable state (collective: every rank must call it)."""
        rngs = dist_utils.all_gather_objects(rng_state(self.generator), self.ctx)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rngs, "config": dataclasses.asdict(self.cfg),
                "world_size": self.ctx.world_size, **dataclasses.asdict(progress)}

    def load_state(self, ckpt: LoadedCheckpoint) -> None:
        ts = ckpt.training_state
        self.model.load_state_dict(ckpt.state_dict, strict=True)
        self.optimizer.load_state_dict(ts["optimizer"])
        # LambdaLR's state carries the old PolyLR's fields; keep this run's schedule (the
        # same one unless the config changed, e.g. more iterations) and its lr at this step.
        poly = self.scheduler.lr_lambdas[0]
        schedule = dict(vars(poly))
        self.scheduler.load_state_dict(ts["scheduler"])  # updates vars(poly) in place
        vars(poly).update(schedule)
        step = self.scheduler.last_epoch
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * poly(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if self.scaler.is_enabled() and ts["scaler"]:
            self.scaler.load_state_dict(ts["scaler"])


def build_job(cfg: TrainConfig, ctx: dist_utils.Context) -> Job:
    train_data = get_dataset(cfg, cfg.train_split, ctx.device)
    val_data = get_dataset(cfg, cfg.val_split, ctx.device) if cfg.val_split else None
    model = make_model(cfg, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PolyLR(
        cfg.iterations, cfg.poly_power, cfg.warmup_iterations, cfg.warmup_factor))
    scaler = torch.amp.GradScaler(ctx.device.type,
                                  enabled=cfg.precision == "fp16" and ctx.device.type == "cuda")
    augment = BatchAugment(cfg.crop_size, cfg.scale_range, cfg.hflip, cfg.mean, cfg.std,
                           cfg.table.ignore_index, cfg.color_jitter)
    return Job(cfg, ctx, train_data, val_data, model, wrap(model, cfg, ctx),
               criterion(cfg, train_data, ctx.device), optimizer, scheduler, scaler, augment,
               torch.Generator().manual_seed(cfg.seed * 1000 + ctx.rank))


def train_one_step(job: Job, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward, backward, update, lr step; returns the loss (on the device, no sync)."""
    with autocast(images.device, job.cfg.precision):
        loss = job.loss_fn(job.net(images), labels)
    job.optimizer.zero_grad(set_to_none=True)
    job.scaler.scale(loss).backward()
    job.scaler.step(job.optimizer)
    job.scaler.update()
    job.scheduler.step()
    return loss.detach()


def evaluate_split(model: nn.Module, data: SegmentationSplit, cfg: TrainConfig,
                   ctx: dist_utils.Context) -> EvalResult:
    """Score ``model`` on a split, each rank a share, the confusion matrices summed."""
    def reduce(mat: torch.Tensor) -> None:
        mat.copy_(dist_utils.all_reduce_sum(mat.to(ctx.device), ctx).cpu())

    return evaluate(model, split_batches(data, ctx.device, cfg.eval_batch_size, ctx.rank,
                                         ctx.world_size),
                    cfg.table.num_classes, cfg.table.ignore_index, cfg.mean, cfg.std,
                    size=cfg.eval_size, precision=cfg.precision,
                    channels_last=cfg.channels_last, reduce=reduce)


# ---------------------------------------------------------------- state, run dir, signals


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random generator a step may touch (checkpoint form: tensors and plain values)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": random.getstate(), "augment": generator.get_state()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    random.setstate(_tuples(state["python"]))
    generator.set_state(state["augment"])


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass
class Progress:
    iteration: int = 0
    best_miou: float = -1.0
    best_iteration: int = -1
    elapsed_s: float = 0.0  # training time over every resumed part of this run


def git_commit() -> str | None:
    """The source tree's commit, when it is a git checkout (provenance)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def make_card(cfg: TrainConfig, frame_size: Sequence[int]) -> ModelCard:
    """The model card of a run.  ``input_size`` is the size the model is evaluated (and so
    should be deployed) at: ``eval_size``, else the training frames' own size.  Crops are
    smaller, but random rescaling puts objects at the frames' scale."""
    t = cfg.table
    return ModelCard(variant=cfg.variant.upper(), num_classes=t.num_classes,
                     class_names=list(t.names), class_colors=[list(c) for c in t.colors],
                     ignore_index=t.ignore_index, mean=list(cfg.mean), std=list(cfg.std),
                     input_size=list(cfg.eval_size or frame_size), dataset=cfg.dataset)


def metrics_entry(result: EvalResult, iteration: int) -> dict[str, Any]:
    s = result.scores
    return json_safe({"miou": s.miou, "iou": s.iou, "pixel_acc": s.pixel_acc,
                       "class_acc": s.class_acc, "iteration": iteration})


class RunDir:
    """The run directory: JSONL log and checkpoints (files written by rank 0 only)."""

    def __init__(self, path: Path, job: Job) -> None:
        self.path, self.job, self.ctx = path, job, job.ctx
        # What every file of the run says about the model.
        self.card = make_card(job.cfg, job.train_data.frame_size())
        self.latest: dict[str, Any] = {}  # metrics of the latest evaluation
        self._commit = git_commit()
        if self.ctx.is_main:
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(job.cfg)))

    def log(self, event: str, **fields: Any) -> None:
        if self.ctx.is_main:
            record = json_safe({"event": event, "time": round(time.time(), 3), **fields})
            with open(self.path / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def card_for(self, progress: Progress, metrics: dict[str, Any] | None = None) -> ModelCard:
        """The run's card with ``metrics`` (default: the latest) and provenance as of now."""
        card = dataclasses.replace(self.card, metrics=dict(
            self.latest if metrics is None else metrics), provenance={})
        stamp_provenance(card, iterations=progress.iteration,
                         train_seconds=round(progress.elapsed_s, 1), git_commit=self._commit)
        return card

    def save(self, name: str, progress: Progress, card: ModelCard) -> None:
        state = self.job.state(progress)  # every rank takes part; rank 0 writes
        if self.ctx.is_main:
            save_training_state(self.path / name, state, card)

    def save_model(self, name: str, model: nn.Module, card: ModelCard) -> None:
        if self.ctx.is_main:
            save_model(self.path / name, model, card)

    def save_last(self, progress: Progress, snapshot: bool = False) -> None:
        """last.pt and, for periodic saves, snapshot_<iteration>.pt (newest ``keep`` kept)."""
        self.save("last.pt", progress, self.card_for(progress))
        keep = self.job.cfg.keep_snapshots
        if not (snapshot and self.ctx.is_main and keep):
            return
        target = self.path / f"snapshot_{progress.iteration:07d}.pt"
        target.unlink(missing_ok=True)
        try:
            os.link(self.path / "last.pt", target)  # same bytes, no second write
        except OSError:
            target.write_bytes((self.path / "last.pt").read_bytes())
        for old in sorted(self.path.glob("snapshot_*.pt"))[:-keep]:
            old.unlink()

    def record_eval(self, progress: Progress, result: EvalResult, say: Any = print) -> None:
        """Log a validation result; keep best.pt and best.safetensors when it is the best."""
        cfg, s = self.job.cfg, result.scores
        self.latest = {cfg.val_split: metrics_entry(result, progress.iteration)}
        self.log("eval", iteration=progress.iteration, split=cfg.val_split, miou=s.miou,
                 pixel_acc=s.pixel_acc, iou=s.iou, seconds=result.seconds)
        if self.ctx.is_main:
            say(f"iteration {progress.iteration}: {cfg.val_split} mIoU {100 * s.miou:.1f}, "
                f"pixel acc {100 * s.pixel_acc:.1f}")
        if s.miou > progress.best_miou:
            progress.best_miou, progress.best_iteration = s.miou, progress.iteration
            card = self.card_for(progress)
            self.save("best.pt", progress, card)
            self.save_model("best.safetensors", self.job.model, card)

    def restore(self) -> tuple[Progress, list[dict[str, Any]]]:
        """Load last.pt into the job; return its progress and the per-rank RNG states."""
        ckpt = read_checkpoint(self.path / "last.pt")
        ts, cfg, ctx = ckpt.training_state, self.job.cfg, self.ctx
        saved = ts.get("config", {})
        changed = {k: (saved[k], v) for k, v in dataclasses.asdict(cfg).items()
                   if k in saved and saved[k] != v}
        if changed and ctx.is_main:
            print("resuming with changed settings: " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), file=sys.stderr)
        if ts.get("world_size", 1) != ctx.world_size and ctx.is_main:
            print(f"resuming a {ts['world_size']}-process run with {ctx.world_size}: the "
                  f"frame order changes from here on", file=sys.stderr)
        self.job.load_state(ckpt)
        self.latest = dict(ckpt.card.metrics)
        return (Progress(ts["iteration"], ts["best_miou"], ts["best_iteration"],
                         ts["elapsed_s"]), ts["rng"])


class StopSignals:
    """SIGINT/SIGTERM ask the loop to save and stop; a second one interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: saving after this step "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)


class LossMeter:
    """Sums step losses on the device; reading it (once per log interval) is the host sync."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.steps, self.since = 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss
        self.steps += 1

    def read(self, images_per_step: int, iteration: int) -> tuple[float, float]:
        """Mean loss and images/s since the last read."""
        loss = self.total.item() / self.steps
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at iteration {iteration}: "
                                     f"lower lr or check data")
        speed = self.steps * images_per_step / (time.perf_counter() - self.since)
        self.total.zero_()
        self.steps, self.since = 0, time.perf_counter()
        return loss, speed


@dataclass
class RunOptions:
    resume: bool = False
    time_budget_s: float = 0.0
    stop_after: int = 0
    benchmark_steps: int = 0


# ---------------------------------------------------------------- main


def main(cfg: TrainConfig, run_dir: Path, opts: RunOptions | None = None) -> int:
    """Join the process group (if started by torchrun), train, leave the group."""
    ctx = dist_utils.init(cfg.device)
    try:
        return train(cfg, run_dir, opts or RunOptions(), ctx)
    finally:
        dist_utils.shutdown(ctx)


def train(cfg: TrainConfig, run_dir: Path, opts: RunOptions, ctx: dist_utils.Context) -> int:
    """The training loop; returns the exit code (0, or 128 + signal after saving)."""
    started = time.perf_counter()
    if not (opts.benchmark_steps or opts.resume) and (run_dir / "last.pt").exists():
        raise ConfigError(f"run directory {run_dir} already holds last.pt: pass --resume to "
                          f"continue that run, or choose another --run-dir")
    job = build_job(cfg, ctx)
    if opts.benchmark_steps:
        return benchmark(job, opts.benchmark_steps)
    run = RunDir(run_dir, job)
    progress, rngs = run.restore() if opts.resume else (Progress(), [])
    run.log("resume" if opts.resume else "start", iteration=progress.iteration,
            world_size=ctx.world_size, device=str(ctx.device), train_frames=len(job.train_data),
            global_batch=cfg.batch_size * ctx.world_size,
            loss_weights=None if job.loss_fn.weight is None else job.loss_fn.weight.tolist())
    if rngs:  # restored last, just before the first step: building the job drew from them
        set_rng_state(rngs[ctx.rank % len(rngs)], job.generator)
    meter, step_times, reason = LossMeter(ctx.device), [], None
    with StopSignals() as signals, tqdm(total=cfg.iterations, initial=progress.iteration,
                                        disable=not (ctx.is_main and cfg.progress),
                                        unit="it", dynamic_ncols=True) as bar:
        while progress.iteration < cfg.iterations and not reason:
            t0 = time.perf_counter()
            meter.add(train_one_step(job, *job.batch(progress.iteration)))
            progress.iteration += 1
            it = progress.iteration
            bar.update(1)
            if it % cfg.log_every == 0 or it == cfg.iterations:
                loss, speed = meter.read(cfg.batch_size * ctx.world_size, it)
                lr = job.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                run.log("train", iteration=it, loss=loss, lr=lr, images_per_s=speed)
            if job.val_data is not None and (it == cfg.iterations or (
                    cfg.eval_every and it % cfg.eval_every == 0)):
                run.record_eval(progress, evaluate_split(job.model, job.val_data, cfg, ctx),
                                say=lambda text: bar.write(text, file=sys.stderr))
            step_times.append(time.perf_counter() - t0)
            progress.elapsed_s += step_times[-1]
            if it % cfg.save_every == 0 and it < cfg.iterations:
                run.save_last(progress, snapshot=True)
            reason = stop_reason(signals, opts, it, started, step_times, ctx)
    run.save_last(progress)
    if reason:
        run.log("stop", iteration=progress.iteration, reason=reason)
        if ctx.is_main:
            print(f"stopped at iteration {progress.iteration}/{cfg.iterations} ({reason}); "
                  f"saved {run_dir / 'last.pt'}; continue with --resume", file=sys.stderr)
        return 128 + signals.received if signals.received else 0
    finish(job, run, progress)
    return 0


def stop_reason(signals: StopSignals, opts: RunOptions, iteration: int, started: float,
                step_times: list[float], ctx: dist_utils.Context) -> str | None:
    """Why to stop now (agreed by all ranks, so they stop at the same step), or None."""
    reason = None
    if signals.received:
        reason = signal.Signals(signals.received).name
    elif opts.stop_after and iteration >= opts.stop_after:
        reason = f"--stop-after {opts.stop_after}"
    elif opts.time_budget_s:
        # Leave room for two more of the slowest recent steps (one may evaluate) and a save.
        margin = 2 * max(step_times[-20:]) + 2.0
        if time.perf_counter() - started + margin > opts.time_budget_s:
            reason = f"time budget {opts.time_budget_s / 60:g} min"
    if dist_utils.any_true(reason is not None, ctx):
        return reason or "another process stopped"
    return None


def finish(job: Job, run: RunDir, progress: Progress) -> None:
    """After the last iteration: score the kept weights on the test split and record it.

    The kept weights are best.pt's (chosen on val) or, without a val split, the final ones.
    A run continued on another machine may carry only best.safetensors (the same weights;
    training states are large, so only last.pt travels with it): then that file is used.
    """
    cfg, ctx = job.cfg, job.ctx
    best = run.path / "best.pt"
    dist_utils.barrier(ctx)  # rank 0 has written best.pt
    if not best.exists() and cfg.val_split and (run.path / "best.safetensors").exists():
        best = run.path / "best.safetensors"
    if best.exists():
        ckpt = read_checkpoint(best)
        model, card = ckpt.card.build_model().to(ctx.device), ckpt.card
        model.load_state_dict(ckpt.state_dict)
    else:
        model, card = job.model, run.card_for(progress)
    if cfg.test_split:
        result = evaluate_split(model, get_dataset(cfg, cfg.test_split, ctx.device), cfg, ctx)
        iteration = progress.best_iteration if best.exists() else progress.iteration
        card.metrics[cfg.test_split] = metrics_entry(result, iteration)
        run.log("eval", iteration=iteration, split=cfg.test_split, miou=result.scores.miou,
                pixel_acc=result.scores.pixel_acc, iou=result.scores.iou,
                seconds=result.seconds, weights="best" if best.exists() else "final")
        if ctx.is_main:
            print(format_scores(result.scores, cfg.table.names,
                                f"kept weights (iteration {iteration}) on {cfg.dataset} "
                                f"{cfg.test_split}"))
    run.save_model("best.safetensors", model, card)
    run.log("end", iteration=progress.iteration, best_miou=progress.best_miou,
            best_iteration=progress.best_iteration, elapsed_s=progress.elapsed_s,
            replicas_identical=replicas_identical(job.model, ctx))
    if ctx.is_main:
        best_text = (f"best {cfg.val_split} mIoU {100 * progress.best_miou:.1f} at iteration "
                     f"{progress.best_iteration}; " if best.exists() else "")
        print(f"done: {progress.iteration} iterations, {progress.elapsed_s / 60:.1f} min of "
              f"training; {best_text}deployable model {run.path / 'best.safetensors'}")


def replicas_identical(model: nn.Module, ctx: dist_utils.Context) -> bool | None:
    """Whether every process ends with bit-identical parameters (None for one process)."""
    if not ctx.distributed:
        return None
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return len(set(dist_utils.all_gather_objects(digest.hexdigest(), ctx))) == 1


def benchmark(job: Job, steps: int, warmup: int = 3) -> int:
    """Time training steps (data + augmentation, and forward/backward/update) and print them."""
    cfg, ctx = job.cfg, job.ctx

    def sync() -> None:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)

    data_s, step_s = [], []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        images, labels = job.batch(i)
        sync()
        t1 = time.perf_counter()
        train_one_step(job, images, labels)
        sync()
        if i >= warmup:
            data_s.append(t1 - t0)
            step_s.append(time.perf_counter() - t1)
    med = statistics.median([a + b for a, b in zip(data_s, step_s, strict=True)])
    if ctx.is_main:
        h, w = cfg.crop_size
        precision = effective_precision(ctx.device, cfg.precision)
        print(f"DFANet {cfg.variant.upper()}, batch {cfg.batch_size} x {ctx.world_size} "
              f"process(es), crop {h}x{w}, {ctx.device}, precision {precision}, "
              f"threads {torch.get_num_threads()}: "
              f"{cfg.batch_size * ctx.world_size / med:.1f} images/s (median step "
              f"{1000 * med:.0f} ms over {steps} steps after {warmup} warm-up; data + "
              f"augmentation {1000 * statistics.median(data_s):.1f} ms, forward/backward/"
              f"update {1000 * statistics.median(step_s):.0f} ms)")
    return 0


# ---------------------------------------------------------------- dfanet train


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
    except (ConfigError, DataError, CheckpointError, FloatingPointError) as e:
        print(f"dfanet train: {e}", file=sys.stderr)
        return 1
