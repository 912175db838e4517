"""What one process trains with: data, model, loss, optimiser, poly schedule, one step.

``Job`` gathers them and turns them into the resumable training state and back; the random
generators a step draws from are part of that state, so a resumed run repeats an
uninterrupted one bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed as dist_utils
from ..augment import BatchAugment
from ..checkpoint import CheckpointError, FieldError, LoadedCheckpoint, read_checkpoint
from ..data import SegmentationSplit, load_split, sample_indices
from ..evaluate import EvalResult, autocast, evaluate, split_batches
from ..losses import OhemCrossEntropy
from ..network import DFANet, build_dfanet
from ..preprocess import Preprocessing
from .config import WEIGHT_SCHEMES, TrainConfig
from .ema import WeightAverage


def get_dataset(cfg: TrainConfig, split: str, device: torch.device) -> SegmentationSplit:
    """One split of the configured dataset, placed as ``data_placement`` says."""
    return load_split(cfg.dataset, cfg.data_root, split, device, cfg.data_placement)


Criterion = OhemCrossEntropy | nn.CrossEntropyLoss


def criterion(cfg: TrainConfig, train: SegmentationSplit, device: torch.device) -> Criterion:
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
    if cfg.init_weights:
        start = read_checkpoint(cfg.init_weights)
        if (start.card.variant, start.card.num_classes) != (cfg.variant.upper(),
                                                            cfg.table.num_classes):
            raise CheckpointError(cfg.init_weights, f"init_weights: DFANet "
                                  f"{start.card.variant} with {start.card.num_classes} "
                                  f"classes cannot start a run of DFANet "
                                  f"{cfg.variant.upper()} with {cfg.table.num_classes}")
        model.load_state_dict(start.state_dict, strict=True)
    if ctx.distributed and ctx.device.type == "cuda" and cfg.sync_batchnorm:
        # SyncBatchNorm runs on GPUs only; a gloo job on CPUs keeps per-process statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    if cfg.channels_last:
        # Module.to takes memory_format at run time; torch's overloads leave it out.
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def wrap(model: nn.Module, cfg: TrainConfig, ctx: dist_utils.Context) -> nn.Module:
    """DDP across processes and torch.compile, as configured."""
    net = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.compile:
        compiled = torch.compile(net)
        # Compiling a module gives a module (OptimizedModule); the stubs say only "callable".
        assert isinstance(compiled, nn.Module)
        net = compiled
    return net


@dataclass
class Progress:
    """Where a run stands; saved with its training state."""

    iteration: int = 0
    best_miou: float = -1.0
    best_iteration: int = -1
    elapsed_s: float = 0.0  # training time over every resumed part of this run


@dataclass
class Job:
    """Everything one process trains with."""

    cfg: TrainConfig
    ctx: dist_utils.Context
    train_data: SegmentationSplit
    val_data: SegmentationSplit | None
    model: DFANet              # the plain module: what checkpoints hold
    net: nn.Module             # what a step runs: model, or its DDP / compiled wrapper
    loss_fn: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    generator: torch.Generator  # drives the augmentation; checkpointed
    ema: WeightAverage | None = None  # the moving average of the weights, when configured

    @property
    def kept_model(self) -> nn.Module:
        """The weights a run evaluates and ships: the moving average, else the model."""
        return self.model if self.ema is None else self.ema.module

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

    def state(self, progress: Progress) -> dict[str, Any]:
        """The resumable state (collective: every rank must call it)."""
        rngs = dist_utils.all_gather_objects(rng_state(self.generator), self.ctx)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rngs, "config": dataclasses.asdict(self.cfg),
                "world_size": self.ctx.world_size, **dataclasses.asdict(progress),
                **({} if self.ema is None else {"ema": self.ema.module.state_dict()})}

    def load_state(self, ckpt: LoadedCheckpoint) -> None:
        """Continue from a saved training state (the RNG states are restored separately).

        A state this job cannot continue from raises ``CheckpointError`` naming the field."""
        ts = ckpt.resume_state()
        try:
            check_resumable(ts, self.optimizer, self.generator)
        except FieldError as e:
            raise CheckpointError(ckpt.path, str(e)) from None
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
        if self.ema is not None:
            # A run that starts averaging on resume starts from the weights it resumes
            # (read_checkpoint checked that both fit the card's model).
            self.ema.module.load_state_dict(ts.get("ema", ckpt.state_dict), strict=True)


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
               torch.Generator().manual_seed(cfg.seed * 1000 + ctx.rank),
               WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None)


def train_one_step(job: Job, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward, backward, update, lr step; returns the loss (on the device, no sync)."""
    with autocast(images.device, job.cfg.precision):
        loss = job.loss_fn(job.net(images), labels)
    job.optimizer.zero_grad(set_to_none=True)
    job.scaler.scale(loss).backward()
    job.scaler.step(job.optimizer)
    job.scaler.update()
    job.scheduler.step()
    if job.ema is not None:
        job.ema.update(job.model, job.scheduler.last_epoch - 1)
    return loss.detach()


