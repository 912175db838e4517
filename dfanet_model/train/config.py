"""The settings of a run: ``TrainConfig``, checked as a whole, filled from YAML and ``--set``."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..classes import CLASS_TABLES, ClassTable
from ..data import PLACEMENTS, inverse_log_frequency_weights, median_frequency_weights
from ..network import VARIANTS
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

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
    init_weights: str | None = None        # a checkpoint to start a new run from (not resume)
    crop_size: list[int] = field(default_factory=lambda: [360, 480])
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.75])
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
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
    ema_decay: float = 0.0                 # > 0: evaluate and ship a moving average of weights
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
        need(isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1,
             f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay!r}")
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


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> TrainConfig:
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
               "ohem_threshold", "ohem_min_kept", "color_jitter", "ema_decay"}
