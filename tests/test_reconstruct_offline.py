"""The published offline method: window layout, quality from the oracle, determinism, ensembles, mask."""

import numpy as np
import pytest

from neurocine.decoder.analysis.metrics import corr, movie_correlation
from neurocine.decoder.encoder.oracle import OracleEncoder
from neurocine.decoder.reconstruct import fold_windows, gather_windows, window_starts
from neurocine.decoder.reconstruct.backends import TorchBackend
from neurocine.decoder.reconstruct.offline import (
    MaskConfig,
    OfflineConfig,
    ReconstructionError,
    load_alpha_mask,
    masks_from_alpha,
    reconstruct_offline,
    save_alpha_mask,
    train_alpha_mask,
)
from neurocine.decoder.reconstruct.windows import WindowError, coverage
from neurocine.streams.synthetic import expected_activity, make_mouse, natural_movie
from tests.conftest import noise_free_movie

N_NEURONS = 400
T = 72
SKIP = 24  # frames before the encoders' history is filled (the paper's 30 is for 300-frame movies)


@pytest.fixture(scope="module")
def mouse():
    return make_mouse(0, N_NEURONS)


@pytest.fixture(scope="module")
def backend(mouse):
    return TorchBackend.from_oracle(OracleEncoder(mouse))


@pytest.fixture(scope="module")
def movie(mouse):
    return noise_free_movie(mouse, T)


def test_window_layout_stride_8_last_aligned_to_end():
    s = window_starts(100)
    assert list(s) == [0, 8, 16, 24, 32, 40, 48, 56, 64, 68]
    assert (coverage(s, 32, 100) >= 1).all()
    assert list(window_starts(32)) == [0]
    assert list(window_starts(72)) == [0, 8, 16, 24, 32, 40]
    with pytest.raises(WindowError, match="fewer than one window"):
        window_starts(31)


def test_gather_and_fold_are_adjoint_averages():
    x = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    s = window_starts(100)
    w = gather_windows(x, s, 32)
    assert w.shape == (10, 32, 3) and (w[-1, -1] == 99).all()
    np.testing.assert_array_equal(fold_windows(w, s, 100, average=True), x)
    counts = fold_windows(np.ones((10, 32), np.float32), s, 100, average=False)
    np.testing.assert_array_equal(counts, coverage(s, 32, 100))


@pytest.mark.slow  # hundreds of torch iterations
def test_offline_from_noise_free_responses_recovers_the_movie(backend, movie):
    video, behaviour, responses = movie
    short = reconstruct_offline(backend, responses, behaviour, config=OfflineConfig(iterations=4))
    longer = reconstruct_offline(backend, responses, behaviour, config=OfflineConfig(iterations=20))
    r_short = movie_correlation(video, short.video, skip=SKIP)
    r_long = movie_correlation(video, longer.video, skip=SKIP)
    assert longer.video.shape == (T, 36, 64) and longer.video.dtype == np.float32
    assert longer.video.min() >= 0 and longer.video.max() <= 255
    # measured 0.20 after 4 and 0.31 after 20 iterations (400 neurons, 72 frames; 0.35 after 30, and 0.64 for
    # 1000 neurons, 120 frames, 100 iterations); a grey movie scores nan, a random one ~0
    assert r_long > 0.25, r_long
    assert r_long > r_short + 0.05, (r_short, r_long)
    assert longer.losses[-1] < longer.losses[0]


def test_offline_is_deterministic(backend, movie):
    _, behaviour, responses = movie
    cfg = OfflineConfig(iterations=2)
    a = reconstruct_offline(backend, responses, behaviour, config=cfg)
    b = reconstruct_offline(backend, responses, behaviour, config=cfg)
    np.testing.assert_array_equal(a.video, b.video)


