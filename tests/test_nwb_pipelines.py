"""NWB files as real pipelines write them, built with pynwb's own API: suite2p's export (Fluorescence, Neuropil
and Deconvolved containers, one series per plane), an Allen Brain Observatory / DANDI file (dF/F in a DfOverF
container, cell ids as ROI ids, running and eye tracking in their own modules, the movie as an OpticalSeries or
as an IndexSeries into a template of images); the trace series chosen by name or by --series; files we cannot
use are refused with a list of what they hold."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.base import ImageReferences, Images
from pynwb.behavior import EyeTracking, PupilTracking, SpatialSeries
from pynwb.file import Subject
from pynwb.image import GrayscaleImage, IndexSeries, OpticalSeries
from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel, TwoPhotonSeries

from neurocine.streams.formats import FormatError, load_session
from neurocine.streams.formats.nwb import read_nwb
from tests.conftest import REPO

T, FS = 60, 30.0


def new_file(identifier: str) -> tuple[NWBFile, object]:
    nwbfile = NWBFile(session_description="a pipeline's output", identifier=identifier,
                      session_start_time=dt.datetime(2022, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc),
                      subject=Subject(subject_id="408021", species="Mus musculus"))
    device = nwbfile.create_device(name="Microscope")
    plane = nwbfile.create_imaging_plane(
        name="ImagingPlane", optical_channel=OpticalChannel(name="OpticalChannel", description="green",
                                                            emission_lambda=520.0),
        description="V1", device=device, excitation_lambda=920.0, indicator="GCaMP6f", location="VISp",
        imaging_rate=FS)
    return nwbfile, plane


def write(nwbfile: NWBFile, path: Path) -> Path:
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def suite2p_file(path: Path, planes: tuple[int, ...] = (7,), seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    """suite2p's NWB export: ImageSegmentation/PlaneSegmentation (pixel masks, an `iscell` column), and the
    containers Fluorescence, Neuropil and Deconvolved, each with one RoiResponseSeries per plane (`plane<k>`,
    rate = fs), all in processing/ophys; the raw movie as a TwoPhotonSeries in acquisition."""
    rng = np.random.default_rng(seed)
    nwbfile, plane = new_file("suite2p-export")
    nwbfile.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, rate=FS, unit="a.u.",
                                            data=rng.integers(0, 4000, (T, 8, 8)).astype(np.int16)))
    ophys = nwbfile.create_processing_module(name="ophys", description="optical physiology processed data")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    ps = segmentation.create_plane_segmentation(name="PlaneSegmentation", description="suite2p output",
                                                imaging_plane=plane)
    total = sum(planes)
    for k in range(total):
        ps.add_roi(pixel_mask=[(k % 8, k // 8, 1.0), (k % 8, (k // 8 + 1) % 8, 0.5)])
    ps.add_column("iscell", "two columns - iscell & probcell", np.stack([np.ones(total), rng.random(total)], 1))
    regions, first = [], 0
    for k, n in enumerate(planes):
        regions.append(ps.create_roi_table_region(region=list(range(first, first + n)), description=f"ROIs plane{k}"))
        first += n
    deconvolved = []
    for name in ("Fluorescence", "Neuropil", "Deconvolved"):
        container = Fluorescence(name=name)
        for k, n in enumerate(planes):
            data = rng.gamma(1.0, 1.0, (T, n)).astype(np.float32)
            container.create_roi_response_series(name=f"plane{k}", data=data, rois=regions[k], unit="lumens", rate=FS)
            if name == "Deconvolved":
                deconvolved.append(data)
        ophys.add(container)
    return write(nwbfile, path), deconvolved


def allen_file(path: Path, *, stimulus: str, events: bool = False, seed: int = 1) -> tuple[Path, dict]:
    """An Allen Brain Observatory / DANDI-style file: cell specimen ids as ROI ids, dF/F in a DfOverF container
    ('dff'/'traces') beside corrected fluorescence, sample timestamps; running speed in processing/running, pupil
    area and position in processing/eye_tracking; the movie as an OpticalSeries (float 0..1) or an IndexSeries
    into a stimulus template of images."""
    rng = np.random.default_rng(seed)
    n = 9
    frame_s = 10.0 + np.arange(T) / FS + rng.uniform(-2e-4, 2e-4, T)
    nwbfile, plane = new_file("allen-ophys")
    ophys = nwbfile.create_processing_module(name="ophys", description="ophys processing")
    segmentation = ImageSegmentation(name="image_segmentation")
    ophys.add(segmentation)
    ps = segmentation.create_plane_segmentation(name="cell_specimen_table", description="cells", imaging_plane=plane)
    ids = 1086_000_000 + rng.choice(100_000, n, replace=False)
    for k in range(n):
        mask = np.zeros((16, 16), np.float32)
        mask[k, k] = 1.0
        ps.add_roi(image_mask=mask, id=int(ids[k]))
    region = ps.create_roi_table_region(region=list(range(n)), description="all cells")
    dff = rng.normal(0, 0.2, (T, n)).astype(np.float32)
    container = DfOverF(name="dff")
    container.create_roi_response_series(name="traces", data=dff, rois=region, unit="NA", timestamps=frame_s)
    ophys.add(container)
    corrected = Fluorescence(name="corrected_fluorescence")
    corrected.create_roi_response_series(name="traces", data=rng.random((T, n)).astype(np.float32), rois=region,
                                         unit="NA", timestamps=frame_s)
    ophys.add(corrected)
    events_data = None
    if events:
        events_data = rng.exponential(0.1, (T, n)).astype(np.float32)
        ophys.add(DfOverF(name="event_detection", roi_response_series=[]))
        ophys["event_detection"].create_roi_response_series(name="events", data=events_data, rois=region, unit="NA",
                                                            timestamps=frame_s)
    running = nwbfile.create_processing_module(name="running", description="running speed")
    run_s = 9.9 + np.arange(4 * T) / 60.0
    speed = rng.normal(5, 1, 4 * T).astype(np.float32)
    running.add(TimeSeries(name="speed", data=speed, unit="cm/s", timestamps=run_s))
    eye = nwbfile.create_processing_module(name="eye_tracking", description="pupil")
    area = rng.uniform(100, 200, T).astype(np.float32)
    eye.add(PupilTracking(time_series=TimeSeries(name="pupil_area", data=area, unit="px", timestamps=frame_s)))
    centre = rng.normal(0, 3, (T, 2)).astype(np.float32)
    eye.add(EyeTracking(spatial_series=SpatialSeries(name="pupil_position", data=centre, reference_frame="camera",
                                                     timestamps=frame_s)))
    movie = rng.random((T, 12, 20)).astype(np.float32)  # 0..1 floats, as stimulus templates store them
    if stimulus == "optical":
        nwbfile.add_stimulus(OpticalSeries(name="natural_movie_one", data=movie, unit="n.a.", timestamps=frame_s,
                                           distance=0.15, field_of_view=[0.5, 0.3], orientation="lower left"))
    else:
        frames = [GrayscaleImage(name=f"frame_{k:03d}", data=(movie[k] * 255).astype(np.uint8)) for k in range(T)]
        template = Images(name="natural_movie_one_template", images=frames, description="movie frames",
                          order_of_images=ImageReferences(name="order_of_images", data=frames))
        nwbfile.add_stimulus_template(template)
        nwbfile.add_stimulus(IndexSeries(name="natural_movie_one_presentations", data=np.arange(T, dtype=np.uint32),
                                         indexed_images=template, unit="N/A", timestamps=frame_s))
    truth = {"ids": ids, "dff": dff, "events": events_data, "speed": speed, "run_s": run_s, "area": area,
             "centre": centre, "frame_s": frame_s, "movie": movie}
    return write(nwbfile, path), truth


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocine", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


# ---------------------------------------------------------------------------------------------- suite2p
def test_suite2p_export_reads_its_deconvolved_series(tmp_path: Path) -> None:
    path, deconvolved = suite2p_file(tmp_path / "ophys.nwb")
    with pytest.warns(UserWarning) as caught:
        session = read_nwb(path)
    said = " ".join(str(w.message) for w in caught)
    assert "using the deconvolved one, 'Deconvolved/plane0'" in said and "'Neuropil/plane0' (60, 7)" in said
    assert "no running_speed series found" in said  # suite2p writes no behaviour: NaN, and said so
    assert session.traces.tobytes() == deconvolved[0].tobytes()
    assert session.neuron_ids.tolist() == list(range(7))  # the PlaneSegmentation's own ids
    assert np.isnan(session.behaviour).all() and session.stimulus is None
    assert session.frame_rate == FS and session.mouse_id == "408021"


def test_two_planes_need_series_and_an_error_lists_both(tmp_path: Path) -> None:
    path, deconvolved = suite2p_file(tmp_path / "ophys.nwb", planes=(4, 6))
    with pytest.raises(FormatError) as err:
        read_nwb(path)
    message = str(err.value)
    assert "2 candidate deconvolved series ('Deconvolved/plane0' (60, 4), 'Deconvolved/plane1' (60, 6))" in message
    assert "no --series" in message and str(path) in message
    session = read_nwb(path, series="Deconvolved/plane1")
    assert session.traces.tobytes() == deconvolved[1].tobytes() and session.neuron_ids.tolist() == list(range(4, 10))
    with pytest.raises(FormatError, match=r"--series 'plane1' names 3 series"):
        read_nwb(path, series="plane1")
    with pytest.raises(FormatError, match=r"no trace series 'spikes'; the ophys module holds 'Deconvolved/plane0' "
                       r"\(60, 4\)"):
        read_nwb(path, series="spikes")

    refused = cli("inspect", str(path))
    assert refused.returncode == 2 and "Deconvolved/plane1" in refused.stderr
    done = cli("inspect", str(path), "--series", "deconvolved/plane1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["neurons"] == 6


# ---------------------------------------------------------------------------------------------- Allen / DANDI
@pytest.mark.parametrize("stimulus", ["optical", "template"])
def test_allen_style_file_reads_dff_behaviour_and_the_movie(tmp_path: Path, stimulus: str) -> None:
    path, truth = allen_file(tmp_path / "allen.nwb", stimulus=stimulus)
    with pytest.warns(UserWarning, match="using the dF/F one, 'dff/traces'"):
        session = read_nwb(path)
    assert session.traces.tobytes() == truth["dff"].tobytes()
    assert session.neuron_ids.tolist() == truth["ids"].tolist()
    frame_s = truth["frame_s"]
    held = np.array([truth["speed"][np.flatnonzero(truth["run_s"] <= t)[-1]] for t in frame_s], np.float32)
    assert session.behaviour[:, 0].tobytes() == held.tobytes()
    assert session.behaviour[:, 1].tobytes() == truth["area"].tobytes()
    assert session.behaviour[:, 2:].tobytes() == truth["centre"].tobytes()
    want = np.round(truth["movie"] * 255).astype(np.uint8)
    if stimulus == "template":
        want = (truth["movie"] * 255).astype(np.uint8)  # stored as 8-bit images already
    assert session.stimulus is not None and session.stimulus.tobytes() == want.tobytes()


def test_allen_events_are_preferred_to_dff_and_series_chooses(tmp_path: Path) -> None:
    path, truth = allen_file(tmp_path / "allen.nwb", stimulus="optical", events=True)
    with pytest.warns(UserWarning, match="using the deconvolved one, 'event_detection/events'"):
        assert read_nwb(path).traces.tobytes() == truth["events"].tobytes()
    assert load_session(path, series="dff").traces.tobytes() == truth["dff"].tobytes()  # the container's name
    assert load_session(path, series="dff/traces").traces.tobytes() == truth["dff"].tobytes()


# ---------------------------------------------------------------------------------------------- unusable files
@pytest.mark.filterwarnings("ignore:.*series found")
def test_a_file_we_cannot_use_lists_what_it_holds(tmp_path: Path) -> None:
    nwbfile, plane = new_file("raw-only")
    nwbfile.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, rate=FS, unit="a.u.",
                                            data=np.zeros((T, 8, 8), np.int16)))
    behavior = nwbfile.create_processing_module(name="behavior", description="running")
    behavior.add(TimeSeries(name="speed", data=np.zeros(T), unit="cm/s", rate=FS))
    path = write(nwbfile, tmp_path / "raw.nwb")
    with pytest.raises(FormatError) as err:
        read_nwb(path)
    message = str(err.value)
    assert "no 'ophys' processing module" in message
    assert "acquisition/TwoPhotonSeries (TwoPhotonSeries (60, 8, 8))" in message
    assert "processing/behavior/speed (TimeSeries (60,))" in message

    nwbfile, plane = new_file("neuropil-only")
    ophys = nwbfile.create_processing_module(name="ophys", description="")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    ps = segmentation.create_plane_segmentation(name="ps", description="", imaging_plane=plane)
    ps.add_roi(pixel_mask=[(0, 0, 1.0)])
    neuropil = Fluorescence(name="Neuropil")
    neuropil.create_roi_response_series(name="plane0", data=np.zeros((T, 1), np.float32), unit="lumens", rate=FS,
                                        rois=ps.create_roi_table_region(region=[0], description="all"))
    ophys.add(neuropil)
    path = write(nwbfile, tmp_path / "neuropil.nwb")
    with pytest.raises(FormatError, match=r"only neuropil traces \('Neuropil/plane0' \(60, 1\)\)"):
        read_nwb(path)
    assert read_nwb(path, series="Neuropil/plane0").n_neurons == 1
