"""``dfanet bag make``: turn an image folder or a dataset split into a rosbag2 drive.

The camera topic carries ``sensor_msgs/Image`` (rgb8) or, with ``compressed``,
``sensor_msgs/CompressedImage`` holding each source file's own JPEG/PNG bytes; when labels exist,
a ground-truth topic carries ``mono8`` class-id images with the same header stamps.  Frames go in
sequence order (natural sort of the file names) at a fixed rate.
"""
from __future__ import annotations

import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bag import (
    COMPRESSED_IMAGE,
    IMAGE,
    BagWriter,
    compressed_message,
    image_message,
    normalize_topic,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
DEFAULT_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/label_gt"
# image_transport's convention: the compressed variant of topic T is T/compressed.
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


def _natural_key(path: Path) -> list:
    """Sort key that orders frame2 before frame10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def find_frames(source: str | os.PathLike, split: str = "test") -> list[Frame]:
    """The frames of ``source`` in sequence order, each with its label file where one exists.

    ``source`` is either a dataset root in the SegNet layout (``<split>/`` images beside
    ``<split>annot/`` labels of the same stem) or a plain image folder (labels are taken from a
    sibling ``<folder>annot/`` when there is one).
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"source {source}: not a directory")
    if (source / split).is_dir():
        images_dir, labels_dir = source / split, source / f"{split}annot"
    else:
        images_dir, labels_dir = source, source.parent / f"{source.name}annot"
    images = _images_in(images_dir)
    if not images:
        raise FileNotFoundError(f"source {images_dir}: no images "
                                f"({', '.join(IMAGE_SUFFIXES)}) found")
    labels = {}
    if labels_dir.is_dir():
        labels = {p.stem: p for p in _images_in(labels_dir)}
    return [Frame(p, labels.get(p.stem)) for p in images]


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
             rate: float = 15.0, storage: str = "mcap", compressed: bool = False,
             topic: str = DEFAULT_TOPIC, label_topic: str = DEFAULT_LABEL_TOPIC,
             frame_id: str = "camera", limit: int | None = None,
             start_ns: int | None = None, progress: bool = False) -> MadeBag:
    """Write the frames of ``source`` (see ``find_frames``) into a new bag at ``out``."""
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    frames = find_frames(source, split)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        frames = frames[:limit]
    if compressed and not topic.rstrip("/").endswith("/compressed"):
        topic = topic.rstrip("/") + "/compressed"
    if start_ns is None:
        start_ns = int(time.time()) * 1_000_000_000
    period_ns = round(1e9 / rate)
    n_labels = 0
    iterator = frames
    if progress:
        from tqdm import tqdm
        iterator = tqdm(frames, desc="bag make", unit="frame")
    with BagWriter(out, storage) as writer:
        writer.add_topic(topic, COMPRESSED_IMAGE if compressed else IMAGE)
        if any(f.label is not None for f in frames):
            writer.add_topic(label_topic, IMAGE)
        for i, frame in enumerate(iterator):
            stamp = start_ns + i * period_ns
            if compressed:
                data, fmt = _compressed_bytes(frame.image)
                writer.write(topic, compressed_message(data, fmt, stamp, frame_id), stamp)
                if frame.label is not None:
                    from PIL import Image
                    with Image.open(frame.image) as im:
                        size = (im.height, im.width)
            else:
                rgb = _read_rgb(frame.image)
                writer.write(topic, image_message(rgb, "rgb8", stamp, frame_id), stamp)
                size = rgb.shape[:2]
            if frame.label is not None:
                label = _read_label(frame.label)
                if label.shape != size:
                    raise ValueError(f"label {frame.label}: size {label.shape[0]}x"
                                     f"{label.shape[1]} differs from its image's "
                                     f"{size[0]}x{size[1]}")
                writer.write(label_topic, image_message(label, "mono8", stamp, frame_id), stamp)
                n_labels += 1
    return MadeBag(Path(out), len(frames), n_labels, normalize_topic(topic),
                   normalize_topic(label_topic) if n_labels else None, rate, storage)
