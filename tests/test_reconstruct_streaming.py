"""The streaming optimiser: one final frame per input after the lag, gaps, NaN neurons, reset, quality."""

import numpy as np
import pytest

from neurocine.decoder.analysis.metrics import movie_correlation
from neurocine.decoder.encoder.oracle import OracleEncoder
from neurocine.decoder.reconstruct.backends import TorchBackend
from neurocine.decoder.reconstruct.offline import OfflineConfig, ReconstructionError, reconstruct_offline
from neurocine.decoder.reconstruct.streaming import (
    StreamingConfig,
    StreamingReconstructor,
    reconstruct_streaming,
)
from neurocine.streams.synthetic import make_mouse
from tests.conftest import noise_free_movie

T = 64


@pytest.fixture(scope="module")
def mouse():
    return make_mouse(0, 300)


@pytest.fixture(scope="module")
def backend(mouse):
    return TorchBackend.from_oracle(OracleEncoder(mouse))


@pytest.fixture(scope="module")
def movie(mouse):
    return noise_free_movie(mouse, T)


def test_one_final_frame_per_input_frame_after_the_lag(backend, movie):
    _, behaviour, responses = movie
    lag = 6
    rec = StreamingReconstructor(backend, StreamingConfig(lag=lag, steps=1, provisional=True))
    finals = []
    for t in range(20):
        out = rec.push(responses[t], behaviour[t])
        final = [f for f in out if f.final]
        provisional = [f for f in out if not f.final]
        assert len(final) == (1 if t >= lag else 0)
        finals += final
        if final:
            assert final[0].seq == t - lag
        assert [f.seq for f in provisional] == list(range(max(0, t - lag + 1), t + 1))
    rest = rec.flush()
    assert [f.seq for f in finals + rest] == list(range(20))
    assert all(f.frame.shape == (36, 64) and np.isfinite(f.frame).all() for f in finals + rest)
    assert finals[-1].as_uint8().dtype == np.uint8
    t = rec.timing()
    assert t["frames"] == 20 and t["mean_s"] > 0


def test_gap_and_nan_neurons_give_finite_output_and_aligned_frames(backend, movie):
    _, behaviour, responses = movie
    rec = StreamingReconstructor(backend, StreamingConfig(lag=4, steps=1))
    resp = responses.copy()
    resp[:, ::3] = np.nan  # a third of the neurons never reported
    resp[12, 5:50] = np.nan
    beh = behaviour.copy()
    beh[7, 2] = np.nan
    seqs = []
    for t in list(range(10)) + list(range(16, 24)):  # frames 10..15 lost
        out = rec.push(resp[t], beh[t], seq=t)
        seqs += [f.seq for f in out]
        assert all(np.isfinite(f.frame).all() for f in out)
    seqs += [f.seq for f in rec.flush()]
    assert seqs == list(range(24))
    with pytest.raises(ReconstructionError, match="not after the last"):
        rec.push(resp[0], beh[0], seq=3)


def test_a_new_session_resets(backend, movie):
    _, behaviour, responses = movie
    rec = StreamingReconstructor(backend, StreamingConfig(lag=3, steps=1))
    for t in range(8):
        rec.push(responses[t], behaviour[t], session_id="a")
    out = rec.push(responses[0], behaviour[0], seq=0, session_id="b")
    assert out == [] and rec.pending == 1 and rec.last_seq == 0
    assert (rec.video[:-1] == 127.5).all()


@pytest.mark.slow  # an offline and a streaming reconstruction with torch
def test_streaming_at_a_generous_lag_approaches_offline(backend, movie):
    video, behaviour, responses = movie
    off = reconstruct_offline(backend, responses, behaviour, config=OfflineConfig(iterations=16))
    stream, rec = reconstruct_streaming(backend, responses, behaviour, StreamingConfig(lag=32, steps=1))
    r_off = movie_correlation(video, off.video, skip=24)
    r_stream = movie_correlation(video, stream, skip=24)
    assert stream.shape == (T, 36, 64)
    # measured: offline 0.286, streaming 0.266 (300 neurons, 64 frames, about as many window passes)
    assert r_stream > 0.8 * r_off, (r_stream, r_off)
    assert len(rec.step_seconds) == T + 32  # the drain: the stream runs on for one lag