def test_mask_freezes_pixels_outside_it(backend, movie):
    _, behaviour, responses = movie
    mask = np.zeros((36, 64), bool)
    mask[10:26, 20:44] = True
    rec = reconstruct_offline(backend, responses, behaviour, mask=mask, config=OfflineConfig(iterations=3))
    assert (rec.video[:, ~mask] == 127.5).all()
    assert (rec.video[:, mask] != 127.5).any()


def test_ensemble_of_videos_is_the_mean_of_separate_reconstructions(movie):
    _, behaviour, responses = movie
    a = TorchBackend.from_oracle(OracleEncoder(make_mouse(0, 60)))
    b = TorchBackend.from_oracle(OracleEncoder(make_mouse(1, 60)))
    cfg = OfflineConfig(iterations=3)
    r = responses[:, :60]
    ens = reconstruct_offline([a, b], r, behaviour, config=cfg)
    sep = [reconstruct_offline(x, r, behaviour, config=cfg).video for x in (a, b)]
    np.testing.assert_allclose(ens.video, (sep[0] + sep[1]) / 2, rtol=1e-6)
    grad_mode = reconstruct_offline(
        [a, b], r, behaviour, config=OfflineConfig(iterations=3, ensemble="gradients")
    )
    assert not np.allclose(grad_mode.video, ens.video)


def test_bad_inputs_are_named(backend, movie):
    _, behaviour, responses = movie
    with pytest.raises(ReconstructionError, match="responses must be"):
        reconstruct_offline(backend, responses[:, :10], behaviour)
    with pytest.raises(ReconstructionError, match="behaviour must be"):
        reconstruct_offline(backend, responses, behaviour[:10])
    with pytest.raises(ReconstructionError, match="fewer than one window"):
        reconstruct_offline(backend, responses[:20], behaviour[:20])
    with pytest.raises(ReconstructionError, match="mask"):
        reconstruct_offline(backend, responses, behaviour, mask=np.ones((64, 64)))


def test_alpha_mask_grows_where_the_neurons_look(mouse, tmp_path):
    oracle = OracleEncoder(mouse)
    mse = TorchBackend.from_oracle(oracle, loss="mse")
    trials = []
    for k in range(2):
        video = natural_movie(40, 10 + k, "test")
        beh = np.zeros((40, 4), np.float32)
        trials.append((video, beh, expected_activity(mouse, video, beh)))
    alpha = train_alpha_mask(mse, trials, MaskConfig(iterations=12, step=10.0))
    assert alpha.shape == (36, 64) and alpha.min() >= 0 and alpha.max() <= 1
    # the receptive fields' density: alpha must be larger where more RFs sit
    rf = np.zeros((36, 64))
    np.add.at(
        rf, (np.round(mouse.neurons["rf_y"]).astype(int), np.round(mouse.neurons["rf_x"]).astype(int)), 1
    )
    from scipy.ndimage import gaussian_filter

    density = gaussian_filter(rf, 5)
    assert corr(density.ravel(), alpha.ravel()) > 0.3
    opt, ev = masks_from_alpha(alpha)
    assert opt.dtype == bool and (ev <= opt).all()
    path = save_alpha_mask(alpha, tmp_path)
    assert path.name == "alpha_mask.npy"
    np.testing.assert_array_equal(load_alpha_mask(tmp_path), alpha)


def test_gradient_blur_matches_scipy_and_zero_sigma_is_the_identity() -> None:
    from scipy.ndimage import gaussian_filter

    from neurocine.decoder.reconstruct.optimiser import blur_gradient

    g = np.random.default_rng(3).normal(size=(4, 36, 64)).astype(np.float32)
    assert blur_gradient(g, 0.0) is g
    for sigma in (0.7, 2.0):
        want = gaussian_filter(g, sigma=(0, sigma, sigma), mode="nearest", truncate=3.0)
        assert np.allclose(blur_gradient(g, sigma), want, atol=1e-5)
    with pytest.raises(ReconstructionError, match="grad_blur"):
        OfflineConfig(grad_blur=-1.0)
