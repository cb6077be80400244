"""The one percentile summary every report uses."""

import numpy as np

from neurocine.streams.summary import KEYS, percentiles


def test_percentiles_have_one_set_of_keys_leave_out_nan_and_round() -> None:
    got = percentiles([1.0, 2.0, np.nan, 3.0, 4.0, 100.0], ndigits=2)
    assert tuple(got) == KEYS == ("p50", "p95", "p99", "max")
    assert got["p50"] == 3.0 and got["max"] == 100.0  # the NaN (not measured) is left out
    assert got["p95"] == round(float(np.percentile([1, 2, 3, 4, 100], 95)), 2) and got["p95"] < got["p99"] < 100
    assert percentiles(np.arange(3) / 3, ndigits=None)["max"] == 2 / 3
    assert percentiles([]) == percentiles([np.nan]) == dict.fromkeys(KEYS)
