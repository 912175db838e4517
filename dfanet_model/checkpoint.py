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
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import __version__
from .network import VARIANTS, DFANet, build_dfanet

FORMAT_VERSION = 1
METADATA_KEY = "dfanet"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


@dataclass
class ModelCard:
    """Everything needed to use a set of weights, stored inside the checkpoint."""

    variant: str
    num_classes: int
    class_names: list[str]
    class_colors: list[list[int]]  # RGB, one triple per class
    ignore_index: int = 255
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # RGB in [0, 1]
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    input_size: list[int] = field(default_factory=lambda: [360, 480])  # trained at (h, w)
    dataset: str = ""
    # {"val": {"miou": .., "iou": [..], "pixel_acc": ..}, "test": {...}}
    metrics: dict[str, Any] = field(default_factory=dict)
    # {"created": iso time, "iterations": n, "package_version": v, ...}
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.variant.upper() not in VARIANTS:
            problems.append(f"unknown variant {self.variant!r} (valid: {', '.join(VARIANTS)})")
        if len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.class_colors) != self.num_classes or any(
                len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.class_colors):
            problems.append(f"class_colors must be {self.num_classes} RGB triples in 0..255")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std must hold 3 values each, std positive")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            problems.append(f"input_size must be [height, width], got {self.input_size}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("metadata is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown metadata fields {unknown}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"format version {data['format_version']} is newer than this "
                             f"package reads ({FORMAT_VERSION})")
        return cls(**data)

    def build_model(self) -> DFANet:
        return build_dfanet(self.variant, self.num_classes)


def stamp_provenance(card: ModelCard, **extra: Any) -> None:
    """Record when and by which package version ``card`` was written (plus ``extra``)."""
    card.provenance.update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           package_version=__version__, **extra)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; a checkpoint is not secret
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_model(path: str | os.PathLike, model: nn.Module, card: ModelCard) -> None:
    """Write a deployable checkpoint: weights (safetensors) + the model card."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={METADATA_KEY: card.to_json()}))


def save_training_state(path: str | os.PathLike, state: dict[str, Any], card: ModelCard) -> None:
    """Write a resumable training checkpoint (``state`` must hold only tensors and containers)."""
    payload = dict(state, card=card.to_json(), format_version=FORMAT_VERSION)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


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
    return LoadedCheckpoint(card, state, training, path)


def _read_safetensors(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    if header_len <= 0 or header_len > path.stat().st_size - 8:
        raise CheckpointError(path, "not a dfanet checkpoint (neither safetensors nor a "
                                    "torch training checkpoint)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(path, f"corrupt or truncated safetensors file ({e})") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(path, f"safetensors file without '{METADATA_KEY}' metadata: "
                                    "not a dfanet checkpoint")
    return _parse_card(path, meta[METADATA_KEY]), state


def _read_training_state(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor], dict]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(path, f"corrupt, truncated or unsafe torch file ({e})") from None
    if not isinstance(payload, dict) or "card" not in payload or "model" not in payload:
        raise CheckpointError(path, "torch file without 'card' and 'model' entries: "
                                    "not a dfanet training checkpoint")
    card = _parse_card(path, payload["card"])
    return card, payload["model"], payload


def _parse_card(path: Path, text: Any) -> ModelCard:
    try:
        return ModelCard.from_json(text)
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"invalid metadata: {e}") from None


def check_state_dict(path: str | os.PathLike, card: ModelCard,
                     state: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError unless ``state`` fits the model the card describes, exactly."""
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
        raise CheckpointError(path, f"weights do not fit DFANet {card.variant} with "
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
