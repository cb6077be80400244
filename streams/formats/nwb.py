"""Sessions as NWB files (Neurodata Without Borders), the way the field stores two-photon data.

Written layout (and what `read_nwb` looks for first):

- ``processing/ophys``: ImageSegmentation/PlaneSegmentation whose row ids are the neuron ids, and
  Fluorescence/RoiResponseSeries "deconvolved" (T, N) float32 with timestamps in seconds (starting_time
  and rate instead when the clock is exactly regular, as NWB best practice asks).
- ``processing/behavior``: BehavioralTimeSeries/"running_speed", PupilTracking/"pupil_dilation",
  EyeTracking/"pupil_center" (T, 2) = [x, y]; their timestamps link to the traces' timestamps.
- Sample times and values are read with pynwb's own ``get_timestamps()`` and ``get_data_in_units()``
  (conversion, per-channel ``channel_conversion``, offset).
- ``stimulus/stimulus``: ImageSeries (T, H, W) uint8, the frame on screen at each acquisition.
- ``intervals/trials``: start_time, stop_time, trial_index, tier.
- The frame rate is the imaging plane's ``imaging_rate``; the session source and the exact start time
  in nanoseconds live in ``general/data_collection`` as JSON ``{"neurocine": {...}}``.
- Subject, imaging-plane location and behaviour units come from `recording_facts`: what the synthetic
  mouse states about itself for ``source == "synthetic"``, NWB's "unknown" conventions otherwise (the
  wire protocol carries no age, sex, brain area or behaviour units). What we write passes pynwb's
  validator with no CRITICAL or BEST_PRACTICE_VIOLATION finding from nwbinspector (tests prove it).

Files written by other tools are read by convention (module and series names vary), with behaviour and
stimulus resampled onto the trace frames. pynwb is optional: it is imported only when a file is used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from streams.commandline import get_logger
from streams.formats import FormatError
from streams.session import DEFAULT_FRAME_RATE, Session, SessionError, Trial

#: Key of the JSON object in ``data_collection`` that marks a file written by neurocine.
METADATA_KEY = "neurocine"
METADATA_VERSION = 1

TRACES_NAME = "deconvolved"
STIMULUS_NAME = "stimulus"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: Samples closer than this (seconds) count as simultaneous when matching clocks (float rounding).
_TIME_TOLERANCE_S = 1e-9
#: Grey shown where a foreign stimulus does not cover a trace frame (the blank screen between movies).
_BLANK_GREY = 128
_PREFERRED_TRACE_WORDS = ("deconv", "spike", "event")

log = get_logger("nwb")


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


#: The synthetic mouse (streams.synthetic) models an adult mouse's primary visual cortex (Gabor receptive
#: fields, Sensorium-like V1 data); no sex and no exact age are simulated, so sex is "U" and the age an open
#: adult range. Units are the generator's (streams/synthetic/behaviour.py).
SYNTHETIC_FACTS = RecordingFacts(
    sex="U",
    age="P60D/",
    subject_description="synthetic mouse simulated by neurocine (streams.synthetic); the seed is in subject_id",
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


def _time_reference(session: Session, path: Path) -> tuple[int, np.ndarray]:
    """(reference ns on a microsecond, timestamps in seconds after it) that round-trip exactly.

    The session start is the natural reference; when the timestamps sit far from it (a rig clock with
    start_time_ns left at 0) the first timestamp is used, so float64 seconds keep ns resolution.
    """
    ts = session.timestamps_ns
    candidates = [session.start_time_ns // 1000 * 1000]
    if ts.size:
        candidates.append(int(ts[0]) // 1000 * 1000)
    for ref in candidates:
        rel_ns = ts - np.int64(ref)
        rel_s = _ns_to_seconds(rel_ns)
        if np.array_equal(_seconds_to_ns(rel_s), rel_ns):
            return ref, rel_s
    raise FormatError(f"{path}: timestamps span {int(ts.max() - ts.min())} ns, too long to store exactly as seconds")


def _timing(timestamps_ns: np.ndarray, ref_ns: int, rel_s: np.ndarray) -> dict[str, Any]:
    """How a series states its sample times: starting_time and rate when the frames are exactly regular and
    pynwb's `get_timestamps` (k / rate + starting_time) gives back every ns, else the timestamps.

    NWB best practice (nwbinspector's check_regular_timestamps) wants a rate for a constant-rate clock,
    such as the synthetic rig's; a real rig's jittered clock keeps its timestamps.
    """
    steps = np.diff(timestamps_ns)
    if steps.size >= 2 and steps[0] > 0 and (steps == steps[0]).all():
        start, rate = float(rel_s[0]), 1e9 / float(steps[0])
        again = np.arange(timestamps_ns.size) / rate + start
        if np.array_equal(np.int64(ref_ns) + _seconds_to_ns(again), timestamps_ns):
            return {"starting_time": start, "rate": rate}
    return {"timestamps": rel_s}


# ---------------------------------------------------------------------------------------------- write
def write_nwb(session: Session, path: str | Path) -> None:
    """Write `session` as an NWB file at `path`, atomically (a crash leaves any old file untouched)."""
    pynwb = _import_pynwb()
    p = Path(path)
    session.validate()
    if not p.parent.is_dir():
        raise FormatError(f"{p}: cannot write, folder {p.parent} does not exist")
    nwbfile = _build_nwbfile(session, p)
    tmp = p.with_name(f".{p.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.nwb")
    try:
        with pynwb.NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"{p}: writing the NWB file failed: {type(e).__name__}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _build_nwbfile(session: Session, path: Path) -> Any:
    """The in-memory NWBFile for a session (nothing touches the disk here)."""
    from pynwb import NWBFile, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries, EyeTracking, PupilTracking, SpatialSeries
    from pynwb.file import Subject
    from pynwb.image import ImageSeries
    from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

    ref_ns, rel_s = _time_reference(session, path)
    timing = _timing(session.timestamps_ns, ref_ns, rel_s)
    facts = recording_facts(session)
    if session.start_time_ns == 0:  # the protocol's default: the publisher did not say when it started
        log.warning("%s: session %s states no start time (start_time_ns 0); session_start_time is the Unix "
                    "epoch, which NWB tools flag as suspect", path, session.session_id)
    metadata = {
        METADATA_KEY: {
            "version": METADATA_VERSION,
            "source": session.source,
            "start_time_ns": int(session.start_time_ns),
        }
    }
    nwbfile = NWBFile(
        session_description=(
            f"neurocine session {session.session_id}: {session.n_frames} frames of {session.n_neurons} "
            f"neurons at {session.frame_rate:g} Hz ({session.source})"
        ),
        identifier=session.session_id,
        session_id=session.session_id,
        session_start_time=_ns_to_datetime(session.start_time_ns),
        timestamps_reference_time=_ns_to_datetime(ref_ns),
        data_collection=json.dumps(metadata),
        experiment_description=(
            f"two-photon calcium activity of mouse visual cortex, {session.source} stream recorded by neurocine"
        ),
        keywords=["two-photon calcium imaging", "mouse", "visual cortex", "neurocine"],
        subject=Subject(
            subject_id=session.mouse_id,
            species="Mus musculus",
            sex=facts.sex,
            age=facts.age,
            description=facts.subject_description,
        ),
    )

    device = nwbfile.create_device(name="microscope", description="two-photon microscope")
    channel = OpticalChannel(name="green", description="calcium indicator emission", emission_lambda=np.nan)
    plane = nwbfile.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=channel,
        description="mouse visual cortex, two-photon calcium imaging",
        device=device,
        excitation_lambda=np.nan,
        indicator="unknown",
        location=facts.location,
        imaging_rate=float(session.frame_rate),
    )

    ophys = nwbfile.create_processing_module(name="ophys", description="two-photon calcium activity")
    segmentation = ImageSegmentation(name="ImageSegmentation")
    ophys.add(segmentation)
    rois = _plane_segmentation(session.neuron_ids, plane)
    segmentation.add_plane_segmentation(rois)
    fluorescence = Fluorescence(name="Fluorescence")
    ophys.add(fluorescence)
    traces = RoiResponseSeries(
        name=TRACES_NAME,
        description="deconvolved activity per neuron, NaN where a neuron was not reported",
        data=session.traces,
        unit="a.u.",
        rois=rois.create_roi_table_region(
            region=list(range(session.n_neurons)), description="all neurons, in trace column order"
        ),
        **timing,
    )
    fluorescence.add_roi_response_series(traces)
    # the other series share the traces' clock: a link to their timestamps, or the same start and rate
    same_clock = {"timestamps": traces} if "timestamps" in timing else timing

    behavior = nwbfile.create_processing_module(name="behavior", description="running and pupil")
    running = BehavioralTimeSeries(name="BehavioralTimeSeries")
    behavior.add(running)
    running.add_timeseries(
        TimeSeries(
            name="running_speed",
            data=session.behaviour[:, 0],
            unit=facts.running_unit,
            **same_clock,
            description="running speed of the mouse",
        )
    )
    pupil = PupilTracking(name="PupilTracking")
    behavior.add(pupil)
    pupil.add_timeseries(
        TimeSeries(
            name="pupil_dilation",
            data=session.behaviour[:, 1],
            unit=facts.pupil_size_unit,
            **same_clock,
            description="pupil size",
        )
    )
    eye = EyeTracking(name="EyeTracking")
    behavior.add(eye)
    eye.add_spatial_series(
        SpatialSeries(
            name="pupil_center",
            data=session.behaviour[:, 2:4],
            reference_frame=facts.pupil_reference_frame,
            unit=facts.pupil_centre_unit,
            **same_clock,
            description="pupil centre position [x, y]",
        )
    )

    if session.stimulus is not None:
        nwbfile.add_stimulus(
            ImageSeries(
                name=STIMULUS_NAME,
                data=session.stimulus,
                unit="grey level 0-255",
                format="raw",
                **same_clock,
                description="frame on screen when each imaging frame was acquired, (T, height, width)",
            )
        )

    if session.trials:
        _add_trials(nwbfile, session, rel_s)
    return nwbfile


def _plane_segmentation(neuron_ids: np.ndarray, plane: Any) -> Any:
    """ROI table with the neuron ids as row ids, built column-wise (no per-row loop, fast for 8000)."""
    from hdmf.common import VectorData, VectorIndex
    from pynwb.ophys import PlaneSegmentation

    n = int(neuron_ids.size)
    # Footprints are not part of a session: one zero-weight placeholder pixel per ROI satisfies NWB.
    mask = np.zeros(n, dtype=[("x", "<u4"), ("y", "<u4"), ("weight", "<f4")])
    mask_data = VectorData(name="pixel_mask", description="placeholder, footprints not recorded", data=mask)
    ends = np.arange(1, n + 1, dtype=np.int64)
    mask_index = VectorIndex(name="pixel_mask_index", data=ends, target=mask_data)
    return PlaneSegmentation(
        name="PlaneSegmentation",
        description="one ROI per neuron; row ids are the neuron ids (ROI footprints not recorded)",
        imaging_plane=plane,
        id=[int(i) for i in neuron_ids],
        columns=[mask_data, mask_index],
    )


def _add_trials(nwbfile: Any, session: Session, rel_s: np.ndarray) -> None:
    """Trials as [start, stop) times: a trial starts at its first frame and stops where the next starts."""
    t = session.n_frames
    end = float(rel_s[-1] + 1.0 / session.frame_rate) if t else 0.0

    def frame_time(frame: int) -> float:
        return float(rel_s[frame]) if frame < t else end

    nwbfile.add_trial_column(name="trial_index", description="index of the trial in its source")
    nwbfile.add_trial_column(name="tier", description="data split (Sensorium 2023 tier names)")
    for trial in session.trials:
        nwbfile.add_trial(
            start_time=frame_time(trial.start),
            stop_time=frame_time(trial.stop),
            trial_index=int(trial.index),
            tier=str(trial.tier),
        )


# ----------------------------------------------------------------------------------------------- read
def read_nwb(path: str | Path) -> Session:
    """Read a session from an NWB file written by `write_nwb` (exactly) or by other tools (by convention).

    Errors name the file and the fault as FormatError; a channel the file lacks becomes NaN, with a
    warning that names it.
    """
    pynwb = _import_pynwb()
    import h5py

    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    if not h5py.is_hdf5(p):
        raise FormatError(f"{p}: not an HDF5 file, so not an NWB file")
    try:
        io = pynwb.NWBHDF5IO(str(p), "r")
    except Exception as e:
        raise FormatError(f"{p}: cannot open as NWB (truncated or corrupt?): {type(e).__name__}: {e}") from e
    try:
        with io:
            try:
                nwbfile = io.read()
            except Exception as e:
                raise FormatError(
                    f"{p}: cannot read the NWB structure (truncated or corrupt?): {type(e).__name__}: {e}"
                ) from e
            return _session_from_nwbfile(nwbfile, p)
    except FormatError:
        raise
    except SessionError as e:
        raise FormatError(f"{p}: the file's contents do not form a valid session: {e}") from e
    except Exception as e:
        raise FormatError(f"{p}: reading failed (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _session_from_nwbfile(nwbfile: Any, path: Path) -> Session:
    meta = _neurocine_metadata(nwbfile)
    ophys = _find_module(nwbfile, ("ophys",))
    if ophys is None:
        raise FormatError(f"{path}: no 'ophys' processing module (modules: {sorted(nwbfile.processing) or 'none'})")
    series = _pick_roi_response_series(ophys, path)
    traces = _trace_matrix(series, path)
    t = traces.shape[0]
    table = series.rois.table
    neuron_ids = np.asarray(table.id.data[:], dtype=np.int64)[np.asarray(series.rois.data[:], dtype=np.int64)]

    rel_s = _series_seconds(series, t, path)
    if not np.isfinite(rel_s).all():
        raise FormatError(f"{path}: RoiResponseSeries '{series.name}' has non-finite timestamps")
    ref_ns = _datetime_to_ns(nwbfile.timestamps_reference_time or nwbfile.session_start_time)
    timestamps_ns = np.int64(ref_ns) + _seconds_to_ns(rel_s)
    start_time_ns = int(meta["start_time_ns"]) if meta is not None else _datetime_to_ns(nwbfile.session_start_time)

    frame_rate = _frame_rate(series, rel_s, meta, path)
    behaviour = _read_behaviour(nwbfile, ophys, rel_s, path)
    stimulus = _read_stimulus(nwbfile, rel_s, path)
    trials = _read_trials(nwbfile, rel_s)
    subject = nwbfile.subject
    mouse_id = str(subject.subject_id) if subject is not None and subject.subject_id else "unknown"
    session_id = str(nwbfile.session_id or nwbfile.identifier)
    source = str(meta.get("source", "replay")) if meta is not None else "replay"
    return Session(
        traces=traces,
        behaviour=behaviour,
        timestamps_ns=timestamps_ns,
        neuron_ids=neuron_ids,
        frame_rate=frame_rate,
        mouse_id=mouse_id,
        stimulus=stimulus,
        trials=trials,
        session_id=session_id,
        source=source,
        start_time_ns=start_time_ns,
    )


def _neurocine_metadata(nwbfile: Any) -> dict | None:
    """The metadata neurocine stores in data_collection, or None for a file written by another tool."""
    text = nwbfile.data_collection
    if not text:
        return None
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return None
    meta = doc.get(METADATA_KEY) if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else None


def _norm(name: str) -> str:
    """'Running Speed' / 'running-speed' -> 'running_speed', for matching names by convention."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _find_module(nwbfile: Any, names: tuple[str, ...]) -> Any:
    for key, module in nwbfile.processing.items():
        if _norm(key) in names:
            return module
    return None


def _pick_roi_response_series(ophys: Any, path: Path) -> Any:
    """The RoiResponseSeries to replay: deconvolved/spikes/events if several, else the first."""
    from pynwb.ophys import DfOverF, Fluorescence, RoiResponseSeries

    found: list[tuple[str, Any]] = []
    for name, item in ophys.data_interfaces.items():
        if isinstance(item, RoiResponseSeries):
            found.append((name, item))
        elif isinstance(item, (Fluorescence, DfOverF)):
            found.extend((f"{name}/{sub}", s) for sub, s in item.roi_response_series.items())
    if not found:
        raise FormatError(
            f"{path}: no RoiResponseSeries in the ophys module (it holds: {sorted(ophys.data_interfaces)})"
        )
    chosen = next((f for f in found if any(w in _norm(f[0]) for w in _PREFERRED_TRACE_WORDS)), found[0])
    if len(found) > 1:
        warnings.warn(
            f"{path}: {len(found)} RoiResponseSeries ({', '.join(n for n, _ in found)}); using '{chosen[0]}'",
            stacklevel=4,
        )
    return chosen[1]


def _in_units(series: Any, data: np.ndarray, path: Path, where: str) -> np.ndarray:
    """A series' data (`data`, as read) in its unit, by pynwb's `get_data_in_units` (conversion,
    channel_conversion, offset).

    Data whose scaling is the identity is returned as read: the arithmetic would promote float32 to
    float64 and turn -0.0 into 0.0, and our own files round-trip bit for bit.
    """
    channel = series.fields.get("channel_conversion")
    conversion, offset = getattr(series, "conversion", None), getattr(series, "offset", None)
    if conversion in (None, 1.0) and offset in (None, 0.0) and channel is None:
        return data
    if channel is not None and (data.ndim != 2 or len(channel) != data.shape[1]):
        raise FormatError(
            f"{path}: {where} has {len(channel)} channel_conversion factors for data of shape {data.shape}"
        )
    if not np.issubdtype(data.dtype, np.number):
        raise FormatError(f"{path}: {where} holds non-numeric {data.dtype}")
    try:
        return np.asarray(series.get_data_in_units())
    except (TypeError, ValueError) as e:
        raise FormatError(f"{path}: {where}: cannot apply its conversion and offset: {e}") from e


def _trace_matrix(series: Any, path: Path) -> np.ndarray:
    """(T, N) traces, refusing data whose columns do not match the ROIs (NWB stores time first)."""
    data = np.asarray(series.data[:])
    n_rois = len(series.rois.data)
    if data.ndim == 1 and n_rois == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise FormatError(f"{path}: RoiResponseSeries '{series.name}' must be 2-D (T, N), got {data.shape}")
    if data.shape[1] != n_rois:
        hint = " It looks stored as (N, T); NWB stores time first, (T, N)." if data.shape[0] == n_rois else ""
        raise FormatError(
            f"{path}: RoiResponseSeries '{series.name}' has shape {data.shape} but its rois region "
            f"names {n_rois} ROIs.{hint}"
        )
    if not np.issubdtype(data.dtype, np.number):
        raise FormatError(f"{path}: RoiResponseSeries '{series.name}' holds non-numeric {data.dtype}")
    return _in_units(series, data, path, f"RoiResponseSeries '{series.name}'").reshape(data.shape)


def _series_seconds(series: Any, n: int, path: Path) -> np.ndarray:
    """A TimeSeries' n sample times in seconds, by pynwb's `get_timestamps` (stored, or starting_time + k/rate).

    pynwb counts samples in `data`; an IndexSeries's samples are its indices, which is the same count.
    """
    if series.timestamps is None and (series.rate is None or not series.rate > 0):
        raise FormatError(f"{path}: '{series.name}' has neither timestamps nor a positive rate")
    try:
        ts = np.asarray(series.get_timestamps()[:], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{path}: '{series.name}': cannot tell its sample times: {e}") from e
    if ts.shape != (n,):
        raise FormatError(f"{path}: '{series.name}' has {n} samples but timestamps of shape {ts.shape}")
    return ts


def _frame_rate(series: Any, rel_s: np.ndarray, meta: dict | None, path: Path) -> float:
    """The nominal rate: ours from the imaging plane, else the series rate, else the median interval."""
    plane_rate = getattr(getattr(series.rois.table, "imaging_plane", None), "imaging_rate", None)
    if meta is not None and plane_rate:
        return float(plane_rate)
    if series.rate:
        return float(series.rate)
    steps = np.diff(rel_s)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    if steps.size:
        return float(1.0 / np.median(steps))
    if plane_rate:
        return float(plane_rate)
    warnings.warn(f"{path}: cannot tell the frame rate; assuming {DEFAULT_FRAME_RATE} Hz", stacklevel=4)
    return DEFAULT_FRAME_RATE


# ------------------------------------------------------------------------------------------ behaviour
def _behaviour_series(nwbfile: Any, ophys: Any) -> list[tuple[str, str, Any]]:
    """(path, container type, series) of every plain TimeSeries that could hold behaviour.

    Behaviour modules come first, then the other processing modules, then acquisition; traces,
    images and the ophys module are skipped.
    """
    from pynwb import TimeSeries
    from pynwb.image import ImageSeries
    from pynwb.ophys import RoiResponseSeries

    def usable(obj: Any) -> bool:
        return isinstance(obj, TimeSeries) and not isinstance(obj, (RoiResponseSeries, ImageSeries))

    groups: list[tuple[str, Any]] = []
    modules = [(k, m) for k, m in nwbfile.processing.items() if m is not ophys]
    modules.sort(key=lambda km: _norm(km[0]) not in ("behavior", "behaviour"))
    groups.extend((f"processing/{k}", m.data_interfaces) for k, m in modules)
    groups.append(("acquisition", nwbfile.acquisition))

    out: list[tuple[str, str, Any]] = []
    for where, items in groups:
        for name, item in items.items():
            if usable(item):
                out.append((f"{where}/{name}", "", item))
                continue
            for child in getattr(item, "children", ()):
                if usable(child):
                    out.append((f"{where}/{name}/{child.name}", type(item).__name__, child))
    return out


def _is_running(name: str) -> bool:
    n = _norm(name)
    return "running" in n or "treadmill" in n or "wheel" in n or n in ("speed", "run_speed", "velocity")


def _is_pupil_size(name: str) -> bool:
    n = _norm(name)
    return "pupil" in n and any(k in n for k in ("size", "area", "diameter", "dilation", "radius"))


def _is_pupil_centre(name: str) -> bool:
    n = _norm(name)
    return "pupil" in n and any(k in n for k in ("center", "centre", "position", "pos", "xy", "location"))


#: channel -> (name matcher, container type that holds it by convention, columns)
_BEHAVIOUR_RULES = {
    "running_speed": (_is_running, "BehavioralTimeSeries", 1),
    "pupil_dilation": (_is_pupil_size, "PupilTracking", 1),
    "pupil_center": (_is_pupil_centre, "EyeTracking", 2),
}


def _read_behaviour(nwbfile: Any, ophys: Any, rel_s: np.ndarray, path: Path) -> np.ndarray:
    """(T, 4) behaviour on the trace frames; a channel the file lacks is NaN, with a warning."""
    t = rel_s.size
    behaviour = np.full((t, 4), np.nan, dtype=np.float32)
    candidates = _behaviour_series(nwbfile, ophys)
    columns = {"running_speed": slice(0, 1), "pupil_dilation": slice(1, 2), "pupil_center": slice(2, 4)}
    for channel, (matches, container, width) in _BEHAVIOUR_RULES.items():
        hit = next((c for c in candidates if matches(c[2].name)), None)
        if hit is None:  # by container convention: PupilTracking holds pupil size, EyeTracking position
            hit = next((c for c in candidates if c[1] == container and _width(c[2]) >= width), None)
        if hit is None:
            names = "pupil_x, pupil_y" if channel == "pupil_center" else channel
            warnings.warn(f"{path}: no {channel} series found; {names} set to NaN", stacklevel=4)
            continue
        where, _, series = hit
        values = _in_units(series, np.asarray(series.data[:]), path, where)
        if width == 1 and values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if width == 1 and values.ndim != 1:
            raise FormatError(f"{path}: {where} should be 1-D (T,), got shape {values.shape}")
        if width == 2:
            if values.ndim != 2 or values.shape[1] < 2:
                raise FormatError(f"{path}: {where} should be (T, 2) [x, y], got shape {values.shape}")
            values = values[:, :2]
        if not np.issubdtype(values.dtype, np.number):
            raise FormatError(f"{path}: {where} holds non-numeric {values.dtype}")
        own_s = _series_seconds(series, values.shape[0], path)
        index, valid = _nearest_earlier(own_s, rel_s)
        picked = values[index].astype(np.float32).reshape(t, -1)
        picked[~valid] = np.nan
        behaviour[:, columns[channel]] = picked
    return behaviour


def _width(series: Any) -> int:
    shape = getattr(series.data, "shape", None) or np.shape(series.data)
    return int(shape[1]) if len(shape) == 2 else 1


def _nearest_earlier(sample_s: np.ndarray, frame_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each frame time, the sample at or just before it, and whether that sample covers the frame.

    A frame before the first sample, or more than one sample interval after the last, is not covered.
    """
    if sample_s.size == frame_s.size and np.array_equal(sample_s, frame_s):
        return np.arange(frame_s.size), np.ones(frame_s.size, dtype=bool)
    if sample_s.size == 0:
        return np.zeros(frame_s.size, dtype=np.int64), np.zeros(frame_s.size, dtype=bool)
    order = np.argsort(sample_s, kind="stable")
    sorted_s = sample_s[order]
    pos = np.searchsorted(sorted_s, frame_s + _TIME_TOLERANCE_S, side="right") - 1
    steps = np.diff(sorted_s)
    steps = steps[steps > 0]
    period = float(np.median(steps)) if steps.size else np.inf
    valid = (pos >= 0) & (frame_s <= sorted_s[-1] + period + _TIME_TOLERANCE_S)
    return order[np.clip(pos, 0, None)], valid


# ------------------------------------------------------------------------------------------- stimulus
def _read_stimulus(nwbfile: Any, rel_s: np.ndarray, path: Path) -> np.ndarray | None:
    """(T, H, W) uint8 movie on the trace frames from nwbfile.stimulus, or None when there is none.

    Takes the ImageSeries named "stimulus", else the first in-file ImageSeries, else an IndexSeries into
    stored images (how the Allen Brain Observatory stores repeated movies).
    """
    from pynwb.image import ImageSeries, IndexSeries

    entries = list(nwbfile.stimulus.items())
    movies = [(k, s) for k, s in entries if isinstance(s, ImageSeries) and s.data is not None]
    indexed = [(k, s) for k, s in entries if isinstance(s, IndexSeries) and _index_target(s) is not None]
    named = [m for m in movies if _norm(m[0]) == STIMULUS_NAME]
    choice = (named or movies or indexed or [None])[0]
    if choice is None:
        if entries:
            warnings.warn(
                f"{path}: no in-file ImageSeries among stimulus entries {[k for k, _ in entries]}; stimulus left empty",
                stacklevel=4,
            )
        return None
    name, series = choice
    frame_of_sample, n_images, read_images = _image_source(series, name, path)
    own_s = _series_seconds(series, frame_of_sample.size, path)
    sample, valid = _nearest_earlier(own_s, rel_s)
    if not valid.all():
        warnings.warn(
            f"{path}: stimulus '{name}' does not cover {int((~valid).sum())} of {rel_s.size} frames; "
            f"those show grey {_BLANK_GREY}",
            stacklevel=4,
        )
    wanted = frame_of_sample[sample[valid]]
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n_images):
        raise FormatError(f"{path}: stimulus '{name}' indexes images outside its {n_images} images")
    unique, inverse = np.unique(wanted, return_inverse=True)
    frames = _to_grey_uint8(read_images(unique), name, path)
    movie = np.full((rel_s.size, *frames.shape[1:]), _BLANK_GREY, dtype=np.uint8)
    movie[valid] = frames[inverse.reshape(-1)]
    return movie


def _index_target(series: Any) -> Any:
    """What an IndexSeries indexes: an in-file ImageSeries (older files) or an Images container."""
    from pynwb.base import Images
    from pynwb.image import ImageSeries

    old = series.indexed_timeseries
    if isinstance(old, ImageSeries) and old.data is not None:
        return old
    return series.indexed_images if isinstance(series.indexed_images, Images) else None


def _image_source(series: Any, name: str, path: Path) -> tuple[np.ndarray, int, Any]:
    """(image index per sample, number of images, read(sorted indices) -> (K, H, W[, C]) array)."""
    from pynwb.image import IndexSeries

    if isinstance(series, IndexSeries):
        frame_of_sample = np.asarray(series.data[:], dtype=np.int64).reshape(-1)
        target = _index_target(series)
    else:
        frame_of_sample, target = None, series
    if hasattr(target, "images"):  # an Images container: one dataset per image, in order_of_images
        order = target.order_of_images
        images = list(order.data[:]) if order is not None else list(target.images.values())
        shapes = {tuple(np.shape(im.data)) for im in images}
        if len(shapes) > 1:
            raise FormatError(f"{path}: stimulus '{name}' indexes images of different sizes {sorted(shapes)}")
        shape = (len(images), *next(iter(shapes), (0, 0)))

        def read(indices: np.ndarray) -> np.ndarray:
            if not indices.size:
                return np.zeros((0, *shape[1:]), np.uint8)
            return np.stack([np.asarray(images[i].data[:]) for i in indices])

    else:
        data = target.data
        shape = tuple(data.shape)

        def read(indices: np.ndarray) -> np.ndarray:
            if indices.size > shape[0] // 2:
                return np.asarray(data[:])[indices]
            # h5py reads a sorted index list; np.unique gave us one
            return np.asarray(data[indices.tolist()]) if indices.size else np.zeros((0, *shape[1:]), np.uint8)

    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise FormatError(f"{path}: stimulus '{name}' has shape {shape}; expected (T, H, W) or (T, H, W, 1|3|4) frames")
    if frame_of_sample is None:
        frame_of_sample = np.arange(shape[0])
    return frame_of_sample, shape[0], read


def _to_grey_uint8(frames: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Frames as uint8 grey: colour averaged by luminance, integers 0..255 kept, floats 0..1 scaled."""
    if frames.ndim == 4:
        if frames.shape[3] == 1:
            frames = frames[..., 0]
        else:
            weights = np.array([0.299, 0.587, 0.114])
            frames = frames[..., :3].astype(np.float64) @ weights
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.number) or np.issubdtype(frames.dtype, np.complexfloating):
        raise FormatError(f"{path}: stimulus '{name}' holds {frames.dtype}, cannot convert to uint8 grey")
    values = frames.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = float(np.min(values)), float(np.max(values))
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
        raise FormatError(
            f"{path}: stimulus '{name}' ({frames.dtype}) spans [{low}, {high}], "
            "not convertible to uint8 grey (expected 0..255, or 0..1 for floats)"
        )
    if np.issubdtype(frames.dtype, np.floating) and high <= 1.0:
        values = values * 255.0
    return np.round(values).astype(np.uint8)


# --------------------------------------------------------------------------------------------- trials
def _read_trials(nwbfile: Any, rel_s: np.ndarray) -> list[Trial]:
    """Trials as contiguous frame ranges: each runs from its start frame to the next trial's start.

    Frames before the first trial (if any) form a trial with index -1 and tier 'none'.
    """
    table = nwbfile.trials
    t = rel_s.size
    if table is None or len(table) == 0:
        return []
    starts_s = np.asarray(table["start_time"].data[:], dtype=np.float64)
    colnames = set(table.colnames)
    indices = (
        np.asarray(table["trial_index"].data[:], dtype=np.int64)
        if "trial_index" in colnames
        else np.asarray(table.id.data[:], dtype=np.int64)
    )
    tiers = [_text(v) for v in table["tier"].data[:]] if "tier" in colnames else ["none"] * len(starts_s)
    order = np.argsort(starts_s, kind="stable")
    starts = np.searchsorted(rel_s, starts_s[order] - _TIME_TOLERANCE_S, side="left")
    trials = [Trial(-1, 0, int(starts[0]), "none")] if starts[0] > 0 else []
    bounds = [*starts.tolist(), t]
    for k, row in enumerate(order):
        trials.append(Trial(int(indices[row]), int(bounds[k]), int(bounds[k + 1]), tiers[row]))
    return trials


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
