"""Sessions as NWB files (Neurodata Without Borders), the way the field stores two-photon data.

One job per submodule:

- `writer`: `write_nwb` and the layout neurocine writes (documented there), kept valid NWB.
- `reader`: `read_nwb`, our own files exactly and other tools' files by convention, with behaviour and stimulus
  resampled onto the trace frames.
- `naming`: the name-guessing the reader applies to other tools' files (modules, trace and behaviour series).
- `metadata`: `recording_facts` (subject and units), neurocine's metadata key and series names, time conversions.

pynwb is optional: it is imported only when a file is used.
"""

from neurocine.streams.formats.nwb.metadata import (
    METADATA_KEY,
    METADATA_VERSION,
    STIMULUS_NAME,
    SYNTHETIC_FACTS,
    TRACES_NAME,
    UNKNOWN_FACTS,
    RecordingFacts,
    recording_facts,
)
from neurocine.streams.formats.nwb.reader import read_nwb
from neurocine.streams.formats.nwb.writer import write_nwb

__all__ = [
    "METADATA_KEY",
    "METADATA_VERSION",
    "STIMULUS_NAME",
    "SYNTHETIC_FACTS",
    "TRACES_NAME",
    "UNKNOWN_FACTS",
    "RecordingFacts",
    "read_nwb",
    "recording_facts",
    "write_nwb",
]
