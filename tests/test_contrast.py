"""The display contrast stretch: decoded frames become visible, their correlation with the truth unchanged,
levels steady across frames, and nothing but what is shown changes."""

from __future__ import annotations

import numpy as np

from neurocine.decoder.analysis.metrics import corr
from neurocine.decoder.view.contrast import ContrastStretch, StretchConfig


def test_a_low_contrast_frame_is_stretched_to_the_full_range_and_keeps_its_correlation() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (36, 64)).astype(np.float32)
    shrunk = np.rint(118 + 0.08 * (truth - 128) + rng.normal(0, 1, truth.shape)).astype(np.uint8)  # ~grey
    shown = ContrastStretch()(shrunk)
    assert shown.dtype == np.uint8
    assert np.ptp(shrunk) < 40 and np.percentile(shown, 99) - np.percentile(shown, 1) > 200
    assert abs(corr(shown, truth) - corr(shrunk, truth)) < 0.02  # monotone: clipping the tails only


def test_levels_follow_the_window_not_each_frame() -> None:
    stretch = ContrastStretch(StretchConfig(window=30))
    base = np.tile(np.linspace(100, 140, 64, dtype=np.float32), (36, 1))
    for _ in range(30):
        stretch(base.astype(np.uint8))
    dim = (128 + 0.5 * (base - 128)).astype(np.uint8)  # one frame at half the contrast
    shown = stretch(dim)
    assert np.ptp(shown) < 0.75 * 255  # not blown up to full range on its own: the window's levels hold
    stretch.reset()
    assert np.ptp(stretch(dim)) > 0.9 * 255  # a new session starts its own levels


def test_a_flat_frame_stays_as_it_is() -> None:
    flat = np.full((36, 64), 77, np.uint8)
    np.testing.assert_array_equal(ContrastStretch()(flat), flat)