def evaluate_split(model: nn.Module, data: SegmentationSplit, cfg: TrainConfig,
                   ctx: dist_utils.Context) -> EvalResult:
    """Score ``model`` on a split, each rank a share, the confusion matrices summed."""
    def reduce(mat: torch.Tensor) -> None:
        mat.copy_(dist_utils.all_reduce_sum(mat.to(ctx.device), ctx).cpu())

    return evaluate(model, split_batches(data, ctx.device, cfg.eval_batch_size, ctx.rank,
                                         ctx.world_size),
                    cfg.table.num_classes, cfg.table.ignore_index,
                    Preprocessing.from_card(cfg),
                    size=cfg.eval_size, precision=cfg.precision,
                    channels_last=cfg.channels_last, reduce=reduce)



RESUME_FIELDS = ("optimizer", "scheduler", "iteration", "rng")


def check_resumable(ts: dict[str, Any], optimizer: torch.optim.Optimizer,
                    generator: torch.Generator) -> None:
    """Raise ``FieldError`` unless ``ts`` (a read, type-checked training state) has every
    entry a resume needs and each fits this job: the optimiser's groups and buffers, the
    scheduler's fields and the random generators' states.  Loading would otherwise fail
    late, with torch's own error, or, for a momentum buffer of the wrong shape, at the first
    step."""
    for name in RESUME_FIELDS:
        if name not in ts:
            raise FieldError(name, "missing (a resume needs it)")
    groups, saved = optimizer.param_groups, ts["optimizer"]["param_groups"]
    if len(saved) != len(groups):
        raise FieldError("optimizer.param_groups", f"{len(saved)} group(s), but this model's "
                                                   f"optimiser has {len(groups)}")
    params: dict[Any, torch.Tensor] = {}
    for i, (old, new) in enumerate(zip(saved, groups, strict=True)):
        ids = old.get("params")
        if not isinstance(ids, list) or len(ids) != len(new["params"]):
            got = len(ids) if isinstance(ids, list) else type(ids).__name__
            raise FieldError(f"optimizer.param_groups[{i}].params",
                             f"{got} parameters, but this model has {len(new['params'])}")
        params.update(zip(ids, new["params"], strict=True))
    for key, entry in ts["optimizer"]["state"].items():
        if key not in params:
            raise FieldError(f"optimizer.state[{key!r:.20}]", "names no parameter of a group")
        if not isinstance(entry, dict):
            raise FieldError(f"optimizer.state[{key}]", f"must be a dict, got "
                                                        f"{type(entry).__name__}")
        for buf, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 \
                    and value.shape != params[key].shape:
                raise FieldError(f"optimizer.state[{key}].{buf}",
                                 f"shape {tuple(value.shape)}, but its parameter has "
                                 f"{tuple(params[key].shape)}")
    sched = ts["scheduler"]
    for name, kind, what in (("base_lrs", list, "a list"), ("lr_lambdas", list, "a list"),
                             ("last_epoch", int, "an integer")):
        if name not in sched:
            raise FieldError(f"scheduler.{name}", "missing")
        if not isinstance(sched[name], kind) or isinstance(sched[name], bool):
            raise FieldError(f"scheduler.{name}", f"must be {what}, got "
                                                  f"{type(sched[name]).__name__}")
    for name in ("base_lrs", "lr_lambdas"):
        if len(sched[name]) != len(groups):
            raise FieldError(f"scheduler.{name}", f"must hold {len(groups)} value(s), got "
                                                  f"{len(sched[name])}")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in sched["base_lrs"]):
        raise FieldError("scheduler.base_lrs", "must hold finite numbers")
    if not all(x is None or isinstance(x, dict) for x in sched["lr_lambdas"]):
        raise FieldError("scheduler.lr_lambdas", "must hold dicts")
    if sched["last_epoch"] < 0:
        raise FieldError("scheduler.last_epoch", f"must be >= 0, got {sched['last_epoch']}")
    check_rng_states(ts["rng"], generator)


def check_rng_states(states: list[Any], generator: torch.Generator) -> None:
    """Raise ``FieldError`` unless every saved per-process RNG state can be restored (tried on
    a scratch generator; this process's generators are left as they were)."""
    if not states:
        raise FieldError("rng", "empty: it must hold one state per process")
    kept = rng_state(generator)
    try:
        for i, state in enumerate(states):
            try:
                set_rng_state(state, torch.Generator())
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError,
                    AttributeError) as e:
                reason = str(e).splitlines()[0] if str(e).strip() else ""
                what = f"missing {reason}" if isinstance(e, KeyError) else reason
                raise FieldError(f"rng[{i}]", f"not a random generator state "
                                              f"({what or type(e).__name__})"[:200]) from None
    finally:
        set_rng_state(kept, generator)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random generator a step may touch (checkpoint form: tensors and plain values)."""
    state = np.random.get_state()
    assert isinstance(state, tuple)  # legacy=True, the default, gives the tuple form
    kind, keys, pos, has_gauss, gauss = state
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

