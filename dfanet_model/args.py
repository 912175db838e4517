"""argparse types shared by the library's commands."""
from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` -> (height, width); the argparse type of every size option."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


MODEL_SIZE_HELP = ("network input size: 'checkpoint' (its training size, the node's default), "
                   "'frame' (each frame's own size) or HEIGHTxWIDTH (default: checkpoint)")


def parse_model_size(text: str) -> tuple[int, int] | None:
    """The one spelling of a model size: ``checkpoint`` -> None (the checkpoint's training
    size, everywhere the default), ``frame`` -> (0, 0) (each frame's own size), ``HxW``."""
    if text.strip().lower() == "checkpoint":
        return None
    if text.strip().lower() == "frame":
        return (0, 0)
    try:
        return parse_size(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"model size must be checkpoint, frame or HEIGHTxWIDTH, got {text!r}") from None
