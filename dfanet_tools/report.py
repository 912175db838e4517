"""The report folder of a bag evaluation: JSON, a Markdown summary, plots and overlay snapshots.

Layout of ``REPORT_DIR``::

    report.json     every number, per class and per frame
    summary.md      the numbers a person reads first, linking the pictures below
    iou.png         per-class IoU bars with the mIoU line
    latency.png     latency per frame over time, and its histogram
    overlays/       a few frames: the camera image blended with the predicted class colours,
                    beside the same blend of the ground truth (void: black)
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfanet_model.metrics import json_safe
from dfanet_ros.overlay import blend_overlay_

REPORT_JSON = "report.json"
SUMMARY_MD = "summary.md"
IOU_PNG = "iou.png"
LATENCY_PNG = "latency.png"
OVERLAY_DIR = "overlays"


def overlay_image(image: np.ndarray, label: np.ndarray, colors: Sequence[Sequence[int]],
                  alpha: float = 0.5) -> np.ndarray:
    """RGB image blended with the colour of each pixel's class (ids beyond the table: black),
    by the engine's blend, so a report's overlay equals the node's to the bit."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:len(colors)] = np.asarray(colors, dtype=np.uint8)
    rgb = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    blend = blend_overlay_(torch.from_numpy(rgb.astype(np.float32)),
                           torch.from_numpy(palette[label]),
                           torch.tensor(1.0 - alpha, dtype=torch.float32))
    return blend.to(torch.uint8).numpy()


def format_number(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    """``value * scale`` to ``digits`` decimals; "n/a" for None, NaN and infinities."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def summary_markdown(result: dict[str, Any], pictures: bool = True) -> str:
    """The human-readable summary of an evaluation result (see ``BagEvalResult.to_json``)."""
    fmt = format_number
    f, lat = result["frames"], result["latency_ms"]
    lines = [
        f"# Bag evaluation: {Path(result['bag']).name}",
        "",
        f"- mode: {result['mode']} ({result['pacing']}), device: {result['device']}",
        f"- model: DFANet {result['model']['variant']}, {result['model']['dataset'] or 'unknown'}"
        f" classes, checkpoint `{Path(result['checkpoint']).name}`",
        f"- topics: camera `{result['camera_topic']}`, ground truth "
        f"`{result['label_topic'] or 'none'}`",
        "",
        "| mIoU | pixel acc. | frames sent | answered | dropped | scored | latency p50 / p90 / "
        "p99 (ms) | throughput (frames/s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {fmt(result['miou'], 2, 100)} | {fmt(result['pixel_acc'], 2, 100)} | {f['sent']} | "
        f"{f['answered']} | {f['dropped']} | {f['scored']} | {fmt(lat['p50'])} / "
        f"{fmt(lat['p90'])} / {fmt(lat['p99'])} | {fmt(result['throughput_fps'])} |",
        "",
        f"Latency is {result['latency_definition']}.",
    ]
    node = result.get("node_latency_ms")
    if node and math.isfinite(node["total"]["p50"]):
        lines += [
            "",
            f"Inside the node ({node['definition']}): total p50 {fmt(node['total']['p50'])} / "
            f"p99 {fmt(node['total']['p99'])} ms, inference p50 "
            f"{fmt(node['inference']['p50'])} / p99 {fmt(node['inference']['p99'])} ms.",
        ]
    lines += [
        "",
        "| class | IoU (%) | accuracy (%) |",
        "|---|---|---|",
    ]
    lines += [f"| {c['name']} | {fmt(c['iou'], 2, 100)} | {fmt(c['acc'], 2, 100)} |"
              for c in result["per_class"]]
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    if pictures:
        lines += ["", f"![per-class IoU]({IOU_PNG})", "", f"![latency]({LATENCY_PNG})"]
        lines += [f"![overlay]({OVERLAY_DIR}/{name})" for name in result.get("overlays", [])]
    return "\n".join(lines) + "\n"


def plot_iou(result: dict[str, Any], path: str | os.PathLike) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in result["per_class"]]
    ious = [0.0 if c["iou"] is None or not math.isfinite(c["iou"]) else 100 * c["iou"]
            for c in result["per_class"]]
    colors = [np.asarray(c["color"]) / 255.0 for c in result["per_class"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.0))
    bars = ax.bar(range(len(names)), ious, color=colors, edgecolor="black", linewidth=0.5)
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in ious], fontsize=8, padding=2)
    if math.isfinite(result["miou"]):
        ax.axhline(100 * result["miou"], color="red", linestyle="--",
                   label=f"mIoU {100 * result['miou']:.1f}%")
        ax.legend(loc="upper right")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-class IoU ({result['mode']}, {result['frames']['scored']} frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(result: dict[str, Any], path: str | os.PathLike) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [r for r in result["per_frame"] if r["latency_ms"] is not None]
    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(11.0, 3.8))
    if frames:
        t = [r["sent_s"] for r in frames]
        ms = [r["latency_ms"] for r in frames]
        ax_t.plot(t, ms, marker=".", linewidth=0.8)
        ax_h.hist(ms, bins=min(50, max(5, len(ms) // 3)), color="tab:blue", edgecolor="black",
                  linewidth=0.4)
        for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
            value = result["latency_ms"][key]
            ax_h.axvline(value, color="red", linestyle=style, label=f"{key} {value:.1f} ms")
        ax_h.legend(loc="best")
    dropped = [r["sent_s"] for r in result["per_frame"] if r["latency_ms"] is None]
    if dropped:
        ax_t.plot(dropped, [0] * len(dropped), "rx", label=f"dropped ({len(dropped)})")
        ax_t.legend(loc="upper right")
    ax_t.set_xlabel("time since first frame sent (s)")
    ax_t.set_ylabel("latency (ms)")
    ax_t.set_title("Latency per frame")
    ax_h.set_xlabel("latency (ms)")
    ax_h.set_ylabel("frames")
    ax_h.set_title("Latency histogram")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out_dir: str | os.PathLike, result: dict[str, Any],
                 snapshots: Sequence[tuple[str, np.ndarray]] = ()) -> Path:
    """Write the report folder; ``snapshots`` are (file name, RGB overlay) pairs."""
    from PIL import Image

    out = Path(out_dir)
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
    names = []
    for name, rgb in snapshots:
        Image.fromarray(rgb).save(out / OVERLAY_DIR / name)
        names.append(name)
    result = dict(result, overlays=names)
    (out / REPORT_JSON).write_text(json.dumps(json_safe(result), indent=1) + "\n")
    plot_iou(result, out / IOU_PNG)
    plot_latency(result, out / LATENCY_PNG)
    (out / SUMMARY_MD).write_text(summary_markdown(result))
    return out
