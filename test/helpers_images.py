"""Image arithmetic the tests hold the code to, computed exactly (in integers)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np


def exact_blend(rgb: np.ndarray, color: np.ndarray, alpha: Fraction,
                ties: str) -> tuple[np.ndarray, np.ndarray]:
    """``round((1 - alpha) * rgb + alpha * color)`` per channel, computed in integers, with
    exact halves rounded ``ties="even"`` (as torch.round and numpy.round) or ``ties="up"``
    (as adding 0.5 and truncating); returns the uint8 image and where the exact value was a
    half (where code that blends in floating point may fairly go either way when ``alpha``
    is not a binary fraction)."""
    numerator, denominator = alpha.numerator, alpha.denominator
    total = ((denominator - numerator) * rgb.astype(np.int64)
             + numerator * color.astype(np.int64))
    whole, rest = np.divmod(total, denominator)
    tie = 2 * rest == denominator
    if ties == "even":
        up = (2 * rest > denominator) | (tie & (whole % 2 == 1))
    elif ties == "up":
        up = 2 * rest >= denominator
    else:
        raise ValueError(f"ties must be 'even' or 'up', got {ties!r}")
    return (whole + up).astype(np.uint8), tie
