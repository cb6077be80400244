"""Gradient backends: per-window gradients, masking by NaN/weights, torch vs ONNX Runtime equality."""

import numpy as np
import pytest
import torch

from neurocine.decoder.encoder.oracle import OracleEncoder
from neurocine.decoder.reconstruct.backends import BackendError, Ensemble, TorchBackend, normalised_window_grad
from neurocine.streams.synthetic import make_mouse

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
def shipped():
    """The built-in model (checkpoint and exported graphs) and its mouse: real graphs, no export to wait for."""
    import json

    from neurocine.decoder.encoder.checkpoint import load_encoder
    from neurocine.decoder.reconstruct.models import SHIPPED_MODELS_DIR

    folder = SHIPPED_MODELS_DIR / "default"
    meta = json.loads((folder / "graph.json").read_text())
    encoder, _ = load_encoder(folder / "checkpoint")
    return encoder, folder, meta["mouse"], len(meta["neuron_ids"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from neurocine.decoder.encoder.export import export_mouse
    from neurocine.decoder.encoder.model import build_encoder
    from neurocine.decoder.encoder.presets import get_preset

    encoder = build_encoder(get_preset("tiny"), {"m0": 30}, seed=0)
    encoder.stats["m0"].response_std.copy_(torch.linspace(0.5, 2.0, 30))
    folder = tmp_path_factory.mktemp("export")
    export_mouse(encoder, "m0", folder)
    return encoder, folder


def test_onnx_backend_binds_buffers_once_and_runs_all_windows_in_one_call(shipped):
    """The IOBinding path on the CPU provider: one session.run per loss_and_grad whatever the number of
    windows, the same output buffers reused, results equal to a plain session.run and to torch."""
    from neurocine.decoder.reconstruct.backends import OrtBackend

    encoder, folder, mouse, n = shipped
    ob = OrtBackend(folder, providers=["CPUExecutionProvider"], threads=1)
    assert ob.provider == "CPUExecutionProvider" and ob.batch is None and ob.window == 32
    calls = []
    run = ob.ort_session.run_with_iobinding
    ob.ort_session.run_with_iobinding = lambda binding: (calls.append(1), run(binding))[1]
    video, beh, resp = _batch(3, n=n, seed=4)
    loss, grad = ob.loss_and_grad(video, beh, resp)
    plain_loss, plain_grad = ob.ort_session.run(None, {"video": video, "behaviour": beh, "responses": resp,
                                                    "weights": np.ones((3, n), np.float32)})  # fmt: skip
    np.testing.assert_array_equal(loss, plain_loss)
    np.testing.assert_array_equal(grad, plain_grad)
    expected = grad.copy()
    _, grad2 = ob.loss_and_grad(video[::-1], beh[::-1], resp[::-1])
    assert grad2 is grad and len(calls) == 2  # same buffer, one call per 3 windows
    np.testing.assert_allclose(grad2[::-1], expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())
    _, g_t = TorchBackend.from_encoder(encoder, mouse, threads=1).loss_and_grad(video, beh, resp)
    for b in range(3):  # per window (the readout's blob tails dropped at export: < 1e-5 relative)
        assert np.linalg.norm(g_t[::-1][b] - grad2[b]) <= 1e-4 * np.linalg.norm(g_t[::-1][b])
    _, one = ob.loss_and_grad(video[1:2], beh[1:2], resp[1:2])  # another batch size: its own binding
    assert one.shape == (1, 32, 36, 64)
    assert np.abs(one[0] - expected[1]).max() <= 1e-5 * np.abs(expected[1]).max()


def test_fused_ensemble_equals_member_by_member(shipped):
    from neurocine.decoder.reconstruct.backends import OrtBackend
    from neurocine.decoder.reconstruct.ort_fused import fuse_ensemble

    _, folder, _, n = shipped
    members = [OrtBackend(f, providers=["CPUExecutionProvider"], threads=1)
               for f in (folder, folder.parent / "seed1")]  # two encoders of one mouse: an ensemble
    video, beh, resp = _batch(2, n=n, seed=5)
    resp[1, 3, :8] = np.nan
    weights = np.linspace(0.0, 1.0, n).astype(np.float32)
    plain = Ensemble(members)
    ref_loss, ref_grad = normalised_window_grad(plain, video, beh, resp, weights, 1e-6)
    fused = Ensemble(members)
    assert fuse_ensemble(fused)
    calls = []
    run = fused.fused.ort_session.run_with_iobinding
    fused.fused.ort_session.run_with_iobinding = lambda binding: (calls.append(1), run(binding))[1]
    loss, grad = normalised_window_grad(fused, video, beh, resp, weights, 1e-6)
    assert len(calls) == 1
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert np.abs(grad - ref_grad).max() <= 1e-4 * np.abs(ref_grad).max()  # float32 norms in the graph
    assert not fuse_ensemble(Ensemble(members[:1]))  # nothing to fuse


def test_cuda_provider_that_does_not_load_fails_loudly(shipped):
    """`--provider cuda` must never run on the CPU quietly (here CUDA cannot load: no GPU / libraries)."""
    import onnxruntime as ort

    from neurocine.decoder.reconstruct.backends import OrtBackend

    _, folder, _, _ = shipped
    auto = OrtBackend(folder, threads=1)
    if auto.provider == "CUDAExecutionProvider":
        pytest.skip("CUDA loads on this machine; the loud failure needs one where it does not")
    with pytest.raises(BackendError, match=r"gradient.onnx: ONNX Runtime provider CUDAExecutionProvider") as err:
        OrtBackend(folder, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1)
    built = "CUDAExecutionProvider" in ort.get_available_providers()
    assert ("did not load" if built else "not in this onnxruntime build") in str(err.value)
    from neurocine.decoder.encoder.export import onnx_session

    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        onnx_session(folder / "gradient.onnx", "cuda")


def test_unloadable_or_unbatched_graphs_are_refused_naming_the_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from neurocine.decoder.reconstruct.backends import OrtBackend

    bad = tmp_path / "corrupt" / "gradient.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(BackendError, match=r"corrupt/gradient.onnx: ONNX Runtime cannot load"):
        OrtBackend(bad.parent)
    # a graph of the old contract: a fixed batch of one window, one loss per call
    shapes = {"video": [1, 32, 36, 64], "behaviour": [1, 32, 4], "responses": [1, 5, 32], "weights": [1, 5]}
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in shapes.items()]
    outputs = [helper.make_tensor_value_info("loss", TensorProto.FLOAT, []),
               helper.make_tensor_value_info("grad_video", TensorProto.FLOAT, shapes["video"])]  # fmt: skip
    nodes = [helper.make_node("ReduceSum", ["weights"], ["loss"], keepdims=0),
             helper.make_node("Identity", ["video"], ["grad_video"])]  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "old", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18)])  # fmt: skip
    model.ir_version = 9
    old = tmp_path / "old" / "gradient.onnx"
    old.parent.mkdir()
    onnx.save(model, str(old))
    with pytest.raises(BackendError, match=r"old/gradient.onnx: graph has a fixed batch of 1 window"):
        OrtBackend(old, providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_onnx_and_torch_give_the_same_gradient_and_reconstruction(exported):
    from neurocine.decoder.analysis.metrics import movie_correlation
    from neurocine.decoder.reconstruct.backends import OrtBackend
    from neurocine.decoder.reconstruct.offline import OfflineConfig, reconstruct_offline

    encoder, folder = exported
    tb = TorchBackend.from_encoder(encoder, "m0", threads=1)
    ob = OrtBackend(folder, threads=1)
    assert ob.provider == ob.ort_session.get_providers()[0]
    assert ob.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (ob.batch, ob.window, ob.n_neurons) == (None, 32, 30)
    video, beh, resp = _batch(6, n=30, seed=1)  # 6 windows in one call
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


def test_decode_refuses_at_start_up_a_graph_it_cannot_use(tmp_path):
    """`neurocine decode` names the bad graph and exits before listening (here: an old fixed-batch graph,
    and --provider cuda where CUDA cannot load)."""
    import shutil

    from neurocine.decoder.reconstruct.backends import OrtBackend
    from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR
    from tests.conftest import free_port, neurocine

    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "gradient.onnx").write_bytes(b"\x08\x07garbage")
    endpoints = ["--connect", f"tcp://127.0.0.1:{free_port()}", "--bind", f"tcp://127.0.0.1:{free_port()}"]
    proc = neurocine("decode", "--model", str(bad), *endpoints)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"{bad / 'gradient.onnx'}: ONNX Runtime cannot load" in err
    if OrtBackend(DEFAULT_MODEL_DIR).provider == "CUDAExecutionProvider":
        return  # CUDA loads here: the loud failure is covered where it does not
    model = tmp_path / "default"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    proc = neurocine("decode", "--model", str(model), "--provider", "cuda", *endpoints)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "provider CUDAExecutionProvider" in err and str(model) in err


def test_a_window_of_the_wrong_length_is_refused_by_name_on_either_backend(oracle_backend):
    """Both backends check a batch the same way (check_batch), window length included."""
    from neurocine.decoder.reconstruct.backends import OrtBackend
    from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR

    onnx = OrtBackend(DEFAULT_MODEL_DIR, providers=["CPUExecutionProvider"], threads=1)
    assert onnx.window is not None
    video, beh, resp = _batch(1, t=onnx.window // 2, n=onnx.n_neurons)
    torch_fixed = TorchBackend(oracle_backend.model, N, window=onnx.window, name="torch-32")
    for backend in (onnx, torch_fixed):
        with pytest.raises(BackendError, match=rf"{backend.name} takes windows of {onnx.window} frames, got "
                                               rf"{onnx.window // 2}"):
            backend.loss_and_grad(video, beh, resp[:, : backend.n_neurons])
        with pytest.raises(BackendError, match="takes windows of"):
            backend.predict(video, beh)
