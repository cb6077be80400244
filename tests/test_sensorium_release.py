"""The Sensorium 2023 release read as it is on disk: float64 fields, fractional pixels, placeholder test tiers,
random trial order, no neurocine files, the release's meta/ and its .zip; through the library and the real CLI."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neurocine.streams.formats import FormatError, load_session
from neurocine.streams.formats.sensorium import (
    SensoriumFolder,
    open_sensorium,
    read_sensorium,
    read_sensorium_statistics,
    sensorium_neurons,
)
from neurocine.streams.formats.sensorium.release import (
    EXAMPLE_MOUSE,
    PLACEHOLDER_TIERS,
    write_release_like,
    zip_release,
)
from tests.conftest import REPO, free_port

N_TRIALS, N_NEURONS, FRAMES = 24, 30, 50


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mouse in the release's layout (read-only for the tests that share it)."""
    return write_release_like(tmp_path_factory.mktemp("release") / EXAMPLE_MOUSE, N_TRIALS, N_NEURONS, seed=7,
                              frames=FRAMES, short_fraction=0.3)


@pytest.fixture
def copy(release: Path, tmp_path: Path) -> Path:
    """A copy of the release mouse a test may change."""
    return Path(shutil.copytree(release, tmp_path / EXAMPLE_MOUSE))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocine", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def stored(folder: Path, field: str, i: int) -> np.ndarray:
    return np.load(folder / "data" / field / f"{i}.npy")


def earliest_nan(folder: Path, i: int) -> int:
    """neuralpredictors' rule, written out: the earliest first NaN over every field (frames on the last axis)."""
    ends = []
    for field in ("videos", "responses", "behavior", "pupil_center"):
        arr = stored(folder, field, i)
        nan_frames = np.flatnonzero(np.isnan(arr).reshape(-1, arr.shape[-1]).any(axis=0))
        ends.append(int(nan_frames[0]) if nan_frames.size else arr.shape[-1])
    return min(ends)


def test_the_layout_is_the_releases(release: Path) -> None:
    """What the fixture must be for the other tests to mean anything."""
    tiers = np.load(release / "meta" / "trials" / "tiers.npy")
    assert not (release / "meta" / "trials" / "n_frames.npy").exists()
    assert sorted(p.name for p in (release / "data").iterdir()) == ["behavior", "pupil_center", "responses", "videos"]
    fields = ("videos", "responses", "behavior", "pupil_center")
    assert {stored(release, f, 0).dtype for f in fields} == {np.dtype("float64")}
    video = stored(release, "videos", 0)
    assert video.shape == (36, 64, FRAMES) and (np.nan_to_num(video) % 1 != 0).any()
    assert list(tiers[:8]) != sorted(tiers[:8])  # random order
    for i, tier in enumerate(tiers):
        resp = stored(release, "responses", i)
        assert (np.nansum(np.abs(resp)) == 0) == (tier in PLACEHOLDER_TIERS)


