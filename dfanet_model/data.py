"""Datasets: CamVid (SegNet layout) and Cityscapes, decoded whole into uint8 tensors.

A split is a list of (image, label) file pairs plus, once loaded, two tensors: images
(N, H, W, 3) uint8 and labels (N, H, W) uint8 holding train ids with the table's ignore value.
Where the decoded split fits, it lives on the training device and batches are gathered there
(no loader processes, no host-to-device copy per step); otherwise it stays in host
memory, or, when even that is too small, frames are decoded per batch ("lazy").

Bad data raises ``DataError`` naming the folder or file and what is wrong with it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .classes import CAMVID, CITYSCAPES, CLASS_TABLES, ClassTable

# Camera image files, as the dataset readers and ``dfanet bag make`` both find them: every
# format here decodes through PIL to RGB.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
PLACEMENTS = ("auto", "device", "host", "lazy")


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file or folder."""


# Cityscapes labelIds -> the 19 train ids (the official label table); everything else ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _label_lut(dataset: str) -> np.ndarray:
    """Raw label value -> train id; -1 marks values that may not occur in that dataset."""
    lut = np.full(256, -1, dtype=np.int16)
    if dataset == "camvid":
        lut[:CAMVID.num_classes + 1] = np.arange(CAMVID.num_classes + 1)  # 11 is void
    elif dataset == "cityscapes":
        lut[:34] = CITYSCAPES.ignore_index  # ids 0..33 exist; 19 of them are trained
        lut[255] = CITYSCAPES.ignore_index  # "license plate" (id -1) as stored in uint8
        for raw, train_id in CITYSCAPES_TRAIN_IDS.items():
            lut[raw] = train_id
    else:
        raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(CLASS_TABLES)}")
    return lut


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise DataError(f"{what}: missing folder {folder}")


def _unpaired(kind: str, names: Sequence[str], where: Path) -> DataError:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return DataError(f"{len(names)} {kind} in {where}: {shown}")


def camvid_files(root: str | os.PathLike, split: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs of CamVid's ``split``: <split>/*.{png,jpg} + <split>annot/*.png."""
    root = Path(root)
    images_dir, labels_dir = root / split, root / f"{split}annot"
    _require_dir(root, f"CamVid root {root}")
    _require_dir(images_dir, f"CamVid split {split!r}")
    _require_dir(labels_dir, f"CamVid split {split!r} labels")
    images = {p.stem: p for p in _images_in(images_dir)}
    labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() == ".png"}
    if not images:
        raise DataError(f"CamVid split {split!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                        f"{images_dir}")
    lonely = sorted(f"{images[s].name} (no {s}.png)" for s in images.keys() - labels.keys())
    if lonely:
        raise _unpaired("images without a label", lonely, labels_dir)
    orphans = sorted(labels[s].name for s in labels.keys() - images.keys())
    if orphans:
        raise _unpaired("labels without an image", orphans, images_dir)
    return [(images[s], labels[s]) for s in sorted(images)]


def cityscapes_files(root: str | os.PathLike, split: str) -> list[tuple[Path, Path]]:
    """Pairs leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/.../*_gtFine_labelIds.png."""
    root = Path(root)
    images_dir, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    _require_dir(root, f"Cityscapes root {root}")
    _require_dir(images_dir, f"Cityscapes split {split!r}")
    _require_dir(labels_dir, f"Cityscapes split {split!r} labels")
    images = {p.relative_to(images_dir).as_posix()[:-len("_leftImg8bit.png")]: p
              for p in images_dir.glob("*/*_leftImg8bit.png")}
    labels = {p.relative_to(labels_dir).as_posix()[:-len("_gtFine_labelIds.png")]: p
              for p in labels_dir.glob("*/*_gtFine_labelIds.png")}
    if not images:
        raise DataError(f"Cityscapes split {split!r}: no <city>/*_leftImg8bit.png in "
                        f"{images_dir}")
    lonely = sorted(f"{k}_leftImg8bit.png" for k in images.keys() - labels.keys())
    if lonely:
        raise _unpaired("images without a *_gtFine_labelIds.png label", lonely, labels_dir)
    orphans = sorted(f"{k}_gtFine_labelIds.png" for k in labels.keys() - images.keys())
    if orphans:
        raise _unpaired("labels without an image", orphans, images_dir)
    return [(images[k], labels[k]) for k in sorted(images)]


DATASETS = {"camvid": camvid_files, "cityscapes": cityscapes_files}


def decode_image(path: Path) -> np.ndarray:
    """An RGB image file as an (H, W, 3) uint8 array."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"unreadable image {path}: {e}") from None


def decode_label(path: Path, lut: np.ndarray, table: ClassTable) -> np.ndarray:
    """A single-channel index label file as (H, W) uint8 train ids, every value checked."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(f"label {path}: mode {im.mode}, expected a single-channel "
                                f"index image (L or P) holding class ids")
            raw = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"unreadable label {path}: {e}") from None
    mapped = lut[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0]).tolist()
        valid = np.flatnonzero(lut >= 0).tolist()
        raise DataError(f"label {path}: values {bad[:10]} are neither a class of "
                        f"{table.dataset} nor its ignore value (valid raw values: "
                        f"{_ranges(valid)})")
    return mapped.astype(np.uint8)


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}..{v}" if v > start else f"{v}")
            start = None
    return ", ".join(out)


