"""ONNX export of the encoder: the forward and gradient graphs match the full torch model (not the pruned
export copy) on onnxruntime's CPU provider, for any number of windows per call."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from neurocine.decoder.encoder import export as E
from neurocine.decoder.encoder.model import build_encoder, calibrate_batchnorm
from neurocine.decoder.encoder.presets import get_preset
from neurocine.decoder.encoder.samples import behaviour, random_smooth_movies

MOUSE = "m1"
NEURONS = {"tiny": 60, "small": 40, "dwiseneuro": 8}
BATCH = {"tiny": 3, "small": 2, "dwiseneuro": 1}  # windows per graph call (the graphs take any number)


def _inputs(kind: str, enc, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random (uniform noise movie) or realistic (smooth movie, drifting behaviour) inputs."""
    if kind == "random":
        ex = E.example_inputs(enc, MOUSE, batch, seed=seed)
    else:
        ex = E.example_inputs(enc, MOUSE, batch, seed=seed)
        ex["video"] = torch.from_numpy(random_smooth_movies(batch, 32, seed))
        ex["behaviour"] = torch.from_numpy(behaviour(batch, 32, seed))
        with torch.no_grad():  # responses near the model's own predictions, as recorded ones would be
            pred = E.forward_function(enc, MOUSE)(ex["video"], ex["behaviour"])
        gen = torch.Generator().manual_seed(seed)
        ex["responses"] = torch.poisson(pred, generator=gen)
    return ex


@pytest.fixture(scope="module", params=["tiny", pytest.param("small", marks=pytest.mark.slow),
                                                  pytest.param("dwiseneuro", marks=pytest.mark.slow)])
def exported(request, tmp_path_factory):
    """One calibrated encoder per preset, exported once (the export is the slow part)."""
    torch.set_num_threads(1)
    preset = request.param
    enc = build_encoder(get_preset(preset), {MOUSE: NEURONS[preset], "other": 5}, seed=3)
    stats = enc.stats[MOUSE]
    stats.behaviour_mean.copy_(torch.tensor([5.0, 20.0, 30.0, 25.0]))
    stats.behaviour_std.copy_(torch.tensor([2.0, 3.0, 4.0, 5.0]))
    stats.response_std.copy_(torch.linspace(0.5, 2.0, NEURONS[preset]))
    # BatchNorm statistics from both kinds of input, as a trained model has them for its inputs
    beh = torch.from_numpy(behaviour(1, 32, seed=11))
    smooth = torch.from_numpy(random_smooth_movies(1, 32, seed=11))
    noise = torch.rand(1, 32, 36, 64, generator=torch.Generator().manual_seed(11)) * 255.0
    calibrate_batchnorm(enc, [(smooth, beh), (noise, beh)], MOUSE)
    enc.eval()
    out = tmp_path_factory.mktemp(f"onnx_{preset}")
    paths = E.export_mouse(enc, MOUSE, out)
    sessions = {g: E.onnx_session(paths[g], threads=1) for g in E.GRAPHS}
    return preset, E.frozen_copy(enc, fold_norms=False), sessions, paths


def _feeds(session, ex) -> dict[str, np.ndarray]:
    return {i.name: ex[i.name].numpy() for i in session.get_inputs()}


@pytest.mark.parametrize("kind", ["random", "realistic"])
def test_onnx_forward_equals_torch(exported, kind: str) -> None:
    _, enc, sessions, _ = exported
    batch = BATCH[exported[0]]
    ex = _inputs(kind, enc, batch, seed=4)
    with torch.no_grad():
        ref = E.forward_function(enc, MOUSE)(ex["video"], ex["behaviour"]).numpy()
    (got,) = sessions["forward"].run(None, _feeds(sessions["forward"], ex))
    assert sessions["forward"].get_providers()[0] == "CPUExecutionProvider"
    assert got.shape == ref.shape == (batch, enc.neurons[MOUSE], 32)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    assert (got >= 0).all()


