"""Reading a Sensorium mouse (folder or release .zip): as a StreamedSession (one trial in memory at a time, what
replay uses), as one in-memory Session (what reconstruction and fitting use), and its meta/statistics.

The checks and the rules (trial length, 8-bit rounding, tiers without responses, the mouse id) live in
`folder` and `trials`; this module only chooses trials and assembles. Every fault is a FormatError naming the
file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurocine.streams.formats.sensorium.folder import SensoriumFolder
from neurocine.streams.session import Session, StreamedSession


def open_sensorium(folder: str | Path, trials: Sequence[int] | None = None, tier: str | None = None
                   ) -> StreamedSession:
    """The chosen trials (by index and/or tier; default: every trial of a tier with responses), ascending, to be
    read one trial at a time. Trials after the first are marked as cuts (file order carries no time)."""
    mouse = SensoriumFolder(folder)
    return mouse.stream(mouse.choose(trials, tier))


def read_sensorium(folder: str | Path, trials: Sequence[int] | None = None, tier: str | None = None) -> Session:
    """The chosen trials played back to back as one 30 Hz replay session in memory.

    Trials come in ascending index order with their NaN padding trimmed; each becomes one Trial
    (index, start, stop, tier, cut). Raises FormatError naming the file and the fault on any bad input.
    """
    return open_sensorium(folder, trials, tier).load()


def read_sensorium_statistics(folder: str | Path, subset: str | None = "all") -> dict[str, dict]:
    """meta/statistics as {key: {stat: array}} for the keys present under `subset` ('all', what the 2023
    loaders read), or {key: {subset: {stat: array}}} for every subset (None)."""
    return SensoriumFolder(folder).statistics(subset)


def sensorium_neurons(folder: str | Path) -> dict[str, np.ndarray]:
    """meta/neurons' per-neuron arrays present (unit_ids always; coordinates and the descriptive fields if there)."""
    table = SensoriumFolder(folder).neurons
    out = {"unit_ids": table.unit_ids, **table.fields}
    if table.coordinates is not None:
        out["cell_motor_coordinates"] = table.coordinates
    return out
