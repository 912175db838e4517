"""``dfanet bag make``: turn an image folder or a dataset split into a rosbag2 drive.

The camera topic carries ``sensor_msgs/Image`` (rgb8) or, with ``compressed``,
``sensor_msgs/CompressedImage`` holding each source file's own JPEG/PNG bytes; when labels exist,
a ground-truth topic carries ``mono8`` class-id images with the same header stamps.  Frames go in
sequence order (file name order; for CamVid test: 0001TP, then Seq05VD) at a fixed rate.
"""
from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfanet_model.data import IMAGE_SUFFIXES

from .io import (
    BAG_CAMERA_TOPIC,
    COMPRESSED_IMAGE,
    DEFAULT_LABEL_TOPIC,
    IMAGE,
    BagWriter,
    compressed_message,
    image_message,
    normalize_topic,
)

_COMPRESSED_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


@dataclass(frozen=True)
class Frame:
    image: Path
    label: Path | None


@dataclass
class MadeBag:
    path: Path
    frames: int
    labels: int
    camera_topic: str
    label_topic: str | None
    rate: float
    storage: str
    dataset: str | None  # the dataset layout read, None for a plain image folder


def _natural_key(path: Path) -> list:
    """Sort key that orders frame2 before frame10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def find_frames(folder: str | os.PathLike) -> list[Frame]:
    """The images of a plain folder in sequence order, each with its label file if one exists.

    Labels (raw class ids, written unchanged) come from a sibling ``<folder>annot/`` with files
    of the same stem, as in the SegNet layout; images without one get no label.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"source {folder}: not a directory")
    images = _images_in(folder)
    if not images:
        raise FileNotFoundError(f"source {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) "
                                "found")
    labels_dir = folder.parent / f"{folder.name}annot"
    labels = {p.stem: p for p in _images_in(labels_dir)} if labels_dir.is_dir() else {}
    return [Frame(p, labels.get(p.stem)) for p in images]


def detect_dataset(source: Path, split: str) -> str | None:
    """The dataset layout of ``source`` for ``split``, or None for a plain image folder."""
    if (source / "leftImg8bit" / split).is_dir():
        return "cityscapes"
    if (source / split).is_dir():
        return "camvid"
    return None


@dataclass
class FrameSource:
    """Image files in sequence order and a reader of frame i: (RGB (H, W, 3), label or None)."""

    images: list[Path]
    has_labels: bool
    read: Callable[[int], tuple[np.ndarray, np.ndarray | None]]
    dataset: str | None


def open_source(source: str | os.PathLike, split: str = "test", dataset: str | None = None
                ) -> FrameSource:
    """The frames of a dataset split or of a plain image folder (see ``find_frames``).

    A dataset root (CamVid's SegNet layout ``<split>/`` + ``<split>annot/``, or Cityscapes'
    ``leftImg8bit/`` + ``gtFine/``) is read by ``dfanet_model.data``: labels become the train
    ids of the dataset's class table, void its ignore value.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"source {source}: not a directory")
    dataset = dataset or detect_dataset(source, split)
    if dataset is not None:
        from dfanet_model.data import open_split

        data = open_split(dataset, source, split, workers=1)

        def read_split(i: int) -> tuple[np.ndarray, np.ndarray | None]:
            images, labels = data.decode([i])
            return images[0].numpy(), labels[0].numpy()

        return FrameSource([image for image, _ in data.files], True, read_split, dataset)

    frames = find_frames(source)

    def read_folder(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        frame = frames[i]
        rgb = _read_rgb(frame.image)
        if frame.label is None:
            return rgb, None
        label = _read_label(frame.label)
        if label.shape != rgb.shape[:2]:
            raise ValueError(f"label {frame.label}: size {label.shape[0]}x{label.shape[1]} "
                             f"differs from its image's {rgb.shape[0]}x{rgb.shape[1]}")
        return rgb, label

    return FrameSource([f.image for f in frames], any(f.label for f in frames), read_folder,
                       None)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_label(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I;8"):
            raise ValueError(f"label {path}: mode {im.mode}, expected a single-channel 8-bit "
                             "image of class ids")
        return np.asarray(im)


def _compressed_bytes(path: Path) -> tuple[bytes, str]:
    """The file's own bytes when it is JPEG/PNG (no re-encoding loss), else a PNG encoding."""
    fmt = _COMPRESSED_FORMATS.get(path.suffix.lower())
    if fmt is not None:
        return path.read_bytes(), fmt
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(_read_rgb(path)).save(buf, format="PNG")
    return buf.getvalue(), "png"


def make_bag(out: str | os.PathLike, source: str | os.PathLike, *, split: str = "test",
             dataset: str | None = None, rate: float = 15.0, storage: str = "mcap",
             compressed: bool = False, topic: str = BAG_CAMERA_TOPIC,
             label_topic: str = DEFAULT_LABEL_TOPIC, frame_id: str = "camera",
             limit: int | None = None, start_ns: int | None = None,
             progress: bool = False) -> MadeBag:
    """Write the frames of ``source`` (see ``open_source``) into a new bag at ``out``."""
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    frames = open_source(source, split, dataset)
    count = len(frames.images)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        count = min(count, limit)
    # image_transport's convention: the compressed variant of topic T is T/compressed.
    if compressed and not topic.rstrip("/").endswith("/compressed"):
        topic = topic.rstrip("/") + "/compressed"
    if start_ns is None:
        start_ns = int(time.time()) * 1_000_000_000
    period_ns = round(1e9 / rate)
    n_labels = 0
    indices: Iterable[int] = range(count)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="bag make", unit="frame")
    with BagWriter(out, storage) as writer:
        writer.add_topic(topic, COMPRESSED_IMAGE if compressed else IMAGE)
        if frames.has_labels:
            writer.add_topic(label_topic, IMAGE)
        for i in indices:
            stamp = start_ns + i * period_ns
            rgb, label = frames.read(i)
            if compressed:
                data, fmt = _compressed_bytes(frames.images[i])
                writer.write(topic, compressed_message(data, fmt, stamp, frame_id), stamp)
            else:
                writer.write(topic, image_message(rgb, "rgb8", stamp, frame_id), stamp)
            if label is not None:
                writer.write(label_topic, image_message(label, "mono8", stamp, frame_id), stamp)
                n_labels += 1
    return MadeBag(Path(out), count, n_labels, normalize_topic(topic),
                   normalize_topic(label_topic) if n_labels else None, rate, storage,
                   frames.dataset)
