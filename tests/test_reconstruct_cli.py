"""`neurocine reconstruct` on a small synthetic session: a movie aligned with the stimulus, a metrics line."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocine.decoder.analysis.metrics import METRICS, corr
from neurocine.decoder.reconstruct import cli
from neurocine.streams.formats import save_session
from neurocine.streams.synthetic import TrialPlan, make_mouse, simulate_session
from tests.conftest import REPO


@pytest.fixture(scope="module")
def session_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sess")
    mouse = make_mouse(0, 200)
    plans = [TrialPlan(k, "final_test_main", "test", k) for k in range(2)]
    session = simulate_session(mouse, plans, movie_seed=1, n_frames=40)
    path = folder / "s.ncr"
    save_session(session, path)
    mouse.save(folder / "s.mouse")
    return path, session


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.register(sub)
    args = parser.parse_args(["reconstruct", *argv])
    return args.func(args)


def test_offline_writes_aligned_uint8_movie_and_metrics(session_file, tmp_path, capsys):
    path, _ = session_file
    out = tmp_path / "m.npy"
    mouse_dir = str(path.with_name("s.mouse"))
    assert (
        _run(
            "--model",
            mouse_dir,
            "--session",
            str(path),
            "--trial",
            "1",
            "--iterations",
            "3",
            "--out",
            str(out),
        )
        == 0
    )
    movie = np.load(out)
    assert movie.shape == (40, 36, 64) and movie.dtype == np.uint8
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1]
    metrics = json.loads(line)
    assert metrics["trials"] == [1] and metrics["frames"] == 40
    # (corr clips to [-1, 1] and SSIM is bounded: a range check would only catch NaN, so ask for a number)
    assert np.isfinite(metrics["pixel_correlation"]) and np.isfinite(metrics["response_correlation"])
    assert metrics["per_trial_pixel_correlation"] == [metrics["pixel_correlation"]]
    # every metric, with the paper's post-smoothing and without it
    assert metrics["smoothing_sigma"] == 0.5 and set(metrics["unsmoothed"]) == set(METRICS)
    assert metrics["pixel_correlation"] != metrics["unsmoothed"]["pixel_correlation"]  # the smoothing was applied
    for m in (metrics, metrics["unsmoothed"]):
        assert np.isfinite([m["ssim"], m["psnr"], m["frame_correlation"]]).all() and m["rmse"] > 0


def test_streaming_mode_and_video_output(session_file, tmp_path):
    path, _ = session_file
    out = tmp_path / "m.gif"
    argv = ["--model", "oracle", "--session", str(path), "--trial", "0", "--mode", "streaming"]
    assert _run(*argv, "--lag", "4", "--steps", "1", "--out", str(out)) == 0
    assert out.stat().st_size > 0


def test_bad_arguments_exit_2(session_file, tmp_path, capsys):
    path, _ = session_file
    npy = str(tmp_path / "m.npy")
    assert _run("--session", str(path), "--out", str(tmp_path / "m.txt")) == 2
    assert _run("--model", "oracle", "--session", str(path), "--backend", "onnx", "--out", npy) == 2
    assert _run("--model", str(tmp_path), "--session", str(path), "--out", npy) == 2
    assert _run("--session", str(tmp_path / "none.ncr"), "--out", npy) == 2
    err = capsys.readouterr().err
    assert "suffix" in err and "--backend torch" in err and "not an encoder checkpoint" in err
    assert "none.ncr" in err


def test_the_built_in_model_on_both_backends_gives_the_same_movie(session_file, tmp_path):
    from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR

    assert (DEFAULT_MODEL_DIR / "gradient.onnx").is_file() and (DEFAULT_MODEL_DIR / "checkpoint").is_dir()
    path, _ = session_file
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / f"{backend}.npy"
        argv = ["--session", str(path), "--trial", "0", "--iterations", "2", "--backend", backend]
        assert _run(*argv, "--out", str(outs[backend])) == 0
    a, b = (np.load(outs[k]).astype(np.float64).ravel() for k in ("torch", "onnx"))
    assert corr(a, b) > 0.99


@pytest.mark.parametrize("verb", [
    ["reconstruct", "--trial", "0", "--out", "{tmp}/x.npy"],
    ["reconstruct", "--trial", "0", "--backend", "torch", "--out", "{tmp}/x.npy"],
    ["decode", "--connect", "tcp://127.0.0.1:1", "--bind", "tcp://127.0.0.1:{port}"],
    ["demo", "--headless", "--seconds", "5", "--out-dir", "{tmp}"],
    ["batch", "--trial", "0", "--out", "{tmp}/b", "--num-cpus", "1"],
    ["bench", "latency", "--frames", "30"],
])
def test_provider_cuda_without_cuda_fails_naming_cuda_on_every_verb(verb: list[str], tmp_path: Path) -> None:
    """--provider cuda where CUDA cannot run: a non-zero exit and a message naming CUDA, never a silent CPU run
    (this machine has no GPU; where one runs, the test says so and skips)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present here")
    from tests.conftest import free_port

    argv = [a.format(tmp=tmp_path, port=free_port()) for a in verb]
    r = subprocess.run([sys.executable, "-m", "neurocine", *argv, "--provider", "cuda"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "CUDA" in r.stderr