def test_the_release_reads_as_it_is(release: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiers = np.load(release / "meta" / "trials" / "tiers.npy")
    with caplog.at_level(logging.INFO, logger="neurocine"):
        streamed = open_sensorium(release)
        session = streamed.load()
    with_responses = [i for i in range(N_TRIALS) if tiers[i] not in PLACEHOLDER_TIERS]
    assert session.trial_indices() == with_responses
    assert "skipping tier(s)" in caplog.text and "placeholders" in caplog.text
    assert "rounding to 8 bits" in caplog.text
    assert session.mouse_id == EXAMPLE_MOUSE
    assert np.array_equal(session.neuron_ids, np.load(release / "meta" / "neurons" / "unit_ids.npy"))
    for k, trial in enumerate(session.trials):
        n = earliest_nan(release, trial.index)
        assert trial.n_frames == n and trial.cut == (k > 0) and trial.tier == tiers[trial.index]
        rows = slice(trial.start, trial.stop)
        np.testing.assert_array_equal(session.traces[rows], stored(release, "responses", trial.index)[:, :n].T
                                      .astype(np.float32))
        video = stored(release, "videos", trial.index)[:, :, :n]
        np.testing.assert_array_equal(session.stimulus[rows], np.moveaxis(np.rint(video), 2, 0).astype(np.uint8))
        beh = stored(release, "behavior", trial.index)
        np.testing.assert_array_equal(session.behaviour[rows, 0], beh[1, :n].astype(np.float32))
    report = streamed.report()
    assert report["pixels_rounded"] > 0.9 * report["pixels"] and 0 < report["max_pixel_offset"] <= 0.5
    assert report["trials_read"] == len(with_responses) and report["pixels_clipped"] == 0


def test_a_tier_without_responses_is_a_clear_error(release: Path) -> None:
    tiers = np.load(release / "meta" / "trials" / "tiers.npy")
    with pytest.raises(FormatError, match="tier 'live_test_main' holds no responses") as err:
        read_sensorium(release, tier="live_test_main")
    real = list(dict.fromkeys(str(t) for t in tiers if t not in PLACEHOLDER_TIERS))
    assert sorted(real) == ["oracle", "train"] and f"tiers with responses: {real}" in str(err.value)
    placeholder = int(np.flatnonzero(np.isin(tiers, PLACEHOLDER_TIERS))[0])
    with pytest.raises(FormatError, match="holds no responses"):
        read_sensorium(release, trials=[placeholder])
    assert read_sensorium(release, tier="oracle").trial_indices() == list(np.flatnonzero(tiers == "oracle"))


def test_placeholders_written_over_the_whole_width_are_recognised(copy: Path) -> None:
    tiers = np.load(copy / "meta" / "trials" / "tiers.npy")
    for i in np.flatnonzero(tiers == "final_test_bonus"):
        np.save(copy / "data" / "responses" / f"{i}.npy", np.zeros((N_NEURONS, FRAMES)))  # no NaN padding at all
    assert "final_test_bonus" in SensoriumFolder(copy).empty_tiers()
    assert "final_test_bonus" not in {t.tier for t in read_sensorium(copy).trials}


def test_fields_ending_at_different_frames_end_the_trial_at_the_earliest(copy: Path) -> None:
    tiers = np.load(copy / "meta" / "trials" / "tiers.npy")
    i = int(np.flatnonzero(tiers == "train")[0])
    n = earliest_nan(copy, i)
    video = stored(copy, "videos", i)
    video[:, :, n - 3 :] = np.nan  # the video stops 3 frames before the other fields
    np.save(copy / "data" / "videos" / f"{i}.npy", video)
    mouse = SensoriumFolder(copy)
    session = mouse.stream(mouse.choose([i])).load()
    assert session.n_frames == n - 3
    assert mouse.report.trials_with_uneven_ends == 1 and mouse.report.frames_dropped_at_uneven_ends == 3
    info = SensoriumFolder(copy).inspect()
    assert info["trial_ends"]["trials_with_uneven_ends"] == 1


def test_a_video_nan_inside_the_trial_is_an_error_naming_the_frame(copy: Path) -> None:
    i = int(np.flatnonzero(np.load(copy / "meta" / "trials" / "tiers.npy") == "train")[0])
    video = stored(copy, "videos", i)
    video[3, 4, 5] = np.nan  # one pixel, while the frame's others and every other field go on
    np.save(copy / "data" / "videos" / f"{i}.npy", video)
    with pytest.raises(FormatError, match=r"frame 5 pixel \(y=3, x=4\) is nan") as err:
        read_sensorium(copy, trials=[i])
    assert str(copy / "data" / "videos" / f"{i}.npy") in str(err.value)


def test_meta_neurons_and_statistics_are_read_where_present(copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    neurons = sensorium_neurons(copy)
    assert set(neurons) == {"unit_ids", "cell_motor_coordinates", "animal_ids", "area", "layer", "scan_idx",
                            "sessions"}
    assert (neurons["animal_ids"] == 29156).all() and neurons["cell_motor_coordinates"].shape == (N_NEURONS, 3)
    stats = read_sensorium_statistics(copy)
    assert set(stats) == {"videos", "responses", "behavior", "pupil_center"}
    assert stats["responses"]["std"].shape == (N_NEURONS,)
    assert set(read_sensorium_statistics(copy, subset=None)["responses"]) == {"all"}

    np.save(copy / "meta" / "neurons" / "layer.npy", np.array(["L4"] * N_NEURONS, dtype=object))  # a pickle
    with caplog.at_level(logging.WARNING, logger="neurocine"):
        assert "layer" not in sensorium_neurons(copy)
    assert "never unpickles" in caplog.text
    np.save(copy / "meta" / "neurons" / "area.npy", np.array(["V1"] * (N_NEURONS - 1)))
    with pytest.raises(FormatError, match=r"expected one value per neuron, shape \(N=30,\)") as err:
        open_sensorium(copy)
    assert str(copy / "meta" / "neurons" / "area.npy") in str(err.value)
    (copy / "meta" / "neurons" / "area.npy").unlink()
    shutil.rmtree(copy / "meta" / "statistics")
    assert open_sensorium(copy).n_neurons == N_NEURONS  # statistics are optional
    with pytest.raises(FormatError, match="no statistics"):
        read_sensorium_statistics(copy)


def test_bad_release_input_is_named(copy: Path) -> None:
    tiers = np.load(copy / "meta" / "trials" / "tiers.npy")
    np.save(copy / "meta" / "trials" / "tiers.npy", tiers[:-1])
    with pytest.raises(FormatError, match=f"has {N_TRIALS - 1} entries, but data/responses/ holds trial "
                       f"{N_TRIALS - 1}"):
        open_sensorium(copy)
    np.save(copy / "meta" / "trials" / "tiers.npy", tiers)
    ids = np.load(copy / "meta" / "neurons" / "unit_ids.npy")
    ids[5] = ids[4]
    np.save(copy / "meta" / "neurons" / "unit_ids.npy", ids)
    with pytest.raises(FormatError, match=f"unit ids are not unique \\(e.g. {ids[4]} appears 2 times\\)"):
        open_sensorium(copy)


def test_the_release_zip_reads_like_the_folder(release: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(release, tmp_path / EXAMPLE_MOUSE))
    archive = zip_release(folder)
    shutil.rmtree(folder)
    from_zip = load_session(archive)
    from_folder = load_session(release)
    assert from_zip.mouse_id == EXAMPLE_MOUSE  # the folder inside the zip
    assert from_zip.trials == from_folder.trials
    assert from_zip.traces.tobytes() == from_folder.traces.tobytes()
    assert from_zip.stimulus.tobytes() == from_folder.stimulus.tobytes()

    flat = tmp_path / "flat.zip"  # data/ and meta/ at the top, as the dataset's README describes
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(flat, "w") as dst:
        for info in src.infolist():
            if info.filename.startswith(EXAMPLE_MOUSE + "/"):
                dst.writestr(info.filename[len(EXAMPLE_MOUSE) + 1 :], src.read(info))
    assert load_session(flat).traces.tobytes() == from_folder.traces.tobytes()
    assert open_sensorium(flat).mouse_id == "flat"

    broken = tmp_path / "broken.zip"
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(FormatError, match=r"broken\.zip: not a readable \.zip"):
        open_sensorium(broken)


def test_inspect_and_replay_of_the_release_through_the_cli(release: Path, tmp_path: Path) -> None:
    tiers = np.load(release / "meta" / "trials" / "tiers.npy")
    done = cli("inspect", str(release))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["format"] == "sensorium" and info["mouse_id"] == EXAMPLE_MOUSE
    assert info["tiers_without_responses"] == sorted(set(tiers) & set(PLACEHOLDER_TIERS))
    assert info["video_rounding"]["pixels_rounded"] > 0 and info["dtypes"]["responses"] == "float64"
    lengths = {i: earliest_nan(release, i) for i in range(N_TRIALS)}
    placeholder = [i for i in range(N_TRIALS) if tiers[i] in PLACEHOLDER_TIERS]
    assert info["frames_without_responses"] == sum(lengths[i] for i in placeholder)
    assert info["neuron_table"]["area"] == {"V1": N_NEURONS}

    refused = cli("replay", str(release), "--tier", "final_test_bonus", "--speed", "0")
    assert refused.returncode == 2 and "holds no responses" in refused.stderr

    ep = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "rec.ncr"
    rec = subprocess.Popen([sys.executable, "-m", "neurocine", "record", "--connect", ep, "--out", str(out),
                            "--until-end"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = cli("replay", str(release), "--bind", ep, "--speed", "0", "--wait-subscribers", "1")
    assert done.returncode == 0, done.stderr
    rec.communicate(timeout=60)
    report = json.loads(done.stdout)
    kept = [i for i in range(N_TRIALS) if i not in placeholder]
    assert report["replay"]["frames"] == sum(lengths[i] for i in kept)
    assert report["replay"]["cuts"] == len(kept) - 1 and report["read"]["pixels_rounded"] > 0
    assert "skipping tier(s)" in done.stderr
    recorded = load_session(out)
    assert recorded.trial_indices() == kept
    assert [t.cut for t in recorded.trials] == [False] + [True] * (len(kept) - 1)
    assert recorded.traces.tobytes() == load_session(release).traces.tobytes()


def test_a_replay_of_more_trials_than_a_header_map_holds_is_received_whole(tmp_path: Path) -> None:
    """~700 trials in a release mouse: the session header must still decode everywhere (tiers grouped by tier)."""
    folder = write_release_like(tmp_path / EXAMPLE_MOUSE, 400, 20, seed=2, frames=6, short_fraction=0.0,
                                placeholders=())  # every tier holds responses: all 400 trials replay
    ep = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "rec.ncr"
    rec = subprocess.Popen([sys.executable, "-m", "neurocine", "record", "--connect", ep, "--out", str(out),
                            "--until-end"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = cli("replay", str(folder), "--bind", ep, "--speed", "0", "--wait-subscribers", "1")
    assert done.returncode == 0, done.stderr
    _, err = rec.communicate(timeout=60)
    assert rec.returncode == 0, err
    recorded, original = load_session(out), load_session(folder)
    assert len(recorded.trials) == len(original.trials) == 400
    assert [(t.index, t.tier, t.cut) for t in recorded.trials] == [(t.index, t.tier, t.cut) for t in original.trials]
    assert recorded.traces.tobytes() == original.traces.tobytes()
