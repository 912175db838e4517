"""Measurements behind the shipped model's recorded figures, re-run when the model is replaced.

* ``compare_precisions``: the node's engine in fp32 and in bf16 on a dataset split, the
  condition under which ``backend: auto`` may run the weights in bf16
  (``dfanet_model.resources.BF16_CHECKED_SHA256``; ``test/test_shipped_model.py`` checks it).
* ``pin_candidates``: pixels of a frame fit to pin the model's output in a test: inside a
  region of one ground-truth class, predicted as that class by a clear lead.

``python -m dfanet_tools.shipped_model --data CAMVID`` prints both for the shipped checkpoint,
with its SHA-256 (``scripts/shipped_model_figures.sh`` runs it among the other figures).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfanet_model.resources import DATA_DIR, DEFAULT_CHECKPOINT, file_sha256

# Pinned pixels lie this far from any other ground-truth class, and their top logit leads
# the runner-up within this range: far above the ~1e-4 CPUs move logits by, low enough that
# a subtle change to the model or the input path still moves it measurably.
PIN_MARGIN_PX = 20
PIN_LEAD_RANGE = (2.2, 3.3)


@dataclass
class PrecisionComparison:
    """CamVid-style scores of the engine's labels in each precision, and their agreement."""

    miou: dict[str, float]  # backend -> mIoU
    same_fraction: float  # pixels whose class is the same in both
    frames: int


def compare_precisions(checkpoint: Path, root: Path, split: str = "test",
                       backends: tuple[str, str] = ("openvino", "openvino-bf16"),
                       ) -> PrecisionComparison:
    """Every frame of ``split`` through the node's engine with each backend (labels only)."""
    from dfanet_model.checkpoint import read_checkpoint
    from dfanet_model.data import open_split
    from dfanet_model.evaluate import split_batches
    from dfanet_model.metrics import ConfusionMatrix
    from dfanet_ros.engine import SegmentationEngine

    card = read_checkpoint(checkpoint).card
    engines = {name: SegmentationEngine(checkpoint, "cpu", backend=name) for name in backends}
    data = open_split(card.dataset, root, split)
    matrices = {name: ConfusionMatrix(card.num_classes, data.table.ignore_index)
                for name in backends}
    same = pixels = 0
    for images, labels in split_batches(data, torch.device("cpu"), 8):
        for image, label in zip(images.numpy(), labels, strict=True):
            out: list[np.ndarray] = []
            for name, engine in engines.items():
                predicted = engine.run(image, outputs=frozenset({"label"})).label
                assert predicted is not None  # the one output asked for
                matrices[name].update(label[None], torch.from_numpy(predicted)[None].long())
                out.append(predicted)
            first, second = out
            same += int((first == second).sum())
            pixels += first.size
    return PrecisionComparison({name: m.compute().miou for name, m in matrices.items()},
                               same / pixels, len(data))


def pin_candidates(checkpoint: Path, image: Path, label: Path
                   ) -> dict[str, tuple[int, int, float]]:
    """For each class with such a pixel in ``image``: (row, column, lead) of one whose whole
    square of ``PIN_MARGIN_PX`` around it has that ground-truth class, predicted as that class
    with its top logit ahead of the runner-up by an amount in ``PIN_LEAD_RANGE`` (the middle
    one of those in row-major order)."""
    from PIL import Image

    from dfanet_model.augment import normalize
    from dfanet_model.checkpoint import load_model

    model, card = load_model(checkpoint)
    with Image.open(image) as im:
        rgb = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    with Image.open(label) as im:
        truth = torch.from_numpy(np.asarray(im).astype(np.int64))
    with torch.no_grad():
        logits = model(normalize(rgb[None], card.mean, card.std))[0]
    top = logits.topk(2, dim=0)
    predicted, lead = top.indices[0], top.values[0] - top.values[1]
    # A class fills the square around a pixel when the square's minimum of its indicator is 1.
    window = 2 * PIN_MARGIN_PX + 1
    indicator = torch.nn.functional.one_hot(truth.clamp(max=card.num_classes),
                                            card.num_classes + 1).permute(2, 0, 1).float()
    filled = -torch.nn.functional.max_pool2d(-indicator[None], window, 1, PIN_MARGIN_PX)[0]
    low, high = PIN_LEAD_RANGE
    found = {}
    for k, name in enumerate(card.class_names):
        ok = (filled[k] > 0.5) & (predicted == k) & (lead >= low) & (lead <= high)
        rows, cols = torch.nonzero(ok, as_tuple=True)
        if len(rows):
            i = len(rows) // 2
            r, c = int(rows[i]), int(cols[i])
            found[name] = (r, c, round(float(lead[r, c]), 3))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", type=Path, required=True, help="CamVid root (SegNet layout)")
    parser.add_argument("--pin-frame", default="Seq05VD_f02160",
                        help="sample test frame to search for pinned pixels")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{args.checkpoint}: SHA-256 {file_sha256(args.checkpoint)}")
    sample = DATA_DIR / "camvid_sample"
    print(f"pin candidates in {args.pin_frame} (row, column, lead):")
    for name, where in pin_candidates(args.checkpoint, sample / "test" / f"{args.pin_frame}.jpg",
                                      sample / "testannot" / f"{args.pin_frame}.png").items():
        print(f"  {name}: {where}")
    result = compare_precisions(args.checkpoint, args.data)
    fp32, bf16 = result.miou.values()
    print(f"engine on {result.frames} test frames: mIoU fp32 {100 * fp32:.2f}, bf16 "
          f"{100 * bf16:.2f}; {100 * result.same_fraction:.2f}% of pixels the same class")
    return 0


if __name__ == "__main__":
    sys.exit(main())
