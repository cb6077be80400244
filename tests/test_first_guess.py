"""The inverse decoder as the optimisers' first guess: streaming warm start and mix, provisional frames,
offline start, the held-out-neuron stopping rule, and the decode service's --provisional and start-up checks."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from neurocine.decoder.encoder.oracle import OracleEncoder
from neurocine.decoder.reconstruct.backends import TorchBackend
from neurocine.decoder.reconstruct.inverse import FULL_AGE, InverseDecoder, export_inverse
from neurocine.decoder.reconstruct.inverse_fit import fit_inverse
from neurocine.decoder.reconstruct.offline import AutoStop, OfflineConfig, reconstruct_offline
from neurocine.decoder.reconstruct.streaming import StreamingConfig, StreamingReconstructor, reconstruct_streaming
from neurocine.streams.session import Session, Trial, regular_timestamps
from neurocine.streams.synthetic import BehaviourGenerator, expected_activity, make_mouse, natural_movie
from tests.conftest import REPO, first_frames, free_port, noise_free_movie, probe_until_heard

N = 120
T = 60


@pytest.fixture(scope="module")
def mouse():
    return make_mouse(0, N)


@pytest.fixture(scope="module")
def backend(mouse):
    return TorchBackend.from_oracle(OracleEncoder(mouse))


@pytest.fixture(scope="module")
def inverse(mouse, tmp_path_factory: pytest.TempPathFactory) -> InverseDecoder:
    """An inverse decoder fitted on 8 training clips of the mouse's noise-free responses."""
    videos, behs, resps, trials = [], [], [], []
    for k in range(8):
        v = natural_movie(T, k, "train")
        b = BehaviourGenerator(k).frames(T)
        videos.append(v)
        behs.append(b)
        resps.append(expected_activity(mouse, v, b))
        trials.append(Trial(k, k * T, (k + 1) * T, "train"))
    session = Session(np.concatenate(resps).astype(np.float32), np.concatenate(behs).astype(np.float32),
                      regular_timestamps(8 * T, 30.0), np.arange(N), 30.0, "synthetic-0",
                      np.clip(np.concatenate(videos), 0, 255).astype(np.uint8), trials)
    return InverseDecoder(export_inverse(fit_inverse(session), tmp_path_factory.mktemp("inverse")))


@pytest.fixture(scope="module")
def movie(mouse):
    return noise_free_movie(mouse, T)


def test_without_steps_the_stream_emits_the_inverse_decoders_own_estimates(backend, inverse, movie) -> None:
    _, beh, resp = movie
    cfg = StreamingConfig(lag=16, steps=0, warm_start="inverse", inverse_mix=1.0)
    stream, rec = reconstruct_streaming(backend, resp, beh, cfg, inverse=inverse, provisional_ages=(0,))
    # full head, frame by frame (the last FULL_AGE frames saw the drain's held behaviour, not "unknown")
    np.testing.assert_allclose(stream[: T - FULL_AGE], inverse.movie(resp, beh)[: T - FULL_AGE], atol=1e-3)
    np.testing.assert_allclose(rec.age_movies[0], inverse.movie(resp, beh, "frame_causal"), atol=1e-3)


def test_steps_refine_from_the_first_guess_and_the_mix_is_applied(backend, inverse, movie) -> None:
    _, beh, resp = movie
    plain = StreamingConfig(lag=16, steps=2, warm_start="inverse", inverse_mix=0.0)
    mixed = dataclasses.replace(plain, inverse_mix=0.7)
    a, _ = reconstruct_streaming(backend, resp, beh, plain, inverse=inverse)
    b, _ = reconstruct_streaming(backend, resp, beh, mixed, inverse=inverse)
    first = inverse.movie(resp, beh)
    assert not np.allclose(a, first, atol=1.0)  # the steps moved it
    k = T - FULL_AGE  # the last frames' prior saw the drain's held behaviour, not "unknown"
    np.testing.assert_allclose(b[:k], 0.7 * first[:k] + 0.3 * a[:k], atol=1e-2)
    # without an inverse decoder "inverse" warm-starts as "previous" and mixes nothing
    c, _ = reconstruct_streaming(backend, resp, beh, mixed)
    d, _ = reconstruct_streaming(backend, resp, beh, dataclasses.replace(plain, warm_start="previous"))
    np.testing.assert_array_equal(c, d)


def test_an_inverse_decoder_of_other_neurons_is_refused(backend, inverse) -> None:
    from neurocine.decoder.reconstruct.offline import ReconstructionError

    other = TorchBackend.from_oracle(OracleEncoder(make_mouse(0, N + 5)))
    with pytest.raises(ReconstructionError, match="neurons"):
        StreamingReconstructor(other, StreamingConfig(warm_start="inverse"), inverse=inverse)
    assert backend.n_neurons == inverse.n_neurons


