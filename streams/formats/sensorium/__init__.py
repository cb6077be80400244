"""Sensorium 2023 per-mouse folders: read chosen trials as one Session, write Sessions (or a simulator's
stream of trials) in the same layout.

One job per submodule:

- `layout`: what a folder holds (the file layout and its constants) and the checked .npy loader both sides use.
- `reader`: `read_sensorium` and `read_sensorium_statistics`, with the checks of every trial's files.
- `writer`: `SensoriumWriter` (one trial at a time, atomic files, meta/ on close) and `write_sensorium`.
- `statistics`: the meta/statistics values the writer stores (pixels, behaviour columns, response medians).
"""

from neurocine.streams.formats.sensorium.layout import (
    DEFAULT_FRAME_SHAPE,
    DEFAULT_PAD_TO,
    SENSORIUM_FRAME_RATE,
    STATISTICS,
    TRIAL_DIRS,
)
from neurocine.streams.formats.sensorium.reader import read_sensorium, read_sensorium_statistics
from neurocine.streams.formats.sensorium.writer import SensoriumWriter, write_sensorium

__all__ = [
    "DEFAULT_FRAME_SHAPE",
    "DEFAULT_PAD_TO",
    "SENSORIUM_FRAME_RATE",
    "STATISTICS",
    "TRIAL_DIRS",
    "SensoriumWriter",
    "read_sensorium",
    "read_sensorium_statistics",
    "write_sensorium",
]
