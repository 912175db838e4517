"""argparse types shared by the library's commands."""
from __future__ import annotations

import argparse
from collections.abc import Sequence


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


def model_size(size: tuple[int, int] | None, checkpoint_size: Sequence[int],
               frame_size: Sequence[int]) -> tuple[int, int]:
    """The (height, width) the network runs at for a ``parse_model_size`` value."""
    if size is None:
        return int(checkpoint_size[0]), int(checkpoint_size[1])
    if size == (0, 0):
        return int(frame_size[0]), int(frame_size[1])
    return size


def describe_model_size(size: tuple[int, int] | None) -> str:
    """How a ``parse_model_size`` value reads in a report."""
    return ("the checkpoint's size" if size is None else "each frame's own size"
            if size == (0, 0) else f"{size[0]}x{size[1]}")


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
