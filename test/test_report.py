"""The bag report's overlay pictures: the blend, rounded as it says, to the last bit."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from helpers_images import exact_blend

from dfanet_model.classes import CAMVID
from dfanet_tools.report import overlay_image

PALETTE = np.asarray(CAMVID.colors, np.uint8)


@pytest.fixture(scope="module")
def frame():
    """Every 8-bit value in every channel, against every class colour."""
    rng = np.random.default_rng(0)
    rgb = np.stack([rng.permutation(np.tile(np.arange(256, dtype=np.uint8), 33))
                    for _ in range(3)], axis=-1).reshape(66, 128, 3)
    label = rng.integers(0, CAMVID.num_classes, rgb.shape[:2]).astype(np.uint8)
    return rgb, label


@pytest.mark.parametrize("alpha", [Fraction(0), Fraction(1, 4), Fraction(1, 2),
                                   Fraction(3, 4), Fraction(1), Fraction(3, 10)])
def test_overlay_rounds_half_to_even_exactly(frame, alpha):
    """``overlay_image`` rounds as the engine does, halves to even.  For binary fractions the
    float32 blend is exact, so every pixel must equal the integer blend; for 0.3 the exact
    halves may fall either way, every other pixel may not."""
    rgb, label = frame
    got = overlay_image(rgb, label, CAMVID.colors, float(alpha))
    expected, tie = exact_blend(rgb, PALETTE[label], alpha, ties="even")
    if alpha.denominator & (alpha.denominator - 1):  # not a power of two
        assert tie.any() and not tie.all()
        assert np.array_equal(got[~tie], expected[~tie])
        assert np.isin(got[tie].astype(int) - expected[tie], (-1, 0)).all()
    else:
        assert np.array_equal(got, expected)
    if 0 < alpha < 1:  # the test tells rounding from truncation
        num, den = alpha.numerator, alpha.denominator
        truncated = ((den - num) * rgb.astype(np.int64)
                     + num * PALETTE[label].astype(np.int64)) // den
        assert (expected != truncated).any()


def test_overlay_of_grey_frames_and_ids_beyond_the_table():
    grey = np.array([[0, 101, 255, 37]], np.uint8)
    label = np.array([[0, 3, 11, 200]], np.uint8)  # 11 (void) and 200: no colour, black
    got = overlay_image(grey, label, CAMVID.colors, 0.5)
    colors = np.array([CAMVID.colors[0], CAMVID.colors[3], (0, 0, 0), (0, 0, 0)], np.uint8)
    expected, _ = exact_blend(np.repeat(grey[..., None], 3, axis=2), colors[None],
                              Fraction(1, 2), ties="even")
    assert np.array_equal(got, expected)
    # 255 / 2 = 127.5 and 37 / 2 = 18.5: halves to even
    assert got[0, 2].tolist() == [128, 128, 128] and got[0, 3].tolist() == [18, 18, 18]
