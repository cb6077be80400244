"""What a neurocine NWB file states beyond the session's arrays, and the conventions writer and reader share.

Subject, imaging-plane location and behaviour units come from `recording_facts`: what the synthetic mouse
states about itself for ``source == "synthetic"``, NWB's "unknown" conventions otherwise. Alongside them live
the key of neurocine's own JSON metadata, the names of the series neurocine writes, the exact conversions
between integer ns times and NWB's datetimes and float seconds, and the gate that imports the optional pynwb.
This is the lowest module of the package: the writer and the reader import it, and it imports neither.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np

from neurocine.streams.session import Session

#: Key of the JSON object in ``data_collection`` that marks a file written by neurocine.
METADATA_KEY = "neurocine"
METADATA_VERSION = 1

TRACES_NAME = "deconvolved"
STIMULUS_NAME = "stimulus"
#: Trials-table column written when a session has cuts: True where a trial was not recorded right after the
#: previous one (a recorded replay of the Sensorium release); read back into Trial.cut.
CUT_COLUMN = "cut"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class RecordingFacts:
    """What an NWB file states about the animal and the measurement beyond the session's own arrays."""

    sex: str  # NWB: "F", "M", "U" (unknown) or "O" (other)
    age: str  # ISO 8601 duration, or a range "lower/upper" with either side open
    subject_description: str
    location: str  # an Allen CCF term (nwbinspector requires one for mouse imaging planes)
    running_unit: str
    pupil_size_unit: str
    pupil_centre_unit: str  # one of the SpatialSeries units nwbinspector accepts
    pupil_reference_frame: str


#: The synthetic mouse (neurocine.streams.synthetic) models an adult mouse's primary visual cortex (Gabor receptive
#: fields, Sensorium-like V1 data); no sex and no exact age are simulated, so sex is "U" and the age an open
#: adult range. Units are the generator's (streams/synthetic/behaviour.py).
SYNTHETIC_FACTS = RecordingFacts(
    sex="U",
    age="P60D/",
    subject_description="synthetic mouse simulated by neurocine.streams.synthetic; the seed is in subject_id",
    location="VISp",
    running_unit="cm/s",
    pupil_size_unit="pixels",
    pupil_centre_unit="degrees",
    pupil_reference_frame="gaze angle in degrees, 0 = resting eye position; +x right, +y down the screen",
)

#: A rig or replayed stream states none of these (docs/protocol.md), so NWB's "unknown" conventions are used
#: rather than invented facts: sex "U"; age "P0D/", an open range (NWB has no "unknown" age, and a missing
#: one is a CRITICAL nwbinspector finding); location "VIS" ("Visual areas", the CCF term that covers every
#: visual area, since the stream does not say which); units "n.a." (not available).
UNKNOWN_FACTS = RecordingFacts(
    sex="U",
    age="P0D/",
    subject_description="not stated by the stream: sex and age are NWB's 'unknown' placeholders",
    location="VIS",
    running_unit="n.a.",
    pupil_size_unit="n.a.",
    pupil_centre_unit="n.a.",
    pupil_reference_frame="eye camera image, columns [x, y] (units not stated by the stream)",
)


def recording_facts(session: Session) -> RecordingFacts:
    """The facts to write for `session`: the synthetic mouse's own, else NWB's 'unknown' values."""
    return SYNTHETIC_FACTS if session.source == "synthetic" else UNKNOWN_FACTS


def _import_pynwb() -> Any:
    """pynwb, or an ImportError that says how to install it (it is an optional dependency)."""
    try:
        import pynwb
    except ImportError as e:
        raise ImportError("reading or writing .nwb sessions needs pynwb: pip install 'neurocine[nwb]'") from e
    return pynwb


# ---------------------------------------------------------------------------------------- time helpers
def _ns_to_datetime(ns: int) -> dt.datetime:
    """UTC datetime of an epoch time in ns, floored to the microsecond (datetime's resolution)."""
    return _EPOCH + dt.timedelta(microseconds=int(ns) // 1000)


def _datetime_to_ns(when: dt.datetime) -> int:
    """Epoch nanoseconds of a datetime; a naive one is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    delta = when - _EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def _seconds_to_ns(seconds: np.ndarray) -> np.ndarray:
    """Relative seconds back to integer ns; the exact inverse of `_ns_to_seconds` below 2**51 ns."""
    return np.round(np.asarray(seconds, dtype=np.float64) * 1e9).astype(np.int64)


def _ns_to_seconds(ns: np.ndarray) -> np.ndarray:
    return np.asarray(ns, dtype=np.int64) / 1e9
