"""Sensorium 2023 per-mouse folders: read chosen trials as one Session, write Sessions (or a simulator's
stream of trials) in the same layout.

One job per submodule:

- `layout`: what a folder holds (the file layout and its constants) and the checked .npy loader both sides use.
- `store`: where the files are: a folder (memory-mapped) or the release's .zip (members streamed).
- `meta`: meta/ (tiers, trial lengths, the neuron table, the release's statistics).
- `trials`: one trial's headers checked, then its frames read, trimmed (the trial-length rule) and rounded to 8 bits.
- `folder`: `SensoriumFolder`, an opened mouse: trials chosen (tiers without responses skipped), read one at a time.
- `reader`: `open_sensorium` (a StreamedSession), `read_sensorium` (one Session), statistics and neurons.
- `writer`: `SensoriumWriter` (one trial at a time, atomic files, meta/ on close) and `write_sensorium`.
- `statistics`: the meta/statistics values the writer stores (pixels, behaviour columns, response medians).
"""

from neurocine.streams.formats.sensorium.folder import SensoriumFolder
from neurocine.streams.formats.sensorium.layout import (
    DEFAULT_FRAME_SHAPE,
    DEFAULT_PAD_TO,
    SENSORIUM_FRAME_RATE,
    STATISTICS,
    TRIAL_DIRS,
)
from neurocine.streams.formats.sensorium.reader import (
    open_sensorium,
    read_sensorium,
    read_sensorium_statistics,
    sensorium_neurons,
)
from neurocine.streams.formats.sensorium.writer import SensoriumWriter, write_sensorium

__all__ = [
    "DEFAULT_FRAME_SHAPE",
    "DEFAULT_PAD_TO",
    "SENSORIUM_FRAME_RATE",
    "STATISTICS",
    "TRIAL_DIRS",
    "SensoriumFolder",
    "SensoriumWriter",
    "open_sensorium",
    "read_sensorium",
    "read_sensorium_statistics",
    "sensorium_neurons",
    "write_sensorium",
]
