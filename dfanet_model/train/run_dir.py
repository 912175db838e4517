"""The run directory: its resolved config, JSONL log, checkpoints and the resume from last.pt.

Files are written by rank 0 only, each atomically (checkpoint.py), so a run stopped at any
moment leaves the previous last.pt intact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml
from torch import nn

from ..checkpoint import (
    ModelCard,
    read_checkpoint,
    save_model,
    save_training_state,
    stamp_provenance,
)
from ..evaluate import EvalResult
from ..metrics import json_safe
from .config import TrainConfig
from .job import Job, Progress


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
    """One split's entry in the model card's metrics."""
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
        # A job has validation data, and so evaluates, only when it names a split.
        assert cfg.val_split is not None
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
            self.save_model("best.safetensors", self.job.kept_model, card)

    def restore(self) -> tuple[Progress, list[dict[str, Any]]]:
        """Load last.pt into the job; return its progress and the per-rank RNG states."""
        ckpt = read_checkpoint(self.path / "last.pt")
        ts, cfg, ctx = ckpt.resume_state(), self.job.cfg, self.ctx
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
        first = Progress()  # entries a resume can do without: as at the start of a run
        return (Progress(ts["iteration"], ts.get("best_miou", first.best_miou),
                         ts.get("best_iteration", first.best_iteration),
                         ts.get("elapsed_s", first.elapsed_s)), ts["rng"])
