"""The checkpoint format shared by training, evaluation, export and the ROS node.

Two kinds of file, both loaded without executing pickled code:

* deployable (``.safetensors``): the model weights plus a JSON ``ModelCard`` in the
  safetensors header (key ``dfanet``).  This is what the node loads.
* training state (``.pt``): ``torch.save`` of a dict of tensors and plain containers (model,
  optimizer, scheduler, scaler, iteration, RNG states, best metric, the card as JSON), loaded
  with ``torch.load(weights_only=True)``.  ``dfanet checkpoint slim`` turns it into the first.

Every write goes to a temporary file in the same directory and is renamed into place, so a
crash never leaves a half-written file under the final name.  Every load failure raises
``CheckpointError`` naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import math
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .network import VARIANTS, DFANet, build_dfanet
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .version import __version__

FORMAT_VERSION = 1
METADATA_KEY = "dfanet"  # the model card (JSON) in safetensors headers and exported graphs
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a header


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


# Limits on what a card may ask of a machine.  A label image is mono8, so at most 255 classes;
# the network input is bounded like the node's default ``max_image_pixels`` (4096 x 4096), so
# a card cannot make every frame allocate gigabytes.
MAX_CLASSES = 255
MAX_INPUT_SIDE = 8192
MAX_INPUT_PIXELS = 4096 * 4096
# A card nests 4 deep (metrics.val.iou[i]); room for extensions, far below Python's stack.
MAX_CARD_DEPTH = 16


class FieldError(ValueError):
    """One malformed field of a model card or training state: ``<field>: <problem>``."""

    def __init__(self, name: str, problem: str) -> None:
        self.field = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _need_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not _is_int(value):
        raise FieldError(name, f"must be an integer, got {_kind(value)} {value!r:.60}")
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise FieldError(name, f"must be {bound}, got {value}")


def _need_number(name: str, value: Any, allow_null: bool = False,
                 finite: bool = True) -> None:
    if value is None and allow_null:
        return
    if not _is_number(value):
        raise FieldError(name, f"must be a number, got {_kind(value)} {value!r:.60}")
    if finite and not math.isfinite(value):
        raise FieldError(name, f"must be finite, got {value}")


def _need(name: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind):
        raise FieldError(name, f"must be {what}, got {_kind(value)} {value!r:.60}")


def _need_numbers(name: str, value: Any, count: int, allow_null: bool = False,
                  finite: bool = True) -> None:
    _need(name, value, list, f"a list of {count} numbers")
    if len(value) != count:
        raise FieldError(name, f"must hold {count} values, got {len(value)}")
    for i, v in enumerate(value):
        _need_number(f"{name}[{i}]", v, allow_null, finite)


# Known entries of a metrics split and of provenance, and what each must be.
_METRIC_NUMBERS = ("miou", "pixel_acc")
_METRIC_LISTS = ("iou", "class_acc")
_PROVENANCE_STRINGS = ("created", "package_version", "trained_on")


def validate_card(data: dict[str, Any]) -> None:
    """Raise ``FieldError`` naming the first malformed field of a model card's fields."""
    _need("variant", data["variant"], str, "a string")
    if data["variant"].upper() not in VARIANTS:
        raise FieldError("variant", f"unknown variant {data['variant']!r:.40} "
                                    f"(valid: {', '.join(VARIANTS)})")
    _need_int("num_classes", data["num_classes"], 1, MAX_CLASSES)
    n = data["num_classes"]
    names = data["class_names"]
    _need("class_names", names, list, f"a list of {n} strings")
    if len(names) != n:
        raise FieldError("class_names", f"{len(names)} names for {n} classes")
    for i, name in enumerate(names):
        _need(f"class_names[{i}]", name, str, "a string")
    colors = data["class_colors"]
    _need("class_colors", colors, list, f"a list of {n} RGB triples")
    if len(colors) != n:
        raise FieldError("class_colors", f"{len(colors)} colours for {n} classes")
    for i, rgb in enumerate(colors):
        _need(f"class_colors[{i}]", rgb, list, "an RGB triple")
        if len(rgb) != 3:
            raise FieldError(f"class_colors[{i}]", f"must hold 3 values, got {len(rgb)}")
        for v in rgb:
            _need_int(f"class_colors[{i}]", v, 0, 255)
    _need_int("ignore_index", data["ignore_index"], 0, 255)
    _need_numbers("mean", data["mean"], 3)
    _need_numbers("std", data["std"], 3)
    if min(data["std"]) <= 0:
        raise FieldError("std", f"must be positive, got {data['std']}")
    size = data["input_size"]
    _need("input_size", size, list, "[height, width]")
    if len(size) != 2:
        raise FieldError("input_size", f"must be [height, width], got {size!r:.60}")
    for side_name, side in zip(("height", "width"), size, strict=True):
        _need_int(f"input_size {side_name}", side, 1, MAX_INPUT_SIDE)
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise FieldError("input_size", f"{size[0]}x{size[1]} is more than "
                                       f"{MAX_INPUT_PIXELS} pixels")
    _need("dataset", data["dataset"], str, "a string")
    _need("metrics", data["metrics"], dict, "an object of splits")
    for split, entry in data["metrics"].items():
        where = f"metrics.{split}"
        _need(where, entry, dict, "an object")
        for key in _METRIC_NUMBERS:
            if key in entry:
                _need_number(f"{where}.{key}", entry[key], allow_null=True, finite=False)
        for key in _METRIC_LISTS:
            if key in entry:
                _need_numbers(f"{where}.{key}", entry[key], n, allow_null=True, finite=False)
        for key in ("iteration", "frames"):
            if key in entry:
                _need_int(f"{where}.{key}", entry[key], 0)
    prov = data["provenance"]
    _need("provenance", prov, dict, "an object")
    for key in _PROVENANCE_STRINGS:
        if key in prov:
            _need(f"provenance.{key}", prov[key], str, "a string")
    if prov.get("git_commit") is not None:
        _need("provenance.git_commit", prov["git_commit"], str, "a string")
    if "iterations" in prov:
        _need_int("provenance.iterations", prov["iterations"], 0)
    if "train_seconds" in prov:
        _need_number("provenance.train_seconds", prov["train_seconds"])
    _need_int("format_version", data["format_version"], 1)
    if data["format_version"] > FORMAT_VERSION:
        raise FieldError("format_version", f"{data['format_version']} is newer than this "
                                           f"package reads ({FORMAT_VERSION})")


