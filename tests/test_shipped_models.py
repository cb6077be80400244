"""The shipped models' ONNX graphs (decoder/models/*) equal torch on their own checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR

MODELS = DEFAULT_MODEL_DIR.parent
SHIPPED = ["default", "seed1", "seed2"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_graph_equals_torch_on_its_checkpoint(name: str) -> None:
    from neurocine.decoder.encoder.checkpoint import load_encoder
    from neurocine.decoder.encoder.export import GRAPH_VERSION
    from neurocine.decoder.encoder.samples import behaviour, random_smooth_movies
    from neurocine.decoder.reconstruct.backends import OrtBackend, TorchBackend

    folder = MODELS / name
    meta = json.loads((folder / "graph.json").read_text())
    assert meta["graph_version"] == GRAPH_VERSION and meta["batch"] == "dynamic"
    assert not (folder / "step.onnx").exists()
    encoder, _ = load_encoder(folder / "checkpoint")
    mouse = meta["mouse"]
    tb = TorchBackend.from_encoder(encoder, mouse, threads=1)
    ob = OrtBackend(folder, providers=["CPUExecutionProvider"], threads=1)
    assert ob.n_neurons == tb.n_neurons == len(meta["neuron_ids"])
    video = random_smooth_movies(2, 32, seed=3)
    beh_raw = behaviour(2, 32, seed=3)
    stats = meta["statistics"]
    beh = (np.asarray(stats["behaviour_mean"], np.float32) + beh_raw * np.asarray(stats["behaviour_std"], np.float32))
    pred = tb.predict(video, beh)
    np.testing.assert_allclose(ob.predict(video, beh), pred, rtol=1e-4, atol=1e-4 * float(pred.max()))
    rng = np.random.default_rng(4)
    resp = rng.poisson(pred).astype(np.float32)  # responses as the model would have them recorded
    resp[1, :10, 5:9] = np.nan
    loss_t, grad_t = tb.loss_and_grad(video, beh, resp)
    loss_o, grad_o = ob.loss_and_grad(video, beh, resp)
    np.testing.assert_allclose(loss_o, loss_t, rtol=1e-5)
    for b in range(2):  # each window's gradient (the readout's dropped blob tails: < 1e-5 relative)
        assert np.linalg.norm(grad_o[b] - grad_t[b]) <= 1e-4 * np.linalg.norm(grad_t[b])


def test_profile_splits_a_live_step_of_the_builtin_model(tmp_path) -> None:
    """`bench encoder --profile`: ORT's own per-operator times, one session.run per step, parts add up."""
    from neurocine.decoder.bench.profile_step import profile_step, render

    result = profile_step(DEFAULT_MODEL_DIR, frames=3, warmup=2, steps=1, threads=1, workdir=tmp_path)
    assert result["calls_per_frame"] == 1.0  # one session.run per step
    assert result["graph_nodes"]["total"] < 400 and result["graph_batch"] == "dynamic"
    assert "Conv" in result["per_op_ms"] and result["per_op_kernels_per_frame"]["Conv"] >= 1
    assert abs(sum(result["per_op_ms"].values()) - result["ort_kernels_ms"]) < 0.01 * result["ort_kernels_ms"] + 0.01
    parts = result["ort_kernels_ms"] + result["ort_call_overhead_ms"] + result["numpy_around_ms"]
    assert abs(parts - result["frame_ms"]) < 0.01 * result["frame_ms"] + 0.01
    assert result["ort_call_overhead_ms"] >= 0 and result["numpy_around_ms"] > 0
    assert "ORT kernels" in render(result)


def test_half_precision_graph_keeps_float32_io_and_the_gradient_close(tmp_path) -> None:
    """`neurocine export --half`: fp16 inside, float32 in and out; its gradient error on the shipped model."""
    import onnx

    from neurocine.decoder.encoder.export import write_half_precision
    from neurocine.decoder.reconstruct.backends import OrtBackend

    half = write_half_precision(DEFAULT_MODEL_DIR / "gradient.onnx", tmp_path / "gradient_fp16.onnx")
    model = onnx.load(str(half))
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    full = OrtBackend(DEFAULT_MODEL_DIR, providers=["CPUExecutionProvider"], threads=1)
    fp16 = OrtBackend(half, providers=["CPUExecutionProvider"], threads=1)
    rng = np.random.default_rng(6)
    video = rng.uniform(0, 255, (2, 32, 36, 64)).astype(np.float32)
    beh = rng.normal(0, 1, (2, 32, 4)).astype(np.float32)
    resp = rng.gamma(1.0, 1.0, (2, full.n_neurons, 32)).astype(np.float32)
    loss, grad = (x.copy() for x in full.loss_and_grad(video, beh, resp))
    loss16, grad16 = fp16.loss_and_grad(video, beh, resp)
    np.testing.assert_allclose(loss16, loss, rtol=1e-3)
    for b in range(2):  # measured 1.9e-3 relative
        assert np.linalg.norm(grad16[b] - grad[b]) <= 1e-2 * np.linalg.norm(grad[b])
