"""Writing a Session as an NWB file: the one layout neurocine writes, and what keeps it valid NWB.

This module exists so the written layout, and the choices that keep it valid NWB, are in one place.

Written layout (and what `read_nwb` looks for first):

- ``processing/ophys``: ImageSegmentation/PlaneSegmentation whose row ids are the neuron ids, and
  Fluorescence/RoiResponseSeries "deconvolved" (T, N) float32 with timestamps in seconds (starting_time
  and rate instead when the clock is exactly regular, as NWB best practice asks).
- ``processing/behavior``: BehavioralTimeSeries/"running_speed", PupilTracking/"pupil_dilation",
  EyeTracking/"pupil_center" (T, 2) = [x, y]; their timestamps link to the traces' timestamps.
- ``stimulus/stimulus``: ImageSeries (T, H, W) uint8, the frame on screen at each acquisition.
- ``intervals/trials``: start_time, stop_time, trial_index, tier (and ``cut``, when a trial does not follow the
  previous one in time: a recorded replay of Sensorium trials).
- The frame rate is the imaging plane's ``imaging_rate``; the session source and the exact start time
  in nanoseconds live in ``general/data_collection`` as JSON ``{"neurocine": {...}}``.
- Subject, imaging-plane location and behaviour units come from `recording_facts`: what the synthetic
  mouse states about itself for ``source == "synthetic"``, NWB's "unknown" conventions otherwise (the
  wire protocol carries no age, sex, brain area or behaviour units). What we write passes pynwb's
  validator with no CRITICAL or BEST_PRACTICE_VIOLATION finding from nwbinspector (tests prove it).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import get_logger
from neurocine.streams.formats import FormatError
from neurocine.streams.formats.nwb.metadata import (
    CUT_COLUMN,
    METADATA_KEY,
    METADATA_VERSION,
    STIMULUS_NAME,
    TRACES_NAME,
    _import_pynwb,
    _ns_to_datetime,
    _ns_to_seconds,
    _seconds_to_ns,
    recording_facts,
)
from neurocine.streams.session import Session

log = get_logger("nwb")


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
    cuts = any(trial.cut for trial in session.trials[1:])
    if cuts:  # only then: a continuous recording's table stays as it was
        nwbfile.add_trial_column(name=CUT_COLUMN, description="True when the trial was not recorded right after "
                                 "the previous one (its start is a cut in the recording; a decoder starts afresh)")
    for k, trial in enumerate(session.trials):
        extra = {CUT_COLUMN: bool(k > 0 and trial.cut)} if cuts else {}
        nwbfile.add_trial(
            start_time=frame_time(trial.start),
            stop_time=frame_time(trial.stop),
            trial_index=int(trial.index),
            tier=str(trial.tier),
            **extra,
        )
