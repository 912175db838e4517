"""Command-line values the benchmarks share: comma-separated lists, and the checkpoint timed
when none is given."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Collection

from dfanet_model.args import parse_size

CHECKPOINT_HELP = "deployable checkpoint (default: the shipped CamVid model)"


def choice_list(choices: Collection[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of ``choices``, naming any unknown one."""
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or repr(text)}; valid: {', '.join(choices)}")
        return items
    return parse


def size_list(text: str) -> list[tuple[int, int]]:
    """An argparse type: a comma-separated HEIGHTxWIDTH list."""
    return [parse_size(t) for t in text.split(",") if t.strip()]


def rate_list(text: str) -> list[float]:
    """An argparse type: comma-separated rates in Hz, 0 meaning flat out."""
    try:
        rates = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must be numbers, got {text!r}") from None
    if not rates or any(r < 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be >= 0 (0: flat out), got {text!r}")
    return rates