def _decode_pair(pair: tuple[Path, Path], lut: np.ndarray, table: ClassTable
                 ) -> tuple[np.ndarray, np.ndarray]:
    image, label = decode_image(pair[0]), decode_label(pair[1], lut, table)
    if image.shape[:2] != label.shape:
        raise DataError(f"label {pair[1]} is {label.shape[1]}x{label.shape[0]} but its image "
                        f"{pair[0]} is {image.shape[1]}x{image.shape[0]} (width x height)")
    return image, label


@dataclass
class SegmentationSplit:
    """One split: its file pairs and, unless lazy, the decoded images and labels."""

    dataset: str
    split: str
    files: list[tuple[Path, Path]]
    table: ClassTable
    images: torch.Tensor | None = None  # (N, H, W, 3) uint8
    labels: torch.Tensor | None = None  # (N, H, W) uint8
    workers: int = 4

    def __len__(self) -> int:
        return len(self._resident_tensors()[1]) if self.resident else len(self.files)

    @property
    def names(self) -> list[str]:
        return [image.name for image, _ in self.files]

    @property
    def resident(self) -> bool:
        return self.images is not None

    def _resident_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded images and labels, which ``load`` always sets together."""
        if self.images is None or self.labels is None:
            raise RuntimeError(f"{self.dataset} {self.split}: frames not decoded (call load())")
        return self.images, self.labels

    def decode(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the given frames from their files (threads: Pillow releases the GIL)."""
        lut = _label_lut(self.dataset)
        pairs = [self.files[i] for i in indices]
        with ThreadPoolExecutor(max(1, min(self.workers, len(pairs)))) as pool:
            decoded = list(pool.map(lambda p: _decode_pair(p, lut, self.table), pairs))
        sizes = {im.shape[:2] for im, _ in decoded}
        if len(sizes) > 1:
            first = decoded[0][0].shape[:2]
            odd = next(p[0] for p, (im, _) in zip(pairs, decoded, strict=True)
                       if im.shape[:2] != first)
            raise DataError(f"{self.dataset} {self.split}: images differ in size ({odd} is "
                            f"not {first[1]}x{first[0]}); a split must have one image size")
        return (torch.from_numpy(np.stack([im for im, _ in decoded])),
                torch.from_numpy(np.stack([lb for _, lb in decoded])))

    def load(self) -> "SegmentationSplit":
        """Decode every frame into host memory."""
        if not self.resident:
            self.images, self.labels = self.decode(range(len(self)))
        return self

    def to(self, device: torch.device | str) -> "SegmentationSplit":
        """Decode (if needed) and move the tensors to ``device``."""
        self.load()
        images, labels = self._resident_tensors()
        self.images, self.labels = images.to(device), labels.to(device)
        return self

    def batch(self, indices: torch.Tensor, device: torch.device | str
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, H, W, 3) and labels (B, H, W), uint8, on ``device``."""
        if not self.resident:
            images, labels = self.decode(indices.tolist())
        else:
            resident_images, resident_labels = self._resident_tensors()
            idx = indices.to(resident_images.device)
            images = resident_images.index_select(0, idx)
            labels = resident_labels.index_select(0, idx)
        # Host-resident splits pay one copy of the batch per step (a few MB); only splits
        # too large for the device take this path.
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the first frame, read from its header only."""
        if self.resident:
            images = self._resident_tensors()[0]
            return images.shape[1], images.shape[2]
        try:
            with Image.open(self.files[0][0]) as im:
                return im.height, im.width
        except OSError as e:
            raise DataError(f"unreadable image {self.files[0][0]}: {e}") from None

    def nbytes(self) -> int:
        h, w = self.frame_size()
        return len(self) * h * w * 4


