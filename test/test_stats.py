"""The one percentile definition behind the benchmarks' and the bag reports' figures."""
import math

import numpy as np
import pytest

from dfanet_tools.stats import percentile, percentiles


def test_percentile_interpolates_between_the_nearest_samples():
    values = [40.0, 10.0, 30.0, 20.0]  # order does not matter
    assert percentile(values, 0) == 10.0 and percentile(values, 100) == 40.0
    assert percentile(values, 50) == pytest.approx(25.0)
    assert percentile(values, 10) == pytest.approx(13.0)  # 10 + 0.3 * (20 - 10)
    assert percentile(values, 90) == pytest.approx(37.0)


def test_percentiles_summarise_and_agree_with_percentile():
    rng = np.random.default_rng(0)
    values = rng.exponential(10.0, 257).tolist()
    summary = percentiles(values)
    assert set(summary) == {"p50", "p90", "p99", "mean", "max"}
    for q in (50, 90, 99):
        assert summary[f"p{q}"] == percentile(values, q)
    assert summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"] == max(values)
    assert summary["mean"] == pytest.approx(sum(values) / len(values))


def test_no_samples_give_nan_not_an_error():
    assert math.isnan(percentile([], 50))
    assert all(math.isnan(v) for v in percentiles([]).values())