@pytest.mark.parametrize("kind", ["random", "realistic"])
def test_onnx_gradient_equals_torch_autograd(exported, kind: str) -> None:
    _, enc, sessions, _ = exported
    batch = BATCH[exported[0]]
    ex = _inputs(kind, enc, batch, seed=5)
    loss, grad = E.gradient_function(enc, MOUSE)(*(ex[k] for k in E.GRADIENT_INPUTS))
    got_loss, got_grad = sessions["gradient"].run(None, _feeds(sessions["gradient"], ex))
    assert got_grad.shape == (batch, 32, 36, 64) and got_loss.shape == (batch,)
    assert float(np.linalg.norm(grad.numpy())) > 0
    # float32 sums in another order: up to 3.3e-5 relative seen on one window's loss (small, noise movie)
    assert np.abs(got_loss - loss.numpy()).max() < 1e-4 * np.abs(loss.numpy()).max()
    for b in range(batch):  # each window's own gradient
        rel = np.linalg.norm(got_grad[b] - grad[b].numpy()) / np.linalg.norm(grad[b].numpy())
        assert rel < 1e-4


@pytest.mark.parametrize("exported", ["tiny", pytest.param("small", marks=pytest.mark.slow)], indirect=True)
def test_gradient_graph_masks_nan_responses_and_zero_weights(exported) -> None:
    _preset, enc, sessions, _ = exported
    ex = _inputs("realistic", enc, BATCH[exported[0]], seed=6)
    n = enc.neurons[MOUSE]
    ex["responses"][:, 0, 5:9] = float("nan")
    ex["weights"][:, n // 2 :] = 0.0
    ex["weights"][-1, 1] = 0.5
    loss, grad = E.gradient_function(enc, MOUSE)(*(ex[k] for k in E.GRADIENT_INPUTS))
    got_loss, got_grad = sessions["gradient"].run(None, _feeds(sessions["gradient"], ex))
    assert np.isfinite(got_loss).all() and np.isfinite(got_grad).all()
    assert np.abs(got_loss - loss.numpy()).max() < 1e-5 * np.abs(loss.numpy()).max()
    assert np.linalg.norm(got_grad - grad.numpy()) / np.linalg.norm(grad.numpy()) < 1e-4
    # masked neurons really are out: changing their responses changes nothing
    ex["responses"][:, n // 2 :] *= 3.0
    again_loss, again_grad = sessions["gradient"].run(None, _feeds(sessions["gradient"], ex))
    np.testing.assert_allclose(again_loss, got_loss, rtol=1e-6)
    assert np.allclose(again_grad, got_grad, rtol=1e-5, atol=1e-7 * np.abs(got_grad).max())


def test_graphs_use_standard_operators_only_and_carry_metadata(exported) -> None:
    preset, enc, _, paths = exported
    for g in E.GRAPHS:
        model = onnx.load(str(paths[g]))
        onnx.checker.check_model(model)
        ops = {node.op_type for node in model.graph.node}
        assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
        assert "Gradient" not in ops
    grad_nodes = [node.op_type for node in onnx.load(str(paths["gradient"])).graph.node]
    assert "Conv" in grad_nodes and "CastLike" not in grad_nodes and "Constant" not in grad_nodes
    assert grad_nodes.count("Cast") <= 2  # folded: the make_fx decomposition alone leaves ~100 Casts
    if preset == "tiny":
        assert len(grad_nodes) < 400  # the unfolded export of the same graph: ~1,100 nodes
    assert not (paths["meta"].parent / "step.onnx").exists()
    import json

    meta = json.loads(paths["meta"].read_text())
    assert meta["preset"] == preset and meta["window"] == 32 and meta["n_neurons"] == enc.neurons[MOUSE]
    assert meta["batch"] == "dynamic" and meta["graph_version"] == E.GRAPH_VERSION


@pytest.mark.parametrize("exported", ["tiny"], indirect=True)
def test_one_call_of_many_windows_equals_one_call_per_window(exported) -> None:
    _, enc, sessions, _ = exported
    ex = _inputs("realistic", enc, 4, seed=8)
    ex["responses"][2, 3, :5] = float("nan")
    session = sessions["gradient"]
    loss, grad = session.run(None, _feeds(session, ex))
    for b in range(4):
        one = {k: v[b : b + 1] for k, v in ex.items()}
        loss1, grad1 = session.run(None, _feeds(session, one))
        assert loss1[0] == pytest.approx(loss[b], rel=1e-5)
        assert np.abs(grad1[0] - grad[b]).max() <= 1e-5 * np.abs(grad[b]).max()
    (pred,) = sessions["forward"].run(None, _feeds(sessions["forward"], ex))
    (pred1,) = sessions["forward"].run(None, _feeds(sessions["forward"], {k: v[3:] for k, v in ex.items()}))
    np.testing.assert_allclose(pred1[0], pred[3], rtol=1e-5, atol=1e-6)


def test_readout_pruning_keeps_predictions_and_gradients() -> None:
    """The gaussian (blob) readout's export drops blob weights < prune x the neuron's largest: kept fraction
    falls, error stays tiny."""
    torch.manual_seed(0)
    enc = build_encoder(get_preset("tiny").replace(readout="gaussian"), {MOUSE: 50}, seed=5)
    readout = enc.readouts[MOUSE]
    with torch.no_grad():
        readout.log_sigma.fill_(float(np.log(0.1)))  # narrow blobs: most of the 5x8 map carries ~nothing
    enc.eval()
    full = E.frozen_copy(enc)
    ex = _inputs("realistic", full, 2, seed=9)
    with torch.no_grad():
        ref_pred = E.forward_function(full, MOUSE)(ex["video"], ex["behaviour"])
    ref_loss, ref_grad = E.gradient_function(full, MOUSE)(*(ex[k] for k in E.GRADIENT_INPUTS))
    kept_before = 1.0
    for prune, tol in ((0.0, 1e-6), (E.READOUT_PRUNE, 1e-5), (1e-2, 2e-2)):
        pruned = E.frozen_copy(enc, prune)
        kept = pruned.readouts[MOUSE].kept
        assert kept <= kept_before
        kept_before = kept
        with torch.no_grad():
            pred = E.forward_function(pruned, MOUSE)(ex["video"], ex["behaviour"])
        loss, grad = E.gradient_function(pruned, MOUSE)(*(ex[k] for k in E.GRADIENT_INPUTS))
        nonzero = float((readout.spatial_weights() > 0).float().mean())  # float32 exp underflows far out
        assert (kept == nonzero) if prune == 0.0 else (kept < 0.5 * nonzero)
        assert float((pred - ref_pred).abs().max()) <= tol * float(ref_pred.abs().max())
        assert float((loss - ref_loss).abs().max()) <= tol * float(ref_loss.abs().max())
        assert float(torch.linalg.norm(grad - ref_grad) / torch.linalg.norm(ref_grad)) <= 10 * tol


@pytest.mark.parametrize(
    ("dims", "stride", "padding", "dilation", "groups", "size"),
    [
        (1, 1, 2, 1, 1, 11),
        (2, 2, 1, 1, 4, 9),  # odd size: the transposed convolution needs output padding
        (2, 1, 1, 1, 8, 10),  # depthwise
        (3, (1, 2, 2), (2, 1, 1), 1, 2, 7),
        (2, 1, 2, 2, 1, 8),  # dilated
        (2, 3, 0, 1, 2, 10),
    ],
)
def test_convolution_input_gradient_rule_matches_autograd(dims, stride, padding, dilation, groups, size) -> None:
    gen = torch.Generator().manual_seed(0)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims](
        8, 16, 3, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False
    )
    x = torch.randn(2, 8, *([size] * dims), generator=gen, requires_grad=True)
    y = conv(x)
    g_out = torch.randn(y.shape, generator=gen)
    (ref,) = torch.autograd.grad(y, x, g_out)
    c = conv
    got, _, _ = E._convolution_input_grad(
        g_out,
        x,
        c.weight.detach(),
        None,
        list(c.stride),
        list(c.padding),
        list(c.dilation),
        False,
        [0] * dims,
        groups,
        [True, False, False],
    )
    assert got.shape == x.shape
    assert torch.allclose(got, ref, atol=1e-5)


def test_export_refuses_unknown_mouse_bad_prune_and_unknown_graph(tmp_path) -> None:
    enc = build_encoder(get_preset("tiny"), {"a": 3})
    with pytest.raises(ValueError, match="unknown mouse 'b'"):
        E.export_mouse(enc, "b", tmp_path)
    with pytest.raises(ValueError, match="readout_prune"):
        E.export_mouse(enc, "a", tmp_path, readout_prune=1.0)
    with pytest.raises(ValueError, match="graphs must be"):
        E.export_mouse(enc, "a", tmp_path, graphs=("step",))


@pytest.mark.parametrize("dim", [0, 2])
@pytest.mark.parametrize(
    ("size", "start", "end", "step"),
    [(9, 0, 9, 2), (16, 1, 16, 2), (10, 0, 10, 3), (8, 1, 2**63 - 1, 2), (5, -3, 5, 2), (11, 0, 11, 4),
     (7, 2, 6, 1), (6, 0, 3, 1), (6, 3, 6, 1), (6, -2, 2**63 - 1, 1), (7, 0, 7, 1)],
)
def test_slice_gradient_rule_equals_the_core_rule(dim, size, start, end, step) -> None:
    from torch._decomp import core_aten_decompositions

    core = core_aten_decompositions()[torch.ops.aten.slice_backward.default]
    shape = [2, 3, 4, 5]
    shape[dim] = size
    sliced = torch.zeros(shape)[(slice(None),) * dim + (slice(start, end, step),)]
    g_out = torch.randn(sliced.shape, generator=torch.Generator().manual_seed(size + step))
    assert torch.equal(E._slice_input_grad(g_out, shape, dim, start, end, step),
                       core(g_out, shape, dim, start, end, step))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "groups", "transposed"),
    [
        ((5, 1, 1), (1, 1, 1), (2, 0, 0), 8, False),  # temporal depthwise
        ((1, 1, 1), (1, 1, 1), (0, 0, 0), 1, False),  # pointwise
        ((1, 3, 3), (1, 1, 1), (0, 1, 1), 8, False),  # spatial depthwise
        ((1, 3, 3), (1, 2, 2), (0, 1, 1), 8, False),  # strided
        ((1, 3, 3), (1, 2, 2), (0, 1, 1), 8, True),  # its input gradient
        ((1, 7, 7), (1, 4, 4), (0, 3, 3), 1, False),  # the stem
    ],
)
def test_3d_convolutions_written_as_2d_give_the_same_result(kernel, stride, padding, groups, transposed) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 6, 9, 16, generator=gen)
    weight = torch.randn(8, 8 // groups, *kernel, generator=gen)
    bias = torch.randn(8, generator=gen)
    args = (list(stride), list(padding), [1, 1, 1], transposed, [0, 0, 0], groups)
    ref = torch.ops.aten.convolution(x, weight, bias, *args)
    got = E._convolution_3d_as_2d(x, weight, bias, *args)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5)
    assert E._convolution_3d_as_2d(x, torch.randn(8, 1, 3, 3, 3), None, [1] * 3, [1] * 3, [1] * 3, False,
                                   [0] * 3, 8) is NotImplemented  # a kernel over time and space stays 3-D