def validate_training_state(payload: dict[str, Any]) -> None:
    """Raise ``FieldError`` naming the first malformed entry of a training checkpoint.

    Only ``model`` is required (a bare weights file is a valid training checkpoint); every
    other entry that ``dfanet train --resume`` and ``inspect`` read must have its type.
    """
    for name in ("model", "ema"):
        if name not in payload:
            continue  # only "model" is always there: read_checkpoint checked it
        state = payload[name]
        _need(name, state, dict, "a dict of tensors")
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise FieldError(name, f"entry {key!r:.60} is {_kind(value)}, not a tensor")
    for key in ("optimizer", "scheduler", "scaler", "config"):
        if key in payload:
            _need(key, payload[key], dict, "a dict")
    if "optimizer" in payload:
        groups = payload["optimizer"].get("param_groups")
        _need("optimizer.param_groups", groups, list, "a list")
        for i, group in enumerate(groups):
            _need(f"optimizer.param_groups[{i}]", group, dict, "a dict")
            if "lr" in group:
                _need_number(f"optimizer.param_groups[{i}].lr", group["lr"])
        _need("optimizer.state", payload["optimizer"].get("state"), dict, "a dict")
    if "config" in payload and "iterations" in payload["config"]:
        _need_int("config.iterations", payload["config"]["iterations"], 0)
    if "rng" in payload:
        _need("rng", payload["rng"], list, "a list (one entry per process)")
    for key in ("iteration", "best_iteration"):
        if key in payload:
            _need_int(key, payload[key], -1)
    for key in ("world_size",):
        if key in payload:
            _need_int(key, payload[key], 1)
    for key in ("best_miou", "elapsed_s"):
        if key in payload:
            _need_number(key, payload[key])


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _need_text(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FieldError(_printable(name)[:60], "not valid text (a lone surrogate: "
                         f"{_printable(text)[:40]})") from None


def _check_text(data: Any) -> None:
    """Raise ``FieldError`` at the first value nested deeper than a card needs (code that
    walks a card recursively would overflow Python's stack) or the first string (key or
    value) that is not valid text: JSON's ``\\ud800`` escape decodes to a lone surrogate,
    which no file or terminal can encode."""
    pending: list[tuple[str, Any, int]] = [("", data, 0)]
    while pending:  # a loop, not recursion: a card may nest as deep as json.loads allows
        where, value, depth = pending.pop()
        if depth > MAX_CARD_DEPTH:
            raise FieldError(_printable(where)[:60], f"nested more than {MAX_CARD_DEPTH} deep")
        if isinstance(value, str):
            _need_text(where or "card", value)
        elif isinstance(value, dict):
            for key, child in value.items():
                name = f"{where}.{key}" if where else key
                _need_text(name, key)
                pending.append((name, child, depth + 1))
        elif isinstance(value, list):
            pending.extend((f"{where}[{i}]", child, depth + 1) for i, child in enumerate(value))


@dataclass
class ModelCard:
    """Everything needed to use a set of weights, stored inside the checkpoint."""

    variant: str
    num_classes: int
    class_names: list[str]
    class_colors: list[list[int]]  # RGB, one triple per class
    ignore_index: int = 255
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # RGB in [0, 1]
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    input_size: list[int] = field(default_factory=lambda: [360, 480])  # trained at (h, w)
    dataset: str = ""
    # {"val": {"miou": .., "iou": [..], "pixel_acc": ..}, "test": {...}}
    metrics: dict[str, Any] = field(default_factory=dict)
    # {"created": iso time, "iterations": n, "package_version": v, ...}
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_card(dataclasses.asdict(self))

    def preprocessing(self) -> Preprocessing:
        """What every path does to a frame before these weights (``preprocess``)."""
        return Preprocessing.from_card(self)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        try:
            data = json.loads(text)
        except RecursionError:  # json recurses once per level: 100,000 ``[`` exhaust it
            raise FieldError("card", "JSON nested too deeply") from None
        _check_text(data)
        if not isinstance(data, dict):
            raise FieldError("card", f"must be a JSON object, got {_kind(data)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FieldError(str(unknown[0])[:60], "unknown field")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise FieldError(missing[0], "missing")
        return cls(**data)

    def build_model(self) -> DFANet:
        return build_dfanet(self.variant, self.num_classes)


def stamp_provenance(card: ModelCard, **extra: Any) -> None:
    """Record when and by which package version ``card`` was written (plus ``extra``)."""
    card.provenance.update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           package_version=__version__, **extra)


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (disk full, no permission, ...); the file that
    was there before is left as it was."""

    def __init__(self, path: str | os.PathLike, error: OSError) -> None:
        reason = error.strerror or str(error) or type(error).__name__
        self.path, self.problem, self.errno = str(path), reason, error.errno
        ValueError.__init__(self, f"cannot write {path}: {reason[:1].lower()}{reason[1:]}")


def atomic_write(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it onto ``path``.

    A failed write (disk full, quota, permission) raises ``CheckpointWriteError`` and leaves
    ``path`` as it was.  Temporary files that a killed process left for ``path`` are removed
    first.  ``data`` is serialised in memory beforehand, so a write error is the operating
    system's, with its errno, and never a serialiser's confused state.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp made it private; not a secret
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CheckpointWriteError(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files an interrupted ``atomic_write`` of ``path`` left."""
    path = Path(path)
    stale = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for old in stale:
        old.unlink(missing_ok=True)
    return stale


def save_model(path: str | os.PathLike, model: nn.Module, card: ModelCard) -> None:
    """Write a deployable checkpoint: weights (safetensors) + the model card."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    atomic_write(path, save(state, metadata={METADATA_KEY: card.to_json()}))


def save_training_state(path: str | os.PathLike, state: dict[str, Any], card: ModelCard) -> None:
    """Write a resumable training checkpoint (``state`` must hold only tensors and containers)."""
    payload = dict(state, card=card.to_json(), format_version=FORMAT_VERSION)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getbuffer())


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@dataclass
class LoadedCheckpoint:
    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    training_state: dict[str, Any] | None  # present for training checkpoints only
    path: Path

    def resume_state(self) -> dict[str, Any]:
        """The training state; a weights-only file raises ``CheckpointError``."""
        if self.training_state is None:
            raise CheckpointError(self.path, "holds weights only, no training state to resume")
        return self.training_state


def read_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read and validate a checkpoint of either kind without building a model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file not found")
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(path, f"file is empty or truncated ({path.stat().st_size} bytes)")
    if head[:4] == _ZIP_MAGIC:
        card, state, training = _read_training_state(path)
    else:
        card, state = _read_safetensors(path)
        training = None
    check_state_dict(path, card, state)
    if training is not None and "ema" in training:
        check_state_dict(path, card, training["ema"], "ema weights")
    return LoadedCheckpoint(card, state, training, path)


def _read_safetensors(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    # The header alone (its length, then its JSON) says whether this is ours: a large file
    # of something else is refused without reading it (a 2 GB file of zeros was read whole,
    # 2.3 GB resident, before this).
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len <= 0 or header_len > min(path.stat().st_size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(path, "not a dfanet checkpoint (neither safetensors nor a "
                                        "torch training checkpoint)")
        header = f.read(header_len)
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError, RecursionError):
        raise CheckpointError(path, "not a dfanet checkpoint (its safetensors header is not "
                                    "a JSON object)") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(path, f"safetensors file without '{METADATA_KEY}' metadata: "
                                    "not a dfanet checkpoint")
    card = _parse_card(path, meta[METADATA_KEY])
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(path, f"corrupt or truncated safetensors file "
                                    f"({_first_line(e)})") from None
    return card, state


def _read_training_state(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor], dict]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text suggests weights_only=False, i.e. running the code: never that.
        found = re.search(r"GLOBAL ([\w.]+)|reduce for ([\w.]+)|global: ([\w.]+)", str(e))
        what = next((g for g in found.groups() if g), "") if found else ""
        raise CheckpointError(path, "refused: the file holds pickled code"
                              + (f" ({what})" if what else "")
                              + ", and a checkpoint's code is never run") from None
    except Exception as e:
        raise CheckpointError(path, f"corrupt or truncated torch file "
                                    f"({_first_line(e)})") from None
    if not isinstance(payload, dict) or "card" not in payload or "model" not in payload:
        raise CheckpointError(path, "torch file without 'card' and 'model' entries: "
                                    "not a dfanet training checkpoint")
    card = _parse_card(path, payload["card"])
    try:
        validate_training_state(payload)
    except FieldError as e:
        raise CheckpointError(path, str(e)) from None
    return card, payload["model"], payload


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _parse_card(path: Path, text: Any) -> ModelCard:
    if not isinstance(text, str):
        raise CheckpointError(path, f"card: must be JSON text, got {_kind(text)}")
    try:
        return ModelCard.from_json(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"card: not valid JSON ({e})") from None
    except FieldError as e:
        raise CheckpointError(path, str(e)) from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"card: {_first_line(e)}") from None


def check_state_dict(path: str | os.PathLike, card: ModelCard,
                     state: dict[str, torch.Tensor], entry: str = "weights") -> None:
    """Raise CheckpointError unless ``state`` (the file's ``entry``) fits the model the card
    describes, exactly."""
    expected = {k: tuple(v.shape) for k, v in card.build_model().state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} {got[k]} (expected {expected[k]})" for k in sorted(expected.keys() & got.keys())
             if expected[k] != got[k]]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)):
            if items:
                shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3
                                                else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointError(path, f"{entry} do not fit DFANet {card.variant} with "
                                    f"{card.num_classes} classes: " + "; ".join(parts))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[DFANet, ModelCard]:
    """Build the model a checkpoint describes, load its weights strictly, eval mode."""
    ckpt = read_checkpoint(path)
    model = ckpt.card.build_model()
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.to(device).eval(), ckpt.card


def slim(src: str | os.PathLike, dst: str | os.PathLike) -> ModelCard:
    """Write the deployable file (weights + card) of any checkpoint."""
    ckpt = read_checkpoint(src)
    model = ckpt.card.build_model()
    model.load_state_dict(ckpt.state_dict, strict=True)
    save_model(dst, model, ckpt.card)
    return ckpt.card
