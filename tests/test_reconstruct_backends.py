"""Gradient backends: per-window gradients, masking by NaN/weights, torch vs ONNX Runtime equality."""

import numpy as np
import pytest
import torch

from decoder.oracle import OracleEncoder
from decoder.reconstruct.backends import BackendError, Ensemble, TorchBackend, normalised_window_grad
from streams.synthetic import make_mouse

N = 40


@pytest.fixture(scope="module")
def oracle_backend():
    return TorchBackend.from_oracle(OracleEncoder(make_mouse(0, N)))


def _batch(b: int, t: int = 32, n: int = N, seed: int = 0):
    rng = np.random.default_rng(seed)
    video = rng.uniform(0, 255, (b, t, 36, 64)).astype(np.float32)
    beh = rng.normal(0, 1, (b, t, 4)).astype(np.float32)
    resp = rng.gamma(1.0, 0.05, (b, n, t)).astype(np.float32)
    return video, beh, resp


def test_window_gradient_does_not_depend_on_the_rest_of_the_batch(oracle_backend):
    video, beh, resp = _batch(3)
    loss3, grad3 = oracle_backend.loss_and_grad(video, beh, resp)
    loss1, grad1 = oracle_backend.loss_and_grad(video[1:2], beh[1:2], resp[1:2])
    assert loss3.shape == (3,) and grad3.shape == video.shape
    np.testing.assert_allclose(loss1[0], loss3[1], rtol=1e-6)
    np.testing.assert_allclose(grad1[0], grad3[1], rtol=1e-5, atol=1e-12)


def test_poisson_loss_by_hand(oracle_backend):
    video, beh, resp = _batch(1)
    pred = oracle_backend.predict(video, beh)
    expected = np.mean(pred - resp * np.log(pred + 1e-8))
    loss, _ = oracle_backend.loss_and_grad(video, beh, resp)
    assert loss[0] == pytest.approx(expected, rel=1e-5)


def test_nan_responses_and_zero_weights_drop_neurons_alike(oracle_backend):
    video, beh, resp = _batch(2)
    nan_resp = resp.copy()
    nan_resp[:, :5] = np.nan
    weights = np.ones(N, np.float32)
    weights[:5] = 0
    l_nan, g_nan = oracle_backend.loss_and_grad(video, beh, nan_resp)
    l_w, g_w = oracle_backend.loss_and_grad(video, beh, resp, weights)
    np.testing.assert_allclose(l_nan, l_w, rtol=1e-6)
    np.testing.assert_allclose(g_nan, g_w, rtol=1e-5, atol=1e-12)
    assert np.isfinite(g_nan).all()


def test_ensemble_normalises_each_member(oracle_backend):
    video, beh, resp = _batch(2)
    _, g = normalised_window_grad(Ensemble([oracle_backend, oracle_backend]), video, beh, resp, None)
    _, raw = oracle_backend.loss_and_grad(video, beh, resp)
    norms = np.sqrt((raw.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(g, raw / (norms + 1e-6)[:, None, None, None], rtol=1e-5, atol=1e-9)
    with pytest.raises(BackendError, match="disagree"):
        Ensemble([oracle_backend, TorchBackend.from_oracle(OracleEncoder(make_mouse(0, 10)))])


def test_bad_shapes_are_named(oracle_backend):
    video, beh, resp = _batch(1)
    with pytest.raises(BackendError, match="responses must be"):
        oracle_backend.loss_and_grad(video, beh, resp[:, :3])
    with pytest.raises(BackendError, match="behaviour must be"):
        oracle_backend.loss_and_grad(video, beh[:, :5], resp)
    with pytest.raises(BackendError, match="video must be"):
        oracle_backend.loss_and_grad(video[:, :, :10], beh, resp)


# ---------------------------------------------------------------------------------------------- ONNX Runtime
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from decoder.encoder.export import export_mouse
    from decoder.encoder.model import build_encoder
    from decoder.encoder.presets import get_preset

    encoder = build_encoder(get_preset("tiny"), {"m0": 30}, seed=0)
    encoder.stats["m0"].response_std.copy_(torch.linspace(0.5, 2.0, 30))
    folder = tmp_path_factory.mktemp("export")
    export_mouse(encoder, "m0", folder, batch=4)
    return encoder, folder


@pytest.mark.slow
def test_onnx_and_torch_give_the_same_gradient_and_reconstruction(exported):
    from decoder.metrics import movie_correlation
    from decoder.reconstruct.backends import OrtBackend
    from decoder.reconstruct.offline import OfflineConfig, reconstruct_offline

    encoder, folder = exported
    tb = TorchBackend.from_encoder(encoder, "m0", threads=1)
    ob = OrtBackend(folder, threads=1)
    assert ob.provider == ob.session.get_providers()[0]
    assert ob.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (ob.batch, ob.window, ob.n_neurons) == (4, 32, 30)
    video, beh, resp = _batch(6, n=30, seed=1)  # 6 windows: one full graph batch and one padded
    resp[2, 4, :10] = np.nan
    weights = np.ones(30, np.float32)
    weights[3] = 0
    _, g_t = tb.loss_and_grad(video, beh, resp, weights)
    _, g_o = ob.loss_and_grad(video, beh, resp, weights)
    assert np.abs(g_t - g_o).max() / np.abs(g_t).max() < 1e-4
    np.testing.assert_allclose(tb.predict(video, beh), ob.predict(video, beh), rtol=1e-4, atol=1e-6)

    rng = np.random.default_rng(2)
    responses = rng.gamma(1.0, 1.0, (48, 30)).astype(np.float32)
    behaviour = rng.normal(0, 1, (48, 4)).astype(np.float32)
    cfg = OfflineConfig(iterations=4)
    rec_t = reconstruct_offline(tb, responses, behaviour, config=cfg)
    rec_o = reconstruct_offline(ob, responses, behaviour, config=cfg)
    assert movie_correlation(rec_t.video, rec_o.video, sigma=0, skip=0) > 0.99
    assert rec_o.provider == ob.provider