def test_folded_batchnorms_keep_predictions_and_gradients() -> None:
    enc = build_encoder(get_preset("tiny"), {MOUSE: 30}, seed=5)
    calibrate_batchnorm(enc, [(torch.from_numpy(random_smooth_movies(1, 32, 2)),
                               torch.from_numpy(behaviour(1, 32, 2)))], MOUSE)
    plain, folded = E.frozen_copy(enc, fold_norms=False), E.frozen_copy(E.frozen_copy(enc))  # folds once
    assert not any(isinstance(m, torch.nn.BatchNorm3d) and m is not b.bn_shortcut
                   for b in folded.core.blocks for m in b.modules())
    ex = E.example_inputs(plain, MOUSE, 2, seed=4)
    with torch.no_grad():
        ref = E.forward_function(plain, MOUSE)(ex["video"], ex["behaviour"])
        got = E.forward_function(folded, MOUSE)(ex["video"], ex["behaviour"])
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    _, ref_grad = E.gradient_function(plain, MOUSE)(*(ex[k] for k in E.GRADIENT_INPUTS))
    _, grad = E.gradient_function(folded, MOUSE)(*(ex[k] for k in E.GRADIENT_INPUTS))
    assert float((grad - ref_grad).abs().max()) < 1e-4 * float(ref_grad.abs().max())


def test_reshape_targets_are_constants(exported) -> None:
    """The batch is left to Reshape's -1: no shape arithmetic runs per call."""
    _, _, _, paths = exported
    for graph in E.GRAPHS:
        model = onnx.load(str(paths[graph]))
        constants = {i.name for i in model.graph.initializer}
        targets = [n.input[1] for n in model.graph.node if n.op_type == "Reshape"]
        assert targets and all(t in constants for t in targets), graph
