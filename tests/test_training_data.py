"""Training data stays on disk: frames indexed like a Session's arrays, statistics gathered in one scan, equal to
what the whole tier in memory gives; on a mouse in the release's layout, through `neurocine train` too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocine.decoder.encoder.data import DataError, WindowSampler, load_mice, load_training_data
from neurocine.streams.formats.sensorium import read_sensorium
from neurocine.streams.formats.sensorium.release import EXAMPLE_MOUSE, write_release_like, zip_release
from tests.conftest import REPO


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release_like(tmp_path_factory.mktemp("train") / EXAMPLE_MOUSE, 30, 25, seed=3, frames=70,
                              short_fraction=0.3)


def test_frames_on_disk_index_like_the_tier_in_memory(release: Path) -> None:
    data = load_training_data(release, window=32)
    whole = read_sensorium(release, tier="train")
    assert data.train.trials == whole.trials and data.train.n_frames == whole.n_frames
    assert data.mouse == EXAMPLE_MOUSE and data.n_neurons == 25
    rng = np.random.default_rng(0)
    rows = rng.integers(0, whole.n_frames, size=(5, 32))  # frames of several trials at once
    for field in ("traces", "behaviour", "stimulus"):
        got, want = getattr(data.train, field), getattr(whole, field)
        assert got[rows].tobytes() == want[rows].tobytes(), field
        assert got[10:47].tobytes() == want[10:47].tobytes(), field
        assert got[-1].tobytes() == want[-1].tobytes(), field
        assert got.shape == want.shape and got.dtype == want.dtype
    with pytest.raises(IndexError, match="out of range"):
        data.train.traces[np.array([whole.n_frames])]
    assert data.valid is not None and data.valid.load().trial_indices() == read_sensorium(
        release, tier="oracle").trial_indices()


def test_statistics_of_one_scan_equal_numpys_over_the_whole_tier(release: Path) -> None:
    data = load_training_data(release, window=32)
    whole = read_sensorium(release, tier="train")
    np.testing.assert_allclose(data.behaviour_mean, np.nanmean(whole.behaviour, axis=0), rtol=1e-5)
    np.testing.assert_allclose(data.behaviour_std, np.nanstd(whole.behaviour, axis=0), rtol=1e-4)
    np.testing.assert_allclose(data.response_std, np.nanstd(whole.traces.astype(np.float64), axis=0), rtol=1e-5)
    pixels = whole.stimulus.astype(np.float64)
    assert data.video_mean == pytest.approx(pixels.mean(), rel=1e-9)
    assert data.video_std == pytest.approx(pixels.std(), rel=1e-9)


def test_a_sampled_batch_is_the_same_as_from_memory(release: Path) -> None:
    [mouse] = load_mice([release], window=32)
    whole = read_sensorium(release, tier="train")
    batch = WindowSampler([mouse], 32, batch_size=4, seed=5).sample()
    rng = np.random.default_rng(5)  # the sampler's draws, repeated: mouse, then window starts
    rng.choice(1, p=[1.0])
    starts = np.concatenate([np.arange(tr.start, tr.stop - 32 + 1) for tr in whole.trials if tr.n_frames >= 32])
    rows = rng.choice(starts, size=4)[:, None] + np.arange(32)[None, :]
    assert batch.video.tobytes() == whole.stimulus[rows].astype(np.float32).tobytes()
    assert batch.responses.tobytes() == np.ascontiguousarray(whole.traces[rows].transpose(0, 2, 1)).tobytes()


def test_placeholder_zip_and_missing_tiers_are_said(release: Path, tmp_path: Path) -> None:
    assert load_training_data(release, 32, valid_tier="live_test_main").valid is None  # placeholders: no scores
    copy = Path(shutil.copytree(release, tmp_path / EXAMPLE_MOUSE))
    archive = zip_release(copy)
    with pytest.raises(DataError, match=f"unpack it first \\(python -m zipfile -e {archive} {tmp_path}\\)"):
        load_training_data(archive, 32)
    tiers = np.load(copy / "meta" / "trials" / "tiers.npy")
    np.save(copy / "meta" / "trials" / "tiers.npy", np.where(tiers == "train", "none", tiers))
    with pytest.raises(DataError, match=r"cannot read the train tier: .*no trials in tier 'train'"):
        load_training_data(copy, 32)


def test_train_then_reconstruct_on_a_release_layout_folder(release: Path, tmp_path: Path) -> None:
    """`neurocine train` and `neurocine reconstruct` on the release's layout as it is, through the real CLI."""
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "neurocine", "train", "--data", str(release), "--preset", "tiny",
                           "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                           "--no-progress", "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "skipping tier(s)" not in done.stderr  # only the train and oracle tiers are read, both real
    config = json.loads((out / "config.json").read_text())
    assert config["neuron_ids"][EXAMPLE_MOUSE] == np.load(release / "meta" / "neurons" / "unit_ids.npy").tolist()
    oracle = read_sensorium(release, tier="oracle")
    trial = oracle.trials[0]
    movie = tmp_path / "movie.npy"
    done = subprocess.run([sys.executable, "-m", "neurocine", "reconstruct", "--model", str(out), "--backend",
                           "torch", "--session", str(release), "--trial", str(trial.index), "--iterations", "2",
                           "--out", str(movie)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["trials"] == [trial.index] and result["frames"] == trial.n_frames
    assert np.load(movie).shape == (trial.n_frames, 36, 64)
