"""``dfanet plot RUN_DIR``: training loss and evaluation mIoU curves of a run, as a PNG."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl (ValueError naming the line if one is not JSON)."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON record ({e.msg})") from None
    return records


def curves(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{'loss': {iteration: loss}, '<split> mIoU': {...}}; a resumed run's later record wins."""
    out: dict[str, dict[int, float]] = {"loss": {}}
    for r in records:
        if r.get("event") == "train" and r.get("loss") is not None:
            out["loss"][r["iteration"]] = r["loss"]
        elif r.get("event") == "eval" and r.get("miou") is not None:
            out.setdefault(f"{r['split']} mIoU", {})[r["iteration"]] = 100 * r["miou"]
    return out


def resumes(records: list[dict[str, Any]]) -> list[int]:
    """Iterations at which the run was resumed: where each later piece of a run begins."""
    return [r["iteration"] for r in records if r.get("event") == "resume"]


def plot(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run's loss and evaluation curves into ``out`` (default: its curves.png)."""
    import matplotlib.pyplot as plt

    fig = figure(run_dir)
    out = out or run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def figure(run_dir: Path) -> Any:
    """The curves as a matplotlib figure, titled with the run's name (never its path, which
    names the machine that drew it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir / "log.jsonl")
    data = curves(records)
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    loss = sorted(data.pop("loss").items())
    if loss:
        ax_loss.plot(*zip(*loss, strict=True), lw=1)
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="loss")
    for name, points in data.items():
        xs, ys = zip(*sorted(points.items()), strict=True)
        ax_miou.plot(xs, ys, marker="o", ms=3, lw=1, label=name)
    ax_miou.set(xlabel="iteration", ylabel="mIoU (%)", title="evaluation")
    if data:
        ax_miou.legend()
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        for i, it in enumerate(resumes(records)):  # piece boundaries of a resumed run
            ax.axvline(it, color="grey", ls=":", lw=1, label="resumed" if i == 0 else None)
    if resumes(records):
        ax_loss.legend()
    fig.suptitle(Path(run_dir).resolve().name)
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory holding log.jsonl")
    parser.add_argument("--out", type=Path, help="PNG to write (default RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    log = args.run_dir / "log.jsonl"
    if not log.is_file():
        print(f"dfanet plot: no log.jsonl in {args.run_dir}", file=sys.stderr)
        return 1
    try:
        out = plot(args.run_dir, args.out)
    except ValueError as e:
        print(f"dfanet plot: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def prediction_grid(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                    colors: Sequence[Sequence[int]], ignore_index: int, titles: Sequence[str],
                    out: Path) -> Path:
    """A PNG with one row per frame: image | ground truth | prediction (void drawn black)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = np.asarray(colors, np.uint8)
    palette[ignore_index] = 0
    rows = len(images)
    h, w = images.shape[1:3]
    fig, axes = plt.subplots(rows, 3, figsize=(9, 9 * rows * h / (3 * w) + 0.4),
                             squeeze=False, constrained_layout=True)
    for r in range(rows):
        for c, (picture, name) in enumerate(((images[r], titles[r]),
                                             (palette[labels[r]], "ground truth"),
                                             (palette[preds[r]], "prediction"))):
            axes[r, c].imshow(picture)
            axes[r, c].set_title(name, fontsize=8)
            axes[r, c].axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
