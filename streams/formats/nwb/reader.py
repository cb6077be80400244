"""Reading a Session from an NWB file: our own files exactly, files written by other tools by convention.

This module exists to turn any NWB file into a Session: the traces, their clock and frame rate, and the
behaviour, stimulus and trials, with behaviour and stimulus resampled onto the trace frames. Which series to
read in a foreign file is guessed by `naming`; our own layout is described in `writer`. Errors name the file
and the fault as FormatError; a channel the file lacks becomes NaN, with a warning that names it.

Sample times and values are read with pynwb's own ``get_timestamps()`` and ``get_data_in_units()``
(conversion, per-channel ``channel_conversion``, offset).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.formats import FormatError
from neurocine.streams.formats.nwb.metadata import (
    CUT_COLUMN,
    METADATA_KEY,
    STIMULUS_NAME,
    _datetime_to_ns,
    _import_pynwb,
    _seconds_to_ns,
)
from neurocine.streams.formats.nwb.naming import (
    _BEHAVIOUR_RULES,
    _behaviour_series,
    _find_module,
    _norm,
    _pick_roi_response_series,
    describe_holdings,
)
from neurocine.streams.session import DEFAULT_FRAME_RATE, Session, SessionError, Trial

#: Samples closer than this (seconds) count as simultaneous when matching clocks (float rounding).
_TIME_TOLERANCE_S = 1e-9
#: Grey shown where a foreign stimulus does not cover a trace frame (the blank screen between movies).
_BLANK_GREY = 128


def read_nwb(path: str | Path, series: str | None = None) -> Session:
    """Read a session from an NWB file written by `write_nwb` (exactly) or by other tools (by convention).

    `series` names the trace series to read ('Deconvolved/plane0', 'dff', ...) when the file holds several;
    without it the deconvolved one is taken, else the dF/F one (naming.py). Errors name the file and the fault
    as FormatError (one the file cannot be used for lists what it holds); a channel the file lacks becomes NaN,
    with a warning that names it.
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
            return _session_from_nwbfile(nwbfile, p, series)
    except FormatError:
        raise
    except SessionError as e:
        raise FormatError(f"{p}: the file's contents do not form a valid session: {e}") from e
    except Exception as e:
        raise FormatError(f"{p}: reading failed (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _session_from_nwbfile(nwbfile: Any, path: Path, name: str | None = None) -> Session:
    meta = _neurocine_metadata(nwbfile)
    ophys = _find_module(nwbfile, ("ophys",))
    if ophys is None:
        raise FormatError(f"{path}: no 'ophys' processing module (modules: {sorted(nwbfile.processing) or 'none'}; "
                          f"the file holds: {describe_holdings(nwbfile)})")
    series = _pick_roi_response_series(ophys, path, name, nwbfile)
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
    cuts = [bool(v) for v in table[CUT_COLUMN].data[:]] if CUT_COLUMN in colnames else [False] * len(starts_s)
    order = np.argsort(starts_s, kind="stable")
    starts = np.searchsorted(rel_s, starts_s[order] - _TIME_TOLERANCE_S, side="left")
    trials = [Trial(-1, 0, int(starts[0]), "none")] if starts[0] > 0 else []
    bounds = [*starts.tolist(), t]
    for k, row in enumerate(order):
        trials.append(Trial(int(indices[row]), int(bounds[k]), int(bounds[k + 1]), tiers[row], cuts[row]))
    return trials


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
