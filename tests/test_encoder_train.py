"""End-to-end training on a tiny synthetic Sensorium folder: loss falls, checkpoints reload, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurocine.decoder.encoder.checkpoint import CheckpointError, load_encoder
from neurocine.decoder.encoder.data import DataError, sensorium_correlation, trial_windows
from neurocine.decoder.encoder.samples import random_smooth_movies
from neurocine.decoder.encoder.train import TrainOptions, lr_factor, predict_trials, train

N_NEURONS = 20
TIERS = ["train"] * 6 + ["oracle"] * 2


def write_mouse(folder: Path, seed: int, n_frames: int = 80, pad_to: int = 100) -> Path:
    """A Sensorium 2023 folder written with numpy: neurons respond to the brightness of their own patch."""
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, 28, N_NEURONS), rng.integers(0, 56, N_NEURONS)
    for sub in ("videos", "responses", "behavior", "pupil_center"):
        (folder / "data" / sub).mkdir(parents=True)
    for i, _ in enumerate(TIERS):
        movie = random_smooth_movies(1, n_frames, seed=seed * 100 + i)[0]  # (T, 36, 64)
        patch = np.stack([movie[:, y : y + 8, x : x + 8].mean(axis=(1, 2)) for y, x in zip(ys, xs, strict=True)])
        running = np.abs(np.cumsum(rng.normal(0, 1, n_frames)))
        rate = np.log1p(np.exp((patch - 128.0) / 20.0)) + 0.05 * running
        responses = rng.poisson(rate).astype(np.float32)
        responses[3, 10:12] = np.nan  # a neuron not reported for two frames
        behavior = np.stack([20 + rng.normal(0, 1, n_frames), running])  # [pupil dilation, running speed]
        pupil = np.stack([30 + rng.normal(0, 1, n_frames), 25 + rng.normal(0, 1, n_frames)])

        def padded(a: np.ndarray) -> np.ndarray:
            out = np.full((*a.shape[:-1], pad_to), np.nan, dtype=np.float32)
            out[..., :n_frames] = a
            return out

        np.save(folder / "data" / "videos" / f"{i}.npy", padded(np.round(movie).transpose(1, 2, 0)))
        np.save(folder / "data" / "responses" / f"{i}.npy", padded(responses))
        np.save(folder / "data" / "behavior" / f"{i}.npy", padded(behavior))
        np.save(folder / "data" / "pupil_center" / f"{i}.npy", padded(pupil))
    (folder / "meta" / "trials").mkdir(parents=True)
    (folder / "meta" / "neurons").mkdir(parents=True)
    np.save(folder / "meta" / "trials" / "tiers.npy", np.array(TIERS))
    np.save(folder / "meta" / "neurons" / "unit_ids.npy", np.arange(1000, 1000 + N_NEURONS))
    return folder


@pytest.fixture(scope="module")
def mice(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("sensorium")
    return [write_mouse(root / "mouse_a", 1), write_mouse(root / "mouse_b", 2)]


def _opts(mice, out: Path, **kw) -> TrainOptions:
    base = dict(
        data=[str(m) for m in mice],
        preset="tiny",
        out=str(out),
        epochs=2,
        seed=7,
        batch_size=4,
        steps_per_epoch=8,
        lr=1e-2,
        progress=False,
    )
    base.update(kw)
    return TrainOptions(**base)


def test_training_lowers_the_loss_and_saves_a_reloadable_checkpoint(mice, tmp_path) -> None:
    torch.set_num_threads(1)
    summary = train(_opts(mice, tmp_path / "model", epochs=1, steps_per_epoch=16))
    losses = summary["history"][0]["losses"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.02  # batches are noisy: compare four against four
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["preset"] == "tiny" and config["mice"] == ["mouse_a", "mouse_b"]
    assert config["neuron_ids"]["mouse_a"] == list(range(1000, 1000 + N_NEURONS))
    assert config["window"] == 32 and config["frame_size"] == [36, 64]
    assert len(config["statistics"]["mice"]["mouse_b"]["response_std"]) == N_NEURONS
    score = config["validation"]["score"]
    assert score is not None and np.isfinite(score)  # (corr clips to [-1, 1]; what it is, the reload checks)
    # The reloaded model reproduces the validation score recorded at save time, so weights and
    # normalisation statistics round-trip exactly.
    encoder, _ = load_encoder(tmp_path / "model")
    from neurocine.decoder.encoder.data import load_mice

    data = load_mice([str(m) for m in mice], 32)
    again = np.mean([predict_trials(encoder, m, torch.device("cpu")) for m in data])
    assert again == pytest.approx(score, abs=1e-6)


def test_resume_continues_exactly_where_training_stopped(mice, tmp_path) -> None:
    torch.set_num_threads(1)
    small = dict(cutmix=0.5, batch_size=2, steps_per_epoch=4)
    straight = train(_opts(mice, tmp_path / "straight", **small))
    train(_opts(mice, tmp_path / "split", stop_after=1, **small))
    with pytest.raises(ValueError, match="pass --resume"):
        train(_opts(mice, tmp_path / "split", **small))
    resumed = train(_opts(mice, tmp_path / "split", resume=True, **small))
    assert resumed["epochs"] == straight["epochs"] == 2
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"][-1]["losses"] == straight["history"][-1]["losses"]


class _Payload:
    def __reduce__(self):  # what a hostile state file does: run code when unpickled
        import os

        return (os.mkdir, (os.environ["NEUROCINE_PWNED_DIR"],))


def test_resume_never_runs_code_from_the_state_file(mice, tmp_path, monkeypatch) -> None:
    import pickle

    from neurocine.decoder.encoder.train import TRAIN_STATE_FILE

    out = tmp_path / "hostile"
    out.mkdir()
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("NEUROCINE_PWNED_DIR", str(pwned))
    torch.save({"x": _Payload()}, out / TRAIN_STATE_FILE, pickle_module=pickle)
    with pytest.raises(ValueError, match="is not a neurocine training state"):
        train(_opts(mice, out, resume=True))
    assert not pwned.exists()


def test_bad_data_and_model_folders_get_clear_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="cannot read the train tier"):
        train(_opts([tmp_path / "nowhere"], tmp_path / "m"))
    with pytest.raises(CheckpointError, match="not a neurocine model folder"):
        load_encoder(tmp_path)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(_opts([tmp_path], tmp_path / "m2", resume=True))


def test_schedule_metric_and_windows() -> None:
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5) and lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert trial_windows(70, 32) == [0, 32, 38] and trial_windows(20, 32) == []
    rng = np.random.default_rng(0)
    obs = [rng.normal(size=(80, 3)), rng.normal(size=(90, 3))]
    assert sensorium_correlation(obs, obs) == pytest.approx(1.0)
    # the first 50 frames of each trial do not count
    pred = [o.copy() for o in obs]
    pred[0][:50] = rng.normal(size=(50, 3))
    assert sensorium_correlation(pred, obs) == pytest.approx(1.0)
    assert sensorium_correlation([-o for o in obs], obs) == pytest.approx(-1.0)
