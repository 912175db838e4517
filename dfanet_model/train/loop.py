"""The training loop, as torchvision's segmentation reference shapes it: ``main`` joins the
process group, ``train`` runs the steps (its loop fits one screen), ``finish`` scores the kept
weights on the test split; ``benchmark`` only times steps.  The decoded training split lives
on the training device and each step gathers, flips, scales, crops and normalises its batch
there (augment.py): no loader process stands between data and GPU.

SIGINT/SIGTERM save last.pt before exiting (130/143); ``--time-budget`` stops cleanly in time.
"""
from __future__ import annotations

import hashlib
import math
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import distributed as dist_utils
from ..checkpoint import read_checkpoint
from ..evaluate import effective_precision, format_scores
from .config import ConfigError, TrainConfig
from .job import (
    Job,
    Progress,
    build_job,
    evaluate_split,
    get_dataset,
    set_rng_state,
    train_one_step,
)
from .run_dir import RunDir, metrics_entry


@dataclass
class RunOptions:
    """How ``dfanet train`` was asked to run, beyond the config."""

    resume: bool = False
    time_budget_s: float = 0.0
    stop_after: int = 0
    benchmark_steps: int = 0


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
                run.record_eval(progress, evaluate_split(job.kept_model, job.val_data, cfg, ctx),
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

    The kept weights are best.safetensors (the evaluated weights that scored best on val,
    written with best.pt; the moving average when ``ema_decay`` is set) or, without a val
    split, the final ones.  A run continued on another machine carries best.safetensors, not
    best.pt (training states are large, so only last.pt travels with it).
    """
    cfg, ctx = job.cfg, job.ctx
    best = run.path / "best.safetensors"
    dist_utils.barrier(ctx)  # rank 0 has written it
    use_best = bool(cfg.val_split) and best.exists()
    model: nn.Module
    if use_best:
        ckpt = read_checkpoint(best)
        model, card = ckpt.card.build_model().to(ctx.device), ckpt.card
        model.load_state_dict(ckpt.state_dict)
    else:
        model, card = job.kept_model, run.card_for(progress)
    if cfg.test_split:
        result = evaluate_split(model, get_dataset(cfg, cfg.test_split, ctx.device), cfg, ctx)
        iteration = progress.best_iteration if use_best else progress.iteration
        card.metrics[cfg.test_split] = metrics_entry(result, iteration)
        run.log("eval", iteration=iteration, split=cfg.test_split, miou=result.scores.miou,
                pixel_acc=result.scores.pixel_acc, iou=result.scores.iou,
                seconds=result.seconds, weights="best" if use_best else "final")
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
                     f"{progress.best_iteration}; " if use_best else "")
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