def test_offline_auto_stop_keeps_the_best_check_and_refits_with_every_neuron(backend, inverse, movie) -> None:
    _, beh, resp = movie
    noisy = np.random.default_rng(0).poisson(resp * 3).astype(np.float32) / 3  # fits noise when run long
    cfg = OfflineConfig(grad_blur=2.0, stride=8)
    auto = AutoStop(check_every=2, patience=3, max_iterations=30)
    rec = reconstruct_offline(backend, noisy, beh, config=cfg, auto_stop=auto)
    (checks,) = rec.holdout_losses
    (kept,) = rec.stopped_at
    best_it = min(checks, key=lambda c: c[1])[0]
    assert kept == best_it and kept <= 30
    assert checks[-1][0] == 30 or checks[-1][0] - best_it >= auto.patience * auto.check_every  # why it stopped
    fixed = reconstruct_offline(backend, noisy, beh, config=dataclasses.replace(cfg, iterations=kept))
    np.testing.assert_array_equal(rec.video, fixed.video)  # the refit: every neuron, the chosen count
    # from the inverse decoder's movie, mixed back in as a prior
    start = inverse.movie(noisy, beh)
    mixed = reconstruct_offline(backend, noisy, beh, config=dataclasses.replace(cfg, iterations=3),
                                init_video=start, prior_mix=0.7)
    alone = reconstruct_offline(backend, noisy, beh, config=dataclasses.replace(cfg, iterations=3),
                                init_video=start)
    np.testing.assert_allclose(mixed.video, 0.7 * start + 0.3 * alone.video, atol=1e-3)


def builtin_with_inverse(tmp_path: Path, inverse_bytes: bytes | None) -> Path:
    """A copy of the built-in model folder, with the given inverse.onnx (or none)."""
    folder = tmp_path / "model"
    shutil.copytree(REPO / "decoder" / "models" / "default", folder)
    (folder / "inverse.onnx").unlink(missing_ok=True)
    if inverse_bytes is not None:
        (folder / "inverse.onnx").write_bytes(inverse_bytes)
    return folder


def test_decode_names_a_damaged_inverse_decoder_at_start_up(tmp_path: Path) -> None:
    model = builtin_with_inverse(tmp_path, b"\x08\x01garbage")
    r = subprocess.run([sys.executable, "-m", "neurocine", "decode", "--model", str(model), "--connect",
                        f"tcp://127.0.0.1:{free_port()}", "--bind", f"tcp://127.0.0.1:{free_port()}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "inverse.onnx" in r.stderr


def test_decode_publishes_provisional_frames_at_once_and_final_ones_after_the_lag(tmp_path: Path) -> None:
    from neurocine.decoder.client import DecodedStream
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats import load_session
    from neurocine.streams.replay import replay
    from neurocine.streams.transport import Publisher

    s = load_session(example_session_path(), trials=[0])
    n = 40
    session = first_frames(s, n)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    dec = subprocess.Popen([sys.executable, "-m", "neurocine", "decode", "--connect", rig, "--bind", out,
                            "--lag", "8", "--steps", "0", "--provisional", "--threads", "1"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got, reports = [], []
    try:
        with DecodedStream(out, provisional=True) as stream, Publisher(rig, nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=60)
            probe_until_heard(pub, stream.recv, first_frames(s, 2))  # provisional frames leave at once
            th = threading.Thread(target=lambda: reports.append(replay(session, pub, speed=0.5)), daemon=True)
            th.start()
            deadline = time.monotonic() + 60

            def mine() -> list:
                return [f for f in got if reports and f.session_id == reports[0].session_id]

            def waiting() -> bool:
                return sum(f.final for f in mine()) < n - 8 or sum(not f.final for f in mine()) < n

            while time.monotonic() < deadline and waiting():
                f = stream.recv(timeout_s=0.5)
                if f is not None:
                    got.append(f)
            th.join(30)
    finally:
        dec.terminate()
        _, err = dec.communicate(timeout=30)
    got = mine()
    provisional = [f for f in got if not f.final]
    final = [f for f in got if f.final]
    assert [f.seq for f in provisional] == list(range(n)), err[-2000:]
    assert [f.seq for f in final] == list(range(n - 8))
    assert all(f.lag == 0 for f in provisional)
    assert np.std(provisional[-1].frame.astype(np.float64)) > 1  # a picture (the inverse decoder's), not grey


def test_a_new_session_of_the_same_models_reuses_the_inverse_decoder_and_the_fused_ensemble() -> None:
    from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR, load_models
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats import load_session

    session = load_session(example_session_path(), trials=[0])
    specs = [str(DEFAULT_MODEL_DIR), str(DEFAULT_MODEL_DIR.parent / "seed1")]
    cache: dict = {}
    first = load_models(specs, session, None, backend="onnx", threads=1, cache=cache)
    again = load_models(specs, session, None, backend="onnx", threads=1, cache=cache)
    assert first.inverse is not None and again.inverse is first.inverse
    assert first.ensemble.fused is not None and again.ensemble.fused is first.ensemble.fused
    unfused = load_models(specs, session, None, backend="onnx", threads=1, fuse=False)  # videos or cycle
    assert unfused.ensemble.fused is None and len(unfused.ensemble) == 2