def test_video_ensemble_averages_separate_streaming_reconstructions(movie):
    _, behaviour, responses = movie
    a = TorchBackend.from_oracle(OracleEncoder(make_mouse(0, 50)))
    b = TorchBackend.from_oracle(OracleEncoder(make_mouse(1, 50)))
    r, beh = responses[:40, :50], behaviour[:40]
    cfg = StreamingConfig(lag=4, steps=1, ensemble="videos")
    ens, rec = reconstruct_streaming([a, b], r, beh, cfg)
    sep = [reconstruct_streaming(x, r, beh, cfg)[0] for x in (a, b)]
    np.testing.assert_allclose(ens, (sep[0] + sep[1]) / 2, rtol=1e-6)
    assert rec.timing()["frames"] == 44  # 40 frames + a drain of one lag
    grads, _ = reconstruct_streaming([a, b], r, beh, StreamingConfig(lag=4, steps=1))
    assert not np.allclose(grads, ens)


class _Counted:
    """A real backend that counts its gradient calls (which member a step used)."""

    def __init__(self, backend) -> None:
        self.backend, self.calls = backend, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def loss_and_grad(self, *args):
        self.calls += 1
        return self.backend.loss_and_grad(*args)


def test_cycle_ensemble_takes_one_encoder_per_step_in_turn(movie):
    _, behaviour, responses = movie
    a = _Counted(TorchBackend.from_oracle(OracleEncoder(make_mouse(0, 50))))
    b = _Counted(TorchBackend.from_oracle(OracleEncoder(make_mouse(1, 50))))
    r, beh = responses[:30, :50], behaviour[:30]
    cfg = StreamingConfig(lag=4, steps=2, ensemble="cycle")
    cycled, rec = reconstruct_streaming([a, b], r, beh, cfg)
    assert rec.steps_taken == a.calls + b.calls > 0
    assert abs(a.calls - b.calls) <= 1  # in turn: one gradient call per step, alternating
    alone = [reconstruct_streaming(x.backend, r, beh, StreamingConfig(lag=4, steps=2))[0] for x in (a, b)]
    assert all(not np.allclose(cycled, x) for x in alone)  # both encoders shaped the movie
    same, _ = reconstruct_streaming([a.backend, a.backend], r, beh, cfg)
    np.testing.assert_allclose(same, alone[0], rtol=1e-6, atol=1e-4)  # one encoder twice = that encoder
    with pytest.raises(ReconstructionError, match="ensemble must be one of"):
        StreamingConfig(ensemble="vote")


def test_warm_start_decays_toward_grey(backend, movie):
    """A new frame starts at grey + warm_decay * (previous - grey): contrast cannot accumulate without bound."""
    _, beh, resp = movie
    rec = StreamingReconstructor(backend, StreamingConfig(lag=4, steps=1, warm_decay=0.5))
    for t in range(6):
        rec.push(resp[t], beh[t], t, "s")
    before = rec.video[-1].copy()
    rec.push(resp[6], beh[6], 6, "s", steps=0)  # no optimiser step: the new frame is its warm start
    assert np.allclose(rec.video[-1], 127.5 + 0.5 * (before - 127.5), atol=1e-4)
    assert np.abs(before - 127.5).max() > 0.1  # the previous frame had moved away from grey (by more than atol)
    with pytest.raises(ReconstructionError, match="warm_decay"):
        StreamingConfig(warm_decay=1.5)


@pytest.mark.parametrize(("lag", "ends_back"), [(4, [0]), (31, [0]), (32, [0]), (47, [0, 32]), (64, [0, 32])])
def test_a_window_holding_under_a_quarter_window_of_active_frames_is_skipped(lag: int, ends_back: list[int]) -> None:
    """Windows end at the newest frame and every stride back; one that would hold fewer than window/4 active
    frames (at lag 32: only the frame being finalised) is not worth a gradient call."""
    from types import SimpleNamespace

    from neurocine.decoder.reconstruct.streaming import StreamingReconstructor

    c = lag + 32
    me = SimpleNamespace(capacity=c, window=32, n_active=lag + 1, cfg=SimpleNamespace(stride=32))
    starts = StreamingReconstructor._window_starts(me)
    assert list(c - 1 - (starts + 31)) == ends_back


