"""The one summary of a measured distribution (latencies, jitter, compute times) that every verb, bench and the
viewer report: ``{"p50", "p95", "p99", "max"}``, the key names the same everywhere; a report names the unit in
the key that holds the summary (``"latency_ms": {...}``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: The summary's keys, in order.
KEYS = ("p50", "p95", "p99", "max")


def percentiles(values: Iterable[float] | np.ndarray, ndigits: int | None = 3) -> dict[str, float | None]:
    """p50, p95, p99 and max of the finite values (NaN, not measured, left out), rounded to `ndigits` (None: not
    rounded); every key None when there is no finite value."""
    a = np.asarray(values if isinstance(values, np.ndarray) else list(values), np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return dict.fromkeys(KEYS)
    got = [*np.percentile(a, [50, 95, 99]), a.max()]
    return {k: float(v) if ndigits is None else round(float(v), ndigits) for k, v in zip(KEYS, got, strict=True)}
