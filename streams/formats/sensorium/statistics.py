"""The meta/statistics values a Sensorium folder stores ({min, max, mean, median, std} per key).

These are the pure computations the writer calls when it finishes a folder: exact statistics of 8-bit pixels
from their 256-bin histogram, NaN-ignoring statistics per behaviour column, and NaN-ignoring row medians of a
block of responses. They live apart from the writer so the arithmetic can be read (and tested) on its own; the
running per-neuron response moments stay in SensoriumWriter, which owns their state as trials arrive.
"""

from __future__ import annotations

import warnings

import numpy as np

from neurocine.streams.formats.sensorium.layout import STATISTICS


def _histogram_statistics(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Exact min/max/mean/median/std of 8-bit pixels from their 256-bin histogram."""
    n = int(hist.sum())
    if n == 0:
        return {name: np.array(np.nan) for name in STATISTICS}
    values = np.arange(256, dtype=np.float64)
    present = np.flatnonzero(hist)
    mean = float((values * hist).sum() / n)
    std = float(np.sqrt((hist * (values - mean) ** 2).sum() / n))
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    hi = int(np.searchsorted(cum, n // 2, side="right"))
    return {
        "min": np.array(float(present[0])),
        "max": np.array(float(present[-1])),
        "mean": np.array(mean),
        "median": np.array((lo + hi) / 2),
        "std": np.array(std),
    }


def _column_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """NaN-ignoring statistics per column of (T, C); NaN for a column with no values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "min": np.nanmin(x, axis=0) if x.shape[0] else np.full(x.shape[1], np.nan),
            "max": np.nanmax(x, axis=0) if x.shape[0] else np.full(x.shape[1], np.nan),
            "mean": np.nanmean(x, axis=0),
            "median": np.nanmedian(x, axis=0),
            "std": np.nanstd(x, axis=0),
        }


def _nanmedian_rows(block: np.ndarray) -> np.ndarray:
    """Row medians ignoring NaN (NaN for an all-NaN row); sorts `block` in place."""
    if not np.isnan(block).any():
        return np.median(block, axis=1, overwrite_input=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(block, axis=1, overwrite_input=True)
