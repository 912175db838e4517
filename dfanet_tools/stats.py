"""Percentiles of timing samples: one definition for the benchmarks and the bag reports."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated linearly between the two
    nearest samples (NumPy's default); NaN when there are none."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean and max of ``values`` (NaN for each when empty)."""
    if len(values) == 0:
        return {k: math.nan for k in ("p50", "p90", "p99", "mean", "max")}
    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(arr.mean()),
            "max": float(arr.max())}