def test_offline_and_streaming_share_the_update_settings_and_their_checks():
    """One definition of the optimiser's update (the paper's constants): both configs read it; only the streaming
    blur's default differs (the CPU-sized encoders need it)."""
    import dataclasses

    from neurocine.decoder.reconstruct.optimiser import UpdateSettings

    shared = [f.name for f in dataclasses.fields(UpdateSettings) if f.name != "grad_blur"]
    assert shared == ["lr", "warmup", "beta", "clip", "norm_eps"]
    for name in shared:
        assert getattr(OfflineConfig(), name) == getattr(StreamingConfig(), name) == getattr(UpdateSettings(), name)
    assert OfflineConfig().grad_blur == 0.0 < StreamingConfig().grad_blur
    for bad in ({"beta": 1.0}, {"lr": 0.0}, {"warmup": -1}, {"grad_blur": -1.0}):
        for config in (OfflineConfig, StreamingConfig):
            with pytest.raises(ReconstructionError):
                config(**bad)


def test_cycle_is_refused_offline_with_the_reason():
    with pytest.raises(ReconstructionError, match="cycle is for streaming"):
        OfflineConfig(ensemble="cycle")


def test_push_times_are_kept_in_a_fixed_ring(monkeypatch):
    """A decoder running for hours keeps a bounded record of its compute times (the count covers all)."""
    from neurocine.decoder.reconstruct.streaming import PushTimes

    monkeypatch.setattr(PushTimes, "KEPT", 4)
    times = PushTimes()
    assert times.summary() == {"frames": 0}
    for s in (9.0, 9.0, 1.0, 2.0, 3.0, 4.0):
        times.append(s)
    summary = times.summary()
    assert summary["frames"] == 6 and len(times) == 6 and times.seconds.size == 4
    assert summary["seconds"]["max"] == 4.0 and summary["mean_s"] == 2.5  # the two oldest were overwritten
    assert summary["seconds"]["p50"] == 2.5


def test_a_cut_closes_the_movie_and_the_next_trial_starts_as_a_new_one(backend, movie):
    """No window spans a cut: the frames before it come out exactly as a movie that ended there and was drained
    (its usual steps, nothing after it), the frames after it exactly as a fresh optimiser decodes them from their
    first frame (the first guess, grey padding before)."""
    _, behaviour, responses = movie
    cfg = StreamingConfig(lag=6, steps=1)
    cut = 40
    joined, _ = reconstruct_streaming(backend, responses, behaviour, cfg, cuts=[cut])
    before, _ = reconstruct_streaming(backend, responses[:cut], behaviour[:cut], cfg, drain=True)
    after, _ = reconstruct_streaming(backend, responses[cut:], behaviour[cut:], cfg)
    assert joined.tobytes() == np.concatenate([before, after]).tobytes()
    spanning, _ = reconstruct_streaming(backend, responses, behaviour, cfg)
    assert not np.array_equal(spanning[cut : cut + 6], after[:6])  # without the rule the windows do span it
    assert not np.array_equal(spanning[cut - 6 : cut], before[-6:])


def test_a_cut_after_a_gap_emits_every_frame_once_in_order_at_the_lag(backend, movie):
    _, behaviour, responses = movie
    lag = 5
    rec = StreamingReconstructor(backend, StreamingConfig(lag=lag, steps=1, provisional=True))
    seqs = []
    for t in range(10):
        seqs += [f.seq for f in rec.push(responses[t], behaviour[t], t) if f.final]
    at_cut = rec.push(responses[13], behaviour[13], 13, cut=True)  # 10..12 lost, then a cut
    seqs += [f.seq for f in at_cut if f.final]
    assert seqs == list(range(9))  # the lost frames joined the old movie; it drains one frame per arrival
    assert [f.seq for f in at_cut if not f.final][-1:] == [13]  # the new movie's provisional frame, last
    assert (rec.seqs >= 0).sum() == 1 and rec.pending == 1  # the new movie holds frame 13 alone
    assert np.isnan(rec.responses[:-1]).all()  # nothing from before the cut can enter its windows
    assert rec.estimate_at_age(1) is not None  # frame 12, still closing beside it
    for t in range(14, 20):
        seqs += [f.seq for f in rec.push(responses[t], behaviour[t], t) if f.final]
    assert seqs == list(range(15)) and rec._closing is None
    assert [f.seq for f in rec.flush()] == list(range(15, 20))


def test_a_second_cut_while_one_drains_finishes_the_older_movie(backend, movie):
    _, behaviour, responses = movie
    rec = StreamingReconstructor(backend, StreamingConfig(lag=8, steps=1))
    seqs = []
    for t in range(30):
        seqs += [f.seq for f in rec.push(responses[t], behaviour[t], t, cut=t in (10, 13, 14)) if f.final]
    seqs += [f.seq for f in rec.flush()]
    assert seqs == list(range(30))
