"""``dfanet checkpoint inspect FILE`` and ``dfanet checkpoint slim SRC DST``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, LoadedCheckpoint, read_checkpoint, slim
from .metrics import format_percent


def summary(ckpt: LoadedCheckpoint) -> dict[str, Any]:
    """Everything ``inspect`` shows, as plain JSON-ready data."""
    card = ckpt.card
    out: dict[str, Any] = {
        "file": str(ckpt.path), "bytes": ckpt.path.stat().st_size,
        "kind": "training" if ckpt.training_state is not None else "deployable",
        "parameters": sum(v.numel() for k, v in ckpt.state_dict.items()
                          if not k.endswith(("running_mean", "running_var",
                                             "num_batches_tracked"))),
        "card": json.loads(card.to_json()),
    }
    ts = ckpt.training_state
    if ts is not None:
        groups = ts.get("optimizer", {}).get("param_groups", [{}])
        out["training"] = {k: ts.get(k) for k in ("iteration", "best_miou", "best_iteration",
                                                   "elapsed_s", "world_size")}
        out["training"]["lr"] = groups[0].get("lr") if groups else None
        out["training"]["total_iterations"] = ts.get("config", {}).get("iterations")
    return out


def describe(info: dict[str, Any]) -> str:
    """The human-readable report of ``summary``."""
    card = info["card"]
    h, w = card["input_size"]
    lines = [f"{info['file']}: {info['kind']} checkpoint, {info['bytes'] / 1e6:.1f} MB",
             f"  model       DFANet {card['variant']}, {card['num_classes']} classes, "
             f"{info['parameters']:,d} parameters, trained at {h}x{w} on "
             f"{card['dataset'] or 'an unnamed dataset'}",
             f"  input       RGB / 255, mean {card['mean']}, std {card['std']}; ignore label "
             f"{card['ignore_index']}"]
    prov = card.get("provenance", {})
    if prov:
        parts = [f"created {prov.get('created', '?')}"]
        if "iterations" in prov:
            parts.append(f"{prov['iterations']} iterations")
        if "train_seconds" in prov:
            parts.append(f"{prov['train_seconds'] / 60:.1f} min training")
        if "package_version" in prov:
            parts.append(f"dfanet {prov['package_version']}")
        if prov.get("git_commit"):
            parts.append(f"git {prov['git_commit'][:12]}")
        lines.append("  provenance  " + ", ".join(parts))
    metrics = card.get("metrics", {})
    for split, m in metrics.items():
        at = f" (weights of iteration {m['iteration']})" if "iteration" in m else ""
        lines.append(f"  {split:<11} mIoU {format_percent(m.get('miou')).strip()}, pixel acc "
                     f"{format_percent(m.get('pixel_acc')).strip()}{at}")
    splits = [s for s, m in metrics.items() if "iou" in m]
    if splits:
        width = max(len(n) for n in card["class_names"])
        lines.append(f"  {'IoU per class':<{width + 4}}" + "".join(f"{s:>8}" for s in splits))
        for i, (name, rgb) in enumerate(zip(card["class_names"], card["class_colors"],
                                            strict=True)):
            row = "".join(f"{format_percent(metrics[s]['iou'][i]):>8}" for s in splits)
            lines.append(f"    {i:>2} {name:<{width}}{row}    rgb {tuple(rgb)}")
    else:
        lines.append("  classes     " + ", ".join(
            f"{i} {n}" for i, n in enumerate(card["class_names"])))
    t = info.get("training")
    if t:
        best = (f"; best mIoU {100 * t['best_miou']:.1f} at iteration {t['best_iteration']}"
                if t.get("best_miou") is not None and t["best_miou"] >= 0 else "")
        lr = f", lr {t['lr']:.3g}" if t.get("lr") is not None else ""
        lines.append(f"  training    iteration {t['iteration']}/{t['total_iterations']}"
                     f"{lr}, {t.get('world_size') or 1} process(es){best}; resumable "
                     f"(dfanet train --resume)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="print a checkpoint's metadata and metrics")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    slim_p = sub.add_parser("slim", help="write the deployable .safetensors of any checkpoint")
    slim_p.add_argument("src", type=Path)
    slim_p.add_argument("dst", type=Path)


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "inspect":
            info = summary(read_checkpoint(args.file))
            print(json.dumps(info, indent=1) if args.json else describe(info))
        else:
            if args.dst.suffix != ".safetensors":
                print(f"dfanet checkpoint slim: {args.dst}: the deployable file must end in "
                      f".safetensors", file=sys.stderr)
                return 2
            card = slim(args.src, args.dst)
            print(f"wrote {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB, from "
                  f"{args.src.stat().st_size / 1e6:.1f} MB): DFANet {card.variant}, "
                  f"{card.num_classes} classes, weights and model card only")
    except CheckpointError as e:
        print(f"dfanet checkpoint: {e}", file=sys.stderr)
        return 1
    return 0
