"""NWB sessions: exact round trips of our own files, and replay of files other tools write with pynwb."""

from __future__ import annotations

import datetime as dt
import sys
import warnings
from pathlib import Path

import numpy as np
import pynwb  # a missing extra must fail, not skip
import pytest
from hdmf.common import VectorData, VectorIndex
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.base import ImageReferences, Images
from pynwb.behavior import BehavioralTimeSeries, EyeTracking, PupilTracking, SpatialSeries
from pynwb.file import Subject
from pynwb.image import GrayscaleImage, ImageSeries, IndexSeries
from pynwb.ophys import (
    DfOverF,
    Fluorescence,
    ImageSegmentation,
    OpticalChannel,
    PlaneSegmentation,
    RoiResponseSeries,
)

from neurocine.streams.formats import FormatError, load_session, save_session
from neurocine.streams.formats.nwb import read_nwb, write_nwb
from neurocine.streams.session import Session, Trial, regular_timestamps

RIG_START_NS = 1_700_000_000_123_456_789  # a rig clock reading with sub-microsecond digits


def make_session(
    seed: int = 0, t: int = 120, n: int = 50, stimulus: bool = True, start_ns: int = RIG_START_NS
) -> Session:
    rng = np.random.default_rng(seed)
    traces = rng.gamma(2.0, 1.0, (t, n)).astype(np.float32)
    traces[rng.random((t, n)) < 0.05] = np.nan
    behaviour = rng.normal(0.0, 1.0, (t, 4)).astype(np.float32)
    behaviour[5:9, 1] = np.nan
    jitter = rng.integers(-40_000, 40_000, t)  # a real rig's frame clock is not perfectly regular
    return Session(
        traces=traces,
        behaviour=behaviour,
        timestamps_ns=regular_timestamps(t, 30.0, start_ns + 1_000_000) + jitter,
        neuron_ids=rng.choice(1_000_000, n, replace=False),
        frame_rate=30.0,
        mouse_id="mouse-21067",
        stimulus=rng.integers(0, 256, (t, 36, 64), dtype=np.uint8) if stimulus else None,
        trials=[Trial(11, 0, t // 2, "train"), Trial(4, t // 2, t, "oracle")],
        source="rig",
        start_time_ns=start_ns,
    )


def assert_same_session(a: Session, b: Session) -> None:
    assert b.traces.dtype == np.float32 and b.traces.tobytes() == a.traces.tobytes()
    assert b.behaviour.dtype == np.float32 and b.behaviour.tobytes() == a.behaviour.tobytes()
    assert np.array_equal(b.timestamps_ns, a.timestamps_ns)
    assert np.array_equal(b.neuron_ids, a.neuron_ids)
    if a.stimulus is None:
        assert b.stimulus is None
    else:
        assert b.stimulus is not None and b.stimulus.dtype == np.uint8
        assert b.stimulus.tobytes() == a.stimulus.tobytes()
    assert b.trials == a.trials
    assert b.frame_rate == a.frame_rate
    assert (b.mouse_id, b.session_id, b.source, b.start_time_ns) == (
        a.mouse_id,
        a.session_id,
        a.source,
        a.start_time_ns,
    )


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    session = make_session()
    path = tmp_path / "s.nwb"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own files read without complaint
        write_nwb(session, path)
        back = read_nwb(path)
    assert_same_session(session, back)
    assert np.isnan(back.traces).any()
    assert [p.name for p in tmp_path.iterdir()] == ["s.nwb"]  # no temp file left behind


def test_round_trip_without_stimulus_and_with_empty_trials(tmp_path: Path) -> None:
    session = make_session(seed=1, stimulus=False)
    session.trials = [Trial(0, 0, 0, "none"), Trial(1, 0, 70, "train"), Trial(2, 70, 70), Trial(3, 70, 120)]
    session.trials.append(Trial(9, 120, 120, "final_test_main"))
    session.source = "synthetic"
    write_nwb(session, tmp_path / "s.nwb")
    assert_same_session(session, read_nwb(tmp_path / "s.nwb"))


@pytest.mark.parametrize("start_ns", [0, 123_456_789_012, RIG_START_NS])
def test_timestamps_come_back_exactly_whatever_the_start(tmp_path: Path, start_ns: int) -> None:
    session = make_session(seed=2, t=40, n=5, stimulus=False, start_ns=start_ns)
    # start 0 with rig-clock timestamps: seconds after the start would lose nanoseconds in float64
    session.timestamps_ns = RIG_START_NS + np.cumsum(np.random.default_rng(3).integers(33_000_000, 34_000_000, 40))
    write_nwb(session, tmp_path / "t.nwb")
    back = read_nwb(tmp_path / "t.nwb")
    assert np.array_equal(back.timestamps_ns, session.timestamps_ns)
    assert back.start_time_ns == start_ns


def test_file_follows_nwb_conventions(tmp_path: Path) -> None:
    session = make_session(seed=4)
    write_nwb(session, tmp_path / "s.nwb")
    with NWBHDF5IO(str(tmp_path / "s.nwb"), "r") as io:
        nwbfile = io.read()
        assert nwbfile.identifier == session.session_id
        assert nwbfile.subject.subject_id == "mouse-21067" and nwbfile.subject.species == "Mus musculus"
        start = nwbfile.session_start_time
        assert start.utcoffset() == dt.timedelta(0)
        assert start == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.timezone.utc)
        series = nwbfile.processing["ophys"]["Fluorescence"]["deconvolved"]
        assert series.unit == "a.u." and series.data.dtype == np.float32 and series.data.shape == (120, 50)
        assert np.array_equal(series.rois.table.id[:], session.neuron_ids)
        assert series.rois.table.imaging_plane.imaging_rate == 30.0
        seconds = np.asarray(series.timestamps[:])
        assert seconds[0] == pytest.approx(1e-3, abs=5e-5)  # relative to the session start, in s
        behavior = nwbfile.processing["behavior"]
        assert behavior["BehavioralTimeSeries"]["running_speed"].data.shape == (120,)
        assert behavior["PupilTracking"]["pupil_dilation"].data.shape == (120,)
        assert behavior["EyeTracking"]["pupil_center"].data.shape == (120, 2)
        assert nwbfile.stimulus["stimulus"].data.dtype == np.uint8
        assert nwbfile.stimulus["stimulus"].data.shape == (120, 36, 64)
        assert list(nwbfile.trials["tier"][:]) == ["train", "oracle"]
        assert list(nwbfile.trials["trial_index"][:]) == [11, 4]


def test_load_and_save_session_dispatch_to_nwb(tmp_path: Path) -> None:
    session = make_session(seed=5)
    save_session(session, tmp_path / "via.nwb")
    oracle = load_session(tmp_path / "via.nwb", tier="oracle")
    assert oracle.n_frames == 60 and oracle.trials == [Trial(4, 0, 60, "oracle")]
    assert np.array_equal(oracle.traces, session.traces[60:], equal_nan=True)


def test_write_replaces_an_old_file_and_cleans_up_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "s.nwb"
    write_nwb(make_session(seed=6), path)
    newer = make_session(seed=7)
    write_nwb(newer, path)
    assert read_nwb(path).session_id == newer.session_id
    blocked = tmp_path / "dir.nwb"
    blocked.mkdir()  # os.replace cannot put a file over a folder: the write fails at the very end
    with pytest.raises(FormatError, match=r"dir\.nwb"):
        write_nwb(newer, blocked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.nwb", "s.nwb"]


def test_8000_neurons_scale(tmp_path: Path) -> None:
    session = make_session(seed=8, t=300, n=8000)
    write_nwb(session, tmp_path / "big.nwb")
    assert_same_session(session, read_nwb(tmp_path / "big.nwb"))


# ------------------------------------------------------------------------------------- foreign files
def foreign_file(*, ophys_name: str = "OPhys", n: int = 20, t: int = 90) -> tuple[NWBFile, PlaneSegmentation]:
    """An NWBFile as another lab's pipeline writes it: image masks, added row by row, no neurocine JSON."""
    nwbfile = NWBFile(
        session_description="someone else's recording",
        identifier="foreign-0001",
        session_start_time=dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc),
        subject=Subject(subject_id="M42", species="Mus musculus"),
    )
    device = nwbfile.create_device(name="Mesoscope")
    plane = nwbfile.create_imaging_plane(
        name="plane0",
        optical_channel=OpticalChannel(name="ch", description="green", emission_lambda=510.0),
        description="V1 layer 2/3",
        device=device,
        excitation_lambda=920.0,
        indicator="GCaMP6s",
        location="VISp",
        imaging_rate=15.0,
    )
    module = nwbfile.create_processing_module(name=ophys_name, description="suite2p output")
    segmentation = ImageSegmentation()
    module.add(segmentation)
    rois = segmentation.create_plane_segmentation(description="cells", imaging_plane=plane, name="cells")
    for k in range(n):
        mask = np.zeros((8, 8), dtype=np.float32)
        mask[k % 8, k // 8] = 1.0
        rois.add_roi(image_mask=mask, id=1000 + 3 * k)
    return nwbfile, rois


def write_plain(nwbfile: NWBFile, path: Path) -> None:
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


def held_values(sample_s: np.ndarray, values: np.ndarray, frame_s: np.ndarray) -> np.ndarray:
    """Reference for 'nearest earlier sample', written as a plain loop; NaN before the first sample."""
    out = np.full((frame_s.size, *values.shape[1:]), np.nan, dtype=np.float32)
    for i, when in enumerate(frame_s):
        earlier = np.flatnonzero(sample_s <= when)
        if earlier.size:
            out[i] = values[earlier[-1]]
    return out


def test_foreign_file_with_rate_timing_and_resampled_behaviour(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    t, n = 90, 20
    nwbfile, rois = foreign_file(t=t, n=n)
    dff = DfOverF(name="DfOverF")
    nwbfile.processing["OPhys"].add(dff)
    data = rng.normal(0.0, 1.0, (t, n)).astype(np.float32)
    region = rois.create_roi_table_region(region=list(range(n)), description="all")
    dff.create_roi_response_series(name="dff", data=data, rois=region, unit="n.a.", starting_time=2.0, rate=15.0)
    frame_s = 2.0 + np.arange(t) / 15.0

    behavior = nwbfile.create_processing_module(name="Behavior", description="treadmill and eye camera")
    run_s = 1.904 + np.arange(400) / 60.0  # 60 Hz, starts before the imaging
    run = rng.normal(10.0, 2.0, 400).astype(np.float32)
    behavior.add(
        BehavioralTimeSeries(time_series=TimeSeries(name="Running Speed", data=run, unit="cm/s", timestamps=run_s))
    )
    pupil_rate, pupil_start = 20.0, 2.51  # starts after the imaging: the first frames have no pupil yet
    area = rng.uniform(100.0, 200.0, 120).astype(np.float32)
    behavior.add(
        PupilTracking(
            time_series=TimeSeries(
                name="pupil_area", data=area, unit="px^2", starting_time=pupil_start, rate=pupil_rate
            )
        )
    )
    eye_s = np.sort(rng.uniform(1.9, 8.5, 300))  # irregular camera timestamps
    centre = rng.normal(0.0, 5.0, (300, 2)).astype(np.float32)
    behavior.add(
        EyeTracking(
            spatial_series=SpatialSeries(name="pupil_position", data=centre, reference_frame="camera", timestamps=eye_s)
        )
    )
    path = tmp_path / "foreign.nwb"
    write_plain(nwbfile, path)

    session = read_nwb(path)
    assert session.traces.tobytes() == data.tobytes()
    assert np.array_equal(session.neuron_ids, 1000 + 3 * np.arange(n))
    assert session.frame_rate == 15.0
    start_ns = int(dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert session.start_time_ns == start_ns
    assert np.array_equal(session.timestamps_ns, start_ns + np.round(frame_s * 1e9).astype(np.int64))
    assert (session.mouse_id, session.session_id, session.source) == ("M42", "foreign-0001", "replay")
    assert session.stimulus is None
    assert session.trials == [Trial(0, 0, t, "none")]

    assert np.array_equal(session.behaviour[:, 0], held_values(run_s, run, frame_s))
    pupil_s = pupil_start + np.arange(120) / pupil_rate
    expected_pupil = held_values(pupil_s, area, frame_s)
    assert np.isnan(expected_pupil[:8]).all() and not np.isnan(expected_pupil[8:]).any()
    assert np.array_equal(session.behaviour[:, 1], expected_pupil, equal_nan=True)
    assert np.array_equal(session.behaviour[:, 2:], held_values(eye_s, centre, frame_s))


@pytest.mark.filterwarnings("ignore:.*series found")  # this file has no behaviour at all
def test_foreign_file_picks_deconvolved_and_converts_the_stimulus(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    t, n = 60, 12
    nwbfile, rois = foreign_file(ophys_name="ophys", n=n, t=t)
    module = nwbfile.processing["ophys"]
    frame_s = 0.5 + np.arange(t) / 30.0 + rng.uniform(-1e-3, 1e-3, t)
    fluorescence = Fluorescence(name="Fluorescence")
    module.add(fluorescence)
    fluorescence.create_roi_response_series(
        name="raw",
        data=rng.random((t, n)).astype(np.float32),
        rois=rois.create_roi_table_region(region=list(range(n)), description="all"),
        unit="a.u.",
        timestamps=frame_s,
    )
    spikes = rng.random((t, n // 2)).astype(np.float32)
    module.add(
        RoiResponseSeries(
            name="Deconvolved_Spikes",
            data=spikes,
            rois=rois.create_roi_table_region(region=list(range(0, n, 2)), description="every other cell"),
            unit="a.u.",
            timestamps=frame_s,
        )
    )
    # a 60 Hz colour movie, grey in fact (R = G = B), shown from the start of imaging
    grey = rng.integers(0, 256, (130, 9, 16), dtype=np.uint8)
    movie_s = 0.49 + np.arange(130) / 60.0
    nwbfile.add_stimulus(
        ImageSeries(
            name="natural_movie_one",
            data=np.repeat(grey[..., None], 3, axis=3),
            unit="n.a.",
            timestamps=movie_s,
        )
    )
    nwbfile.add_trial(start_time=0.9, stop_time=1.4)
    nwbfile.add_trial(start_time=1.5, stop_time=2.4)
    path = tmp_path / "foreign.nwb"
    write_plain(nwbfile, path)

    with pytest.warns(UserWarning, match="Deconvolved_Spikes"):
        session = read_nwb(path)
    assert session.traces.tobytes() == spikes.tobytes()
    assert np.array_equal(session.neuron_ids, 1000 + 3 * np.arange(0, n, 2))
    assert session.frame_rate == pytest.approx(30.0, rel=0.02)  # median interval of jittered stamps
    assert session.stimulus is not None and session.stimulus.shape == (t, 9, 16)
    shown = [np.flatnonzero(movie_s <= when)[-1] for when in frame_s]
    assert np.array_equal(session.stimulus, grey[shown])
    first = int(np.searchsorted(frame_s, 0.9))
    second = int(np.searchsorted(frame_s, 1.5))
    assert session.trials == [Trial(-1, 0, first, "none"), Trial(0, first, second), Trial(1, second, t)]


@pytest.mark.filterwarnings("ignore:.*series found")
def test_stimulus_as_index_series_into_stored_images(tmp_path: Path) -> None:
    """Repeated movies stored once as images and shown through an IndexSeries (Allen-style)."""
    t = 45
    nwbfile, rois = foreign_file(ophys_name="ophys", n=3, t=t)
    nwbfile.processing["ophys"].add(
        RoiResponseSeries(
            name="dff",
            data=np.zeros((t, 3), dtype=np.float32),
            rois=rois.create_roi_table_region(region=[0, 1, 2], description="all"),
            unit="a.u.",
            rate=30.0,
        )
    )
    images = [GrayscaleImage(name=f"img{k}", data=np.full((4, 6), 10 * k, dtype=np.uint8)) for k in range(3)]
    order = images[::-1]  # order_of_images, not the names, defines what an index means
    templates = Images(
        name="templates",
        images=images,
        description="movie frames",
        order_of_images=ImageReferences(name="order_of_images", data=order),
    )
    nwbfile.add_stimulus_template(templates)
    shown = np.array([0, 1, 2, 2, 1, 0, 0, 1, 2, 1, 0, 2, 2, 1, 0], dtype=np.uint32)  # at 10 Hz
    nwbfile.add_stimulus(IndexSeries(name="presentation", data=shown, indexed_images=templates, unit="N/A", rate=10.0))
    write_plain(nwbfile, tmp_path / "f.nwb")
    session = read_nwb(tmp_path / "f.nwb")
    assert session.stimulus is not None and session.stimulus.shape == (t, 4, 6)
    expected = [10 * int(order[shown[i // 3]].name[3:]) for i in range(t)]  # 30 Hz frames, 3 per index
    assert session.stimulus[:, 0, 0].tolist() == expected
    assert (session.stimulus == session.stimulus[:, :1, :1]).all()


def test_missing_behaviour_becomes_nan_with_a_warning(tmp_path: Path) -> None:
    nwbfile, rois = foreign_file(ophys_name="ophys", n=6, t=30)
    data = np.random.default_rng(12).random((30, 6)).astype(np.float32)
    nwbfile.processing["ophys"].add(
        RoiResponseSeries(
            name="events",
            data=data,
            rois=rois.create_roi_table_region(region=list(range(6)), description="all"),
            unit="a.u.",
            rate=30.0,
        )
    )
    speed = np.arange(20, dtype=np.float32)  # the treadmill logger stopped after 20 samples
    behaviour = nwbfile.create_processing_module(name="behaviour", description="")
    behaviour.add(TimeSeries(name="speed", data=speed, unit="cm/s", rate=30.0))
    write_plain(nwbfile, tmp_path / "f.nwb")
    with pytest.warns(UserWarning) as caught:
        session = read_nwb(tmp_path / "f.nwb")
    messages = " ".join(str(w.message) for w in caught)
    assert "pupil_dilation" in messages and "pupil_x, pupil_y" in messages and "running" not in messages
    # a sample holds for one sample interval past the last one, then the channel is unknown
    assert np.array_equal(session.behaviour[:21, 0], [*speed, speed[-1]])
    assert np.isnan(session.behaviour[21:, 0]).all()
    assert np.isnan(session.behaviour[:, 1:]).all()
    assert session.frame_rate == 30.0


# ------------------------------------------------------------------------------------------ bad files
def test_truncated_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "s.nwb"
    write_nwb(make_session(seed=13), path)
    whole = path.read_bytes()
    for keep in (len(whole) // 2, 4096):
        path.write_bytes(whole[:keep])
        with pytest.raises(FormatError, match=r"s\.nwb.*truncated") as info:
            read_nwb(path)
        assert info.value.__cause__ is not None


def test_not_hdf5_and_missing_file_are_format_errors(tmp_path: Path) -> None:
    (tmp_path / "text.nwb").write_text("not an nwb file\n")
    with pytest.raises(FormatError, match=r"text\.nwb: not an HDF5 file"):
        read_nwb(tmp_path / "text.nwb")
    with pytest.raises(FormatError, match=r"gone\.nwb: no such file"):
        read_nwb(tmp_path / "gone.nwb")


def test_file_without_ophys_module_is_a_format_error(tmp_path: Path) -> None:
    nwbfile, _ = foreign_file(ophys_name="imaging")
    write_plain(nwbfile, tmp_path / "f.nwb")
    with pytest.raises(FormatError, match=r"f\.nwb: no 'ophys' processing module \(modules: \['imaging'\]"):
        read_nwb(tmp_path / "f.nwb")


def test_ophys_without_roi_response_series_is_a_format_error(tmp_path: Path) -> None:
    nwbfile, _ = foreign_file(ophys_name="ophys")
    write_plain(nwbfile, tmp_path / "f.nwb")
    with pytest.raises(FormatError, match=r"f\.nwb: no RoiResponseSeries"):
        read_nwb(tmp_path / "f.nwb")


@pytest.mark.filterwarnings("ignore:.*oriented incorrectly")  # pynwb warns too, but writes it
def test_neuron_by_time_orientation_is_refused(tmp_path: Path) -> None:
    nwbfile, rois = foreign_file(ophys_name="ophys", n=10)
    series = RoiResponseSeries(
        name="dff",
        data=np.zeros((10, 40), dtype=np.float32),  # (N, T): wrong for NWB
        rois=rois.create_roi_table_region(region=list(range(10)), description="all"),
        unit="a.u.",
        rate=30.0,
    )
    nwbfile.processing["ophys"].add(series)
    write_plain(nwbfile, tmp_path / "f.nwb")
    with pytest.raises(FormatError, match=r"shape \(10, 40\).*10 ROIs.*\(N, T\)"):
        read_nwb(tmp_path / "f.nwb")


@pytest.mark.filterwarnings("ignore:.*series found")
def test_unconvertible_stimulus_is_a_format_error(tmp_path: Path) -> None:
    nwbfile, rois = foreign_file(ophys_name="ophys", n=4)
    nwbfile.processing["ophys"].add(
        RoiResponseSeries(
            name="dff",
            data=np.zeros((20, 4), dtype=np.float32),
            rois=rois.create_roi_table_region(region=list(range(4)), description="all"),
            unit="a.u.",
            rate=30.0,
        )
    )
    movie = np.linspace(-1000.0, 1000.0, 20 * 6 * 8).reshape(20, 6, 8)
    nwbfile.add_stimulus(ImageSeries(name="stimulus", data=movie, unit="n.a.", rate=30.0))
    write_plain(nwbfile, tmp_path / "f.nwb")
    with pytest.raises(FormatError, match=r"f\.nwb: stimulus 'stimulus' .*not convertible to uint8"):
        read_nwb(tmp_path / "f.nwb")


def test_missing_pynwb_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynwb", None)  # what an install without the [nwb] extra sees
    with pytest.raises(ImportError, match=r"pip install 'neurocine\[nwb\]'"):
        write_nwb(make_session(), tmp_path / "s.nwb")
    with pytest.raises(ImportError, match=r"neurocine\[nwb\]"):
        read_nwb(tmp_path / "s.nwb")


def test_roi_table_has_one_placeholder_pixel_per_neuron(tmp_path: Path) -> None:
    """Our column-wise ROI table reads like one built row by row: one mask per neuron."""
    session = make_session(seed=14, t=10, n=7, stimulus=False)
    write_nwb(session, tmp_path / "s.nwb")
    with NWBHDF5IO(str(tmp_path / "s.nwb"), "r") as io:
        table = io.read().processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert isinstance(table["pixel_mask"], VectorIndex)
        assert isinstance(table["pixel_mask"].target, VectorData)
        assert len(table) == 7 and all(len(table["pixel_mask"][k]) == 1 for k in range(7))


# ------------------------------------------------------------------------- units and time, by pynwb
def test_a_regular_clock_is_stored_as_a_rate_and_comes_back_exactly(tmp_path: Path) -> None:
    """A constant-rate clock (the synthetic rig's) is written as starting_time + rate, as NWB best practice
    asks, and pynwb's get_timestamps gives back every nanosecond."""
    session = make_session(seed=19, t=200, n=6)
    session.timestamps_ns = RIG_START_NS + 5 + np.arange(200, dtype=np.int64) * 33_333_333
    write_nwb(session, tmp_path / "s.nwb")
    with NWBHDF5IO(str(tmp_path / "s.nwb"), "r") as io:
        nwbfile = io.read()
        traces = nwbfile.processing["ophys"]["Fluorescence"]["deconvolved"]
        running = nwbfile.processing["behavior"]["BehavioralTimeSeries"]["running_speed"]
        assert traces.timestamps is None and traces.rate == 1e9 / 33_333_333
        assert running.timestamps is None and (running.starting_time, running.rate) == (
            traces.starting_time,
            traces.rate,
        )
    assert_same_session(session, read_nwb(tmp_path / "s.nwb"))


@pytest.mark.filterwarnings("ignore:.*series found")
def test_channel_conversion_offset_and_rate_timing_are_applied(tmp_path: Path) -> None:
    """An eye tracker's analog x/y outputs digitised as an ElectricalSeries, with per-channel gains."""
    from pynwb.ecephys import ElectricalSeries

    t, n = 60, 4
    nwbfile, rois = foreign_file(ophys_name="ophys", n=n, t=t)
    traces = np.arange(t * n, dtype=np.int16).reshape(t, n)
    nwbfile.processing["ophys"].add(
        RoiResponseSeries(
            name="deconvolved",
            data=traces,
            rois=rois.create_roi_table_region(region=list(range(n)), description="all"),
            unit="a.u.",
            conversion=0.5,
            offset=-1.0,
            starting_time=1.0,
            rate=30.0,
        )
    )
    group = nwbfile.create_electrode_group(
        name="daq", description="analog inputs", location="none", device=nwbfile.devices["Mesoscope"]
    )
    for _ in range(2):
        nwbfile.add_electrode(group=group, location="none")
    counts = np.random.default_rng(15).integers(-2000, 2000, (t, 2)).astype(np.int16)
    nwbfile.add_acquisition(
        ElectricalSeries(
            name="pupil_position",
            data=counts,
            electrodes=nwbfile.create_electrode_table_region([0, 1], "eye tracker x, y"),
            conversion=1e-3,  # ADC counts to volts
            channel_conversion=[20.0, 15.0],  # volts to degrees, per channel
            offset=0.25,
            starting_time=1.0,
            rate=30.0,
        )
    )
    write_plain(nwbfile, tmp_path / "f.nwb")
    session = read_nwb(tmp_path / "f.nwb")
    assert np.array_equal(session.traces, (traces * 0.5 - 1.0).astype(np.float32))
    degrees = counts * 1e-3 * np.array([20.0, 15.0]) + 0.25
    assert np.array_equal(session.behaviour[:, 2:], degrees.astype(np.float32))
    start_ns = int(dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    frame_s = np.arange(t) / 30.0 + 1.0  # pynwb's own formula for rate timing
    assert np.array_equal(session.timestamps_ns, start_ns + np.round(frame_s * 1e9).astype(np.int64))


@pytest.mark.filterwarnings("ignore:.*series found")
def test_channel_conversion_of_the_wrong_length_names_file_and_series(tmp_path: Path) -> None:
    from pynwb.ecephys import ElectricalSeries

    nwbfile, rois = foreign_file(ophys_name="ophys", n=3, t=20)
    nwbfile.processing["ophys"].add(
        RoiResponseSeries(
            name="dff",
            data=np.zeros((20, 3), dtype=np.float32),
            rois=rois.create_roi_table_region(region=[0, 1, 2], description="all"),
            unit="a.u.",
            rate=30.0,
        )
    )
    group = nwbfile.create_electrode_group(
        name="daq", description="analog inputs", location="none", device=nwbfile.devices["Mesoscope"]
    )
    for _ in range(3):
        nwbfile.add_electrode(group=group, location="none")
    nwbfile.add_acquisition(
        ElectricalSeries(
            name="pupil_position",
            data=np.zeros((20, 3), dtype=np.int16),
            electrodes=nwbfile.create_electrode_table_region([0, 1, 2], "x, y, z"),
            channel_conversion=[1.0, 2.0],
            rate=30.0,
        )
    )
    write_plain(nwbfile, tmp_path / "f.nwb")
    with pytest.raises(FormatError, match=r"f\.nwb: acquisition/pupil_position has 2 channel_conversion"):
        read_nwb(tmp_path / "f.nwb")


# ---------------------------------------------------------------- what we write passes NWB's checkers
def nwb_findings(path: Path) -> list[str]:
    """pynwb's validator errors plus nwbinspector's findings at BEST_PRACTICE_VIOLATION or worse
    (CRITICAL, validation errors and checks that crashed included), as readable lines."""
    from nwbinspector import Importance, inspect_nwbfile

    errors = [f"pynwb.validate: {e}" for e in pynwb.validate(path=str(path))]
    for message in inspect_nwbfile(nwbfile_path=path):
        if message is not None and message.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value:
            errors.append(f"{message.importance.name} {message.check_function_name} {message.location}: "
                          f"{message.message}")
    return errors


def test_unknown_facts_pass_the_checkers_without_inventing(tmp_path: Path) -> None:
    session = make_session(seed=16, t=80, n=8)  # a rig stream: no age, sex, area or units on the wire
    write_nwb(session, tmp_path / "rig.nwb")
    assert nwb_findings(tmp_path / "rig.nwb") == []
    with NWBHDF5IO(str(tmp_path / "rig.nwb"), "r") as io:
        nwbfile = io.read()
        assert (nwbfile.subject.sex, nwbfile.subject.age) == ("U", "P0D/")
        assert nwbfile.imaging_planes["ImagingPlane"].location == "VIS"
        assert nwbfile.processing["behavior"]["EyeTracking"]["pupil_center"].unit == "n.a."


def test_a_session_shorter_than_its_widest_axis_trips_only_the_orientation_heuristic(tmp_path: Path) -> None:
    """nwbinspector guesses that time is the longest axis; a recording with fewer frames than neurons (or
    than stimulus pixels across) is still time-first, as NWB requires, and that guess is all it reports."""
    session = make_session(seed=18, t=30, n=40)
    write_nwb(session, tmp_path / "short.nwb")
    findings = nwb_findings(tmp_path / "short.nwb")
    assert len(findings) == 2 and all(f.startswith("CRITICAL check_data_orientation") for f in findings)
    assert any("deconvolved" in f and "(30, 40)" in f for f in findings)
    assert any("stimulus" in f and "(30, 36, 64)" in f for f in findings)
    assert_same_session(session, read_nwb(tmp_path / "short.nwb"))


def test_simulated_nwb_passes_the_checkers_and_round_trips(tmp_path: Path) -> None:
    from neurocine.streams.synthetic import make_mouse, plan_trials, simulate_dataset, simulate_session

    before_ns = dt.datetime.now(dt.timezone.utc).timestamp() * 1e9
    path = simulate_dataset(tmp_path / "sim", n_neurons=20, n_trials=3, repeats=1, fmt="nwb", progress=False)
    assert nwb_findings(path) == []
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        assert (nwbfile.subject.subject_id, nwbfile.subject.sex, nwbfile.subject.age) == ("synthetic-0", "U", "P60D/")
        assert nwbfile.imaging_planes["ImagingPlane"].location == "VISp"
        assert nwbfile.processing["behavior"]["EyeTracking"]["pupil_center"].unit == "degrees"
    back = read_nwb(path)
    assert back.start_time_ns >= before_ns - 1e6  # the simulation's wall clock, not 1970
    expected = simulate_session(make_mouse(0, 20), plan_trials(3, 1, 0))  # the same numbers, in memory
    assert back.traces.tobytes() == expected.traces.tobytes()
    assert back.behaviour.tobytes() == expected.behaviour.tobytes()
    assert expected.stimulus is not None and back.stimulus is not None
    assert back.stimulus.tobytes() == expected.stimulus.tobytes()
    assert back.trials == expected.trials and back.source == "synthetic"
    assert np.array_equal(back.timestamps_ns - back.start_time_ns, expected.timestamps_ns)


def _record_cli(out: Path, publisher: list[str]) -> None:
    """`neurocine record --out X.nwb --until-end` against a real publisher, both as subprocesses."""
    import subprocess

    from tests.conftest import REPO, free_port

    ep = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "neurocine"]
    rec = subprocess.Popen([*cmd, "record", "--connect", ep, "--out", str(out), "--until-end"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pub = subprocess.run([*cmd, *publisher, "--bind", ep, "--wait-subscribers", "1"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert pub.returncode == 0, pub.stderr
        _, stderr = rec.communicate(timeout=60)
    finally:
        rec.kill()
    assert rec.returncode == 0, stderr


def test_recorded_nwb_passes_the_checkers_and_round_trips(tmp_path: Path) -> None:
    session = make_session(seed=17, t=90, n=12)
    save_session(session, tmp_path / "src.ncr")
    _record_cli(tmp_path / "rec.nwb", ["replay", str(tmp_path / "src.ncr"), "--speed", "0"])
    assert nwb_findings(tmp_path / "rec.nwb") == []
    back = read_nwb(tmp_path / "rec.nwb")
    assert back.traces.tobytes() == session.traces.tobytes()
    assert back.behaviour.tobytes() == session.behaviour.tobytes()
    assert back.stimulus is not None and session.stimulus is not None
    assert back.stimulus.tobytes() == session.stimulus.tobytes()
    assert np.array_equal(back.timestamps_ns, session.timestamps_ns)
    assert (back.mouse_id, back.start_time_ns) == (session.mouse_id, session.start_time_ns)


def test_recorded_synthetic_rig_passes_the_checkers(tmp_path: Path) -> None:
    _record_cli(tmp_path / "rig.nwb", ["rig", "--synthetic", "--neurons", "10", "--frames", "75"])
    assert nwb_findings(tmp_path / "rig.nwb") == []
    back = read_nwb(tmp_path / "rig.nwb")
    assert back.n_frames == 75 and back.source == "synthetic" and back.mouse_id == "synthetic-0"
    with NWBHDF5IO(str(tmp_path / "rig.nwb"), "r") as io:
        nwbfile = io.read()
        assert nwbfile.session_start_time.year >= 2024 and nwbfile.subject.age == "P60D/"
