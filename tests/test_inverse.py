"""The inverse decoder: fitted in closed form, exported to ONNX, run without torch; and the CLI that makes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocine.decoder.reconstruct.inverse import (
    SPAN,
    InverseDecoder,
    InverseError,
    export_inverse,
    find_inverse,
    span_windows,
)
from neurocine.decoder.reconstruct.inverse_fit import features as _features
from neurocine.decoder.reconstruct.inverse_fit import fit_inverse
from neurocine.streams.session import Session, Trial, regular_timestamps
from tests.conftest import REPO


def planted_session(n_trials: int = 12, t_len: int = 60, n: int = 30, seed: int = 0) -> Session:
    """Frames that are a smooth picture per latent plus noise; neurons respond to the latents 4 frames later."""
    rng = np.random.default_rng(seed)
    k = 3
    basis = rng.normal(0, 1, (k, 36 * 64))
    mix = rng.normal(0, 1, (k, n))
    traces, frames = [], []
    for _ in range(n_trials):
        lat = np.cumsum(rng.normal(0, 0.3, (t_len + 4, k)), axis=0)
        frames.append(np.clip(128 + 20 * lat[:t_len] @ basis / 3, 0, 255).reshape(t_len, 36, 64))
        traces.append(lat[:t_len] @ mix * 0 + np.vstack([np.zeros((4, n)), lat[: t_len - 4] @ mix])
                      + rng.normal(0, 0.1, (t_len, n)))
    traces_a = np.concatenate(traces).astype(np.float32)
    stim = np.concatenate(frames).astype(np.uint8)
    total = n_trials * t_len
    trials = [Trial(i, i * t_len, (i + 1) * t_len, "train") for i in range(n_trials)]
    return Session(traces_a, np.zeros((total, 4), np.float32), regular_timestamps(total, 30.0), np.arange(n) + 100,
                   30.0, "planted", stim, trials)


def test_fit_recovers_a_planted_linear_map_and_onnx_matches_numpy(tmp_path: Path) -> None:
    session = planted_session()
    fit = fit_inverse(session)
    assert fit.report["frame"]["heldout_r_full_rank"] > 0.9  # the responses 4 frames later carry the picture
    path = export_inverse(fit, tmp_path)
    dec = InverseDecoder(path)
    assert dec.n_neurons == 30 and np.array_equal(dec.neuron_ids, np.arange(30) + 100)
    t0 = session.trials[-1]
    resp, beh = session.traces[t0.start : t0.stop], session.behaviour[t0.start : t0.stop]
    movie = dec.movie(resp, beh)
    # numpy reference of the same head
    z = (resp - fit.resp_mean) / fit.resp_std
    bz = (beh - fit.beh_mean) / fit.beh_std
    a, b, bias = fit.heads["frame"]
    ref = np.clip(_features(z, bz, fit.report["frame"]["offsets"]) @ a @ b + bias, 0, 255).reshape(-1, 36, 64)
    np.testing.assert_allclose(movie, ref, atol=0.1)  # the graph stores the factors in float16
    truth = session.stimulus[t0.start : t0.stop].astype(np.float64)
    assert np.corrcoef(movie[:-10].ravel(), truth[:-10].ravel())[0, 1] > 0.9
    # NaN (neurons not reported) is no evidence, not a NaN frame
    resp_nan = resp.copy()
    resp_nan[:, :10] = np.nan
    assert np.isfinite(dec.movie(resp_nan, beh)).all()
    # its ONNX Runtime session is built like every other (backends.ort_session): the CPU unless told, threads as
    # given (0: ONNX Runtime's own choice), a requested provider that does not run is an error naming the file
    assert dec.ort_session.get_providers() == ["CPUExecutionProvider"]
    assert dec.ort_session.get_session_options().intra_op_num_threads == 1
    assert InverseDecoder(path, threads=0).ort_session.get_session_options().intra_op_num_threads == 0
    assert InverseDecoder(path, threads=3).ort_session.get_session_options().intra_op_num_threads == 3
    cpu = ["CPUExecutionProvider"]
    assert InverseDecoder(path, providers=cpu).ort_session.get_providers() == cpu
    with pytest.raises(InverseError, match=rf"{path}: ONNX Runtime provider NoSuchExecutionProvider is not"):
        InverseDecoder(path, providers=["NoSuchExecutionProvider"])


def test_span_windows_pad_outside_the_recording_with_nan() -> None:
    r = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    rw, bw = span_windows(r, np.zeros((20, 4), np.float32))
    assert rw.shape == (20, len(SPAN), 3) and bw.shape == (20, len(SPAN), 4)
    assert np.isnan(rw[0, 0]).all() and rw[0, SPAN.index(0), 0] == 0 and rw[10, SPAN.index(4), 0] == 14


def test_damaged_or_foreign_inverse_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "inverse.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(InverseError, match=str(bad)):
        InverseDecoder(bad)
    assert find_inverse([tmp_path]) == bad and find_inverse([tmp_path / "nothing"]) is None


def test_train_inverse_cli_writes_a_graph_for_a_sensorium_folder(tmp_path: Path) -> None:
    from neurocine.streams.formats.sensorium import write_sensorium

    data = tmp_path / "mouse"
    write_sensorium(planted_session(n_trials=6), data)
    out = tmp_path / "model"
    r = subprocess.run([sys.executable, "-m", "neurocine", "train", "--inverse", "--data", str(data),
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(report["inverse"]).is_file() and report["fit"]["frame"]["rank"] >= 1
    # a model folder whose encoder reads other neurons is refused, naming the file
    (out / "graph.json").write_text(json.dumps({"neuron_ids": [1, 2, 3]}))
    r = subprocess.run([sys.executable, "-m", "neurocine", "train", "--inverse", "--data", str(data),
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "graph.json" in r.stderr


def test_many_neurons_are_fitted_through_their_principal_components(tmp_path: Path) -> None:
    """Above max_neurons the fit works on the responses' principal components; the exported graph still reads
    every neuron (the projection folded into its first layer) and decodes the planted picture."""
    session = planted_session(n=40, seed=3)
    fit = fit_inverse(session, max_neurons=6)
    assert fit.report["frame"]["neuron_components"] == 6
    a, _, _ = fit.heads["frame"]
    assert a.shape[0] == len(fit.report["frame"]["offsets"]) * (40 + 4)
    assert fit.report["frame"]["heldout_r_full_rank"] > 0.9  # 3 latents: 6 components hold them
    dec = InverseDecoder(export_inverse(fit, tmp_path))
    t0 = session.trials[-1]
    movie = dec.movie(session.traces[t0.start : t0.stop], session.behaviour[t0.start : t0.stop])
    truth = session.stimulus[t0.start : t0.stop].astype(np.float32)
    assert np.corrcoef(movie[6:].ravel(), truth[6:].ravel())[0, 1] > 0.8