def split_files(dataset: str, root: str | os.PathLike, split: str
                ) -> list[tuple[Path, Path]]:
    """The file pairs of a split expression: splits joined by ``+``, each optionally narrowed
    to one drive (CamVid sequence or Cityscapes city) as ``split/DRIVE``.

    ``train+val`` is the usual CamVid training set for a test score; ``train/0006R0`` is the
    one drive held out from training to choose a recipe on (val shares its drive with train).
    A drive is the part of a frame's file name before its first ``_``.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    pairs: list[tuple[Path, Path]] = []
    for term in split.split("+"):
        name, _, drive = (part.strip() for part in term.partition("/"))
        if not name or (term.count("/") and not drive) or term.count("/") > 1:
            raise DataError(f"split {split!r}: {term!r} is not SPLIT or SPLIT/DRIVE")
        files = DATASETS[dataset](root, name)
        if drive:
            of_drive = [pair for pair in files if _drive(pair[0]) == drive]
            if not of_drive:
                present = sorted({_drive(image) for image, _ in files})
                raise DataError(f"split {split!r}: no frame of drive {drive!r} in {name!r} "
                                f"(its drives: {', '.join(present)})")
            files = of_drive
        pairs += files
    seen: set[Path] = set()
    repeated = []
    for image, _ in pairs:
        if image in seen:
            repeated.append(image.name)
        seen.add(image)
    if repeated:
        raise DataError(f"split {split!r} names {len(repeated)} frame(s) twice, e.g. "
                        f"{repeated[0]}")
    return pairs


def _drive(image: Path) -> str:
    return image.name.partition("_")[0]


def drives(dataset: str, root: str | os.PathLike, split: str) -> list[str]:
    """The drives of a split, each once, sorted."""
    return sorted({_drive(image) for image, _ in split_files(dataset, root, split)})


def open_split(dataset: str, root: str | os.PathLike, split: str, workers: int = 4
               ) -> SegmentationSplit:
    """List and pair the files of a split expression (``split_files``); nothing decoded yet."""
    return SegmentationSplit(dataset, split, split_files(dataset, root, split),
                             CLASS_TABLES[dataset], workers=workers)


def _available_host_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def choose_placement(nbytes: int, device: torch.device, requested: str = "auto") -> str:
    """Where a decoded split of ``nbytes`` lives: 'device', 'host' or 'lazy'."""
    if requested not in PLACEMENTS:
        raise ValueError(f"data placement {requested!r}; valid: {', '.join(PLACEMENTS)}")
    if requested != "auto":
        return requested
    # Leave half of the free memory to the model, activations and the other splits.
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < free // 2:
            return "device"
    if nbytes < _available_host_bytes() // 2:
        return "device" if device.type == "cpu" else "host"
    return "lazy"


def load_split(dataset: str, root: str | os.PathLike, split: str, device: torch.device | str,
               placement: str = "auto", workers: int = 4) -> SegmentationSplit:
    """Open a split and place it: decoded on the device, in host memory, or lazy."""
    device = torch.device(device)
    data = open_split(dataset, root, split, workers)
    where = choose_placement(data.nbytes(), device, placement)
    if where == "device":
        data.to(device)
    elif where == "host":
        data.load()
    return data


def sample_indices(num_items: int, iteration: int, batch_size: int, seed: int,
                   rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The frames of ``rank``'s batch at ``iteration``: epochs of shuffled, disjoint batches.

    A pure function of its arguments (each epoch's order comes from ``seed`` and the epoch
    number), so a resumed run draws exactly the frames an uninterrupted one would, and the
    ranks of a distributed job never see the same frame in one step.
    """
    start = (iteration * world_size + rank) * batch_size
    positions = torch.arange(start, start + batch_size)
    epochs, offsets = positions // num_items, positions % num_items
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        order = torch.randperm(num_items,
                               generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        sel = epochs == epoch
        out[sel] = order[offsets[sel]]
    return out


def class_pixel_counts(split: SegmentationSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: pixels of that class, and pixels of the images in which it appears."""
    n = split.table.num_classes
    pixels = torch.zeros(n, dtype=torch.float64)
    image_pixels = torch.zeros(n, dtype=torch.float64)
    for start in range(0, len(split), 64):
        idx = torch.arange(start, min(start + 64, len(split)))
        if split.resident:
            resident_labels = split._resident_tensors()[1]
            labels = resident_labels.index_select(0, idx.to(resident_labels.device))
        else:
            labels = split.decode(idx.tolist())[1]
        # One bincount per chunk: value v of image i lands in bin 256 * i + v.
        flat = labels.reshape(len(labels), -1).long()
        flat = flat + 256 * torch.arange(len(labels), device=flat.device)[:, None]
        counts = torch.bincount(flat.reshape(-1), minlength=256 * len(labels))
        counts = counts.reshape(len(labels), 256)[:, :n].double().cpu()
        pixels += counts.sum(0)
        image_pixels += (counts > 0).double().sum(0) * flat.shape[1]
    return pixels, image_pixels


def median_frequency_weights(split: SegmentationSplit) -> torch.Tensor:
    """Class weights median(freq) / freq(c), freq(c) = pixels of c / pixels of images with c.

    (Eigen and Fergus, ICCV 2015; the balancing SegNet used on this CamVid split.)  Classes
    that never occur get weight 0: they contribute no pixels anyway.
    """
    pixels, image_pixels = class_pixel_counts(split)
    present = pixels > 0
    if not present.any():
        raise DataError(f"{split.dataset} {split.split}: no labelled pixels to weight classes")
    freq = torch.where(present, pixels / image_pixels.clamp(min=1), torch.nan)
    weights = freq[present].median() / freq
    return torch.nan_to_num(weights, nan=0.0).float()


def inverse_log_frequency_weights(split: SegmentationSplit, c: float = 1.02) -> torch.Tensor:
    """Class weights 1 / ln(c + p(class)), p = the class's share of all labelled pixels.

    (Paszke et al., ENet, 2016.)  Bounded by 1 / ln(c) (about 50), so rare classes gain
    weight without the extremes of median-frequency balancing; absent classes get weight 0.
    """
    pixels, _ = class_pixel_counts(split)
    if not (pixels > 0).any():
        raise DataError(f"{split.dataset} {split.split}: no labelled pixels to weight classes")
    weights = 1.0 / torch.log(c + pixels / pixels.sum())
    return torch.where(pixels > 0, weights, 0.0).float()
