"""Per-mouse readouts: the point readout reads its bilinear taps, its frozen (gather) form computes the same
function and the same input gradient as the torch module, and the exported graphs agree with a finite
difference of their own loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurocine.decoder.encoder import export as E
from neurocine.decoder.encoder.model import build_encoder, calibrate_batchnorm
from neurocine.decoder.encoder.presets import READOUTS, get_preset
from neurocine.decoder.encoder.readouts import (
    READOUT_KINDS,
    FrozenPointReadout,
    PointReadout,
    bilinear_taps,
    plan_blocks,
)
from neurocine.decoder.encoder.samples import behaviour, random_smooth_movies


def test_every_configurable_readout_has_a_class() -> None:
    assert set(READOUTS) == set(READOUT_KINDS)


def test_bilinear_taps_at_corners_centres_and_between() -> None:
    size = (5, 8)
    pos = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-1.0 + 2 / 7 * 2.5, -1.0 + 2 / 4 * 1.25], [3.0, -9.0]])
    index, weights = bilinear_taps(pos, size)
    assert torch.allclose(weights.sum(1), torch.ones(5))
    dense = torch.zeros(5, 40).scatter_add(1, index, weights).reshape(5, 5, 8)
    assert float(dense[0, 0, 0]) == pytest.approx(1.0)
    assert float(dense[1, 4, 7]) == pytest.approx(1.0)
    assert float(dense[2, 2, 3]) == pytest.approx(0.5) and float(dense[2, 2, 4]) == pytest.approx(0.5)
    # x = 2.5 cells, y = 1.25 cells: between columns 2/3 and rows 1/2
    assert float(dense[3, 1, 2]) == pytest.approx(0.75 * 0.5)
    assert float(dense[3, 2, 3]) == pytest.approx(0.25 * 0.5)
    assert float(dense[4, 0, 7]) == pytest.approx(1.0)  # outside: clamped to the top-right cell


def test_point_readout_reads_only_its_taps_and_samples_positions_while_training() -> None:
    torch.manual_seed(0)
    readout = PointReadout(4, (5, 8), 3, beta=1.0)
    with torch.no_grad():
        readout.position.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
        readout.features.fill_(1.0)
        readout.bias.fill_(0.0)
    x = torch.zeros(1, 4, 2, 5, 8)
    x[:, :, :, 4, 7] = 1.0  # a map that is 1 in the bottom-right cell only
    readout.eval()
    with torch.no_grad():
        out = readout(x)
    assert out.shape == (1, 3, 2)
    assert float(out[0, 1, 0]) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(4.0))), rel=1e-5)
    assert float(out[0, 0, 0]) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.0))), rel=1e-5)
    readout.train()
    with torch.no_grad():
        same = torch.randn(1, 4, 2, 5, 8, generator=torch.Generator().manual_seed(1))
        a, b = readout(same), readout(same)
    assert not torch.equal(a, b)  # positions drawn anew each pass


def test_plan_blocks_gives_every_neuron_one_slot_and_keeps_cells_apart() -> None:
    cells = torch.tensor([3, 0, 3, 3, 1, 3, 0, 3])
    block_cell, slot, neuron_of_slot = plan_blocks(cells, n_cells=4, block=2)
    assert sorted(slot.tolist()) == sorted(set(slot.tolist()))
    assert (neuron_of_slot[slot] == torch.arange(8)).all()
    assert (block_cell[slot // 2] == cells).all()
    assert block_cell.tolist() == [0, 1, 3, 3, 3]  # cell 3 holds 5 neurons: 3 blocks of 2


@pytest.mark.parametrize("n_neurons", [1, 37, 400])
def test_frozen_point_readout_equals_the_module_in_value_and_input_gradient(n_neurons: int) -> None:
    gen = torch.Generator().manual_seed(n_neurons)
    readout = PointReadout(6, (5, 8), n_neurons, beta=1.0).eval()
    with torch.no_grad():  # crowd some neurons into one cell and put some on the map's edges
        readout.position.copy_(torch.rand(n_neurons, 2, generator=gen) * 2 - 1)
        readout.position[: n_neurons // 3] = torch.tensor([0.1, -0.2])
        readout.position[n_neurons // 3 : n_neurons // 3 + 2] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])[
            : max(0, min(2, n_neurons - n_neurons // 3))]
        readout.features.copy_(torch.randn(n_neurons, 6, generator=gen))
        readout.bias.copy_(torch.randn(n_neurons, generator=gen))
    frozen = FrozenPointReadout(readout, block=16)
    # one window (B = 1) of 6 frames: its even and its odd frames as the batch of two halves (2, C, T/2, H, W)
    x = torch.randn(2, 6, 3, 5, 8, generator=gen, requires_grad=True)
    ref = readout(x)  # (2 halves, N, 3)
    assert torch.allclose(frozen(x), ref, rtol=1e-5, atol=1e-6)
    recorded = torch.randn(1, n_neurons, 6, generator=gen)  # frame 2t + h is half h's frame t
    (g_ref,) = torch.autograd.grad((ref * recorded.reshape(n_neurons, 3, 2).permute(2, 0, 1)).sum(), x)
    # the gradient graph's path: predictions in the blocks' own layout, the recorded side moved there
    pred, obs, wts, axis = frozen.window_terms(x, recorded, torch.ones(1, n_neurons))
    assert pred.shape[axis] == 1
    (g_got,) = torch.autograd.grad((pred * torch.nan_to_num(obs) * wts).sum(), x)
    assert torch.allclose(g_got, g_ref, rtol=1e-4, atol=1e-5)
    assert 0 < frozen.kept <= 1


@pytest.fixture(scope="module", params=["tiny", pytest.param("small", marks=pytest.mark.slow)])
def point_export(request, tmp_path_factory):
    torch.set_num_threads(1)
    enc = build_encoder(get_preset(request.param), {"m": 300}, seed=2)
    assert enc.config.readout == "point"
    beh = torch.from_numpy(behaviour(1, 32, seed=3))
    enc.stats["m"].behaviour_mean.copy_(beh.mean(dim=(0, 1)))
    enc.stats["m"].behaviour_std.copy_(beh.std(dim=(0, 1)).clamp_min(1e-3))
    calibrate_batchnorm(enc, [(torch.from_numpy(random_smooth_movies(1, 32, seed=3)), beh)], "m")
    enc.eval()
    paths = E.export_mouse(enc, "m", tmp_path_factory.mktemp(f"point_{request.param}"))
    return enc, paths


def test_point_readout_export_matches_torch_and_a_finite_difference(point_export) -> None:
    enc, paths = point_export
    import json

    assert json.loads(paths["meta"].read_text())["readout"] == "point"
    ex = E.example_inputs(enc, "m", 2, seed=4)
    ex["video"] = torch.from_numpy(random_smooth_movies(2, 32, seed=4))
    ex["behaviour"] = torch.from_numpy(behaviour(2, 32, seed=4))
    with torch.no_grad():
        pred = E.forward_function(enc, "m")(ex["video"], ex["behaviour"])
    ex["responses"] = torch.poisson(pred, generator=torch.Generator().manual_seed(5))
    ex["responses"][0, :7, 3:9] = float("nan")
    ex["weights"][1, 100:] = 0.0
    fwd, grad = E.onnx_session(paths["forward"], threads=1), E.onnx_session(paths["gradient"], threads=1)
    (got_pred,) = fwd.run(None, {"video": ex["video"].numpy(), "behaviour": ex["behaviour"].numpy()})
    assert np.abs(got_pred - pred.numpy()).max() <= 1e-4 * float(pred.abs().max())
    feeds = {k: ex[k].numpy() for k in E.GRADIENT_INPUTS}
    ref_loss, ref_grad = E.gradient_function(E.frozen_copy(enc, fold_norms=False), "m")(
        *(ex[k] for k in E.GRADIENT_INPUTS))
    loss, g = grad.run(None, feeds)
    np.testing.assert_allclose(loss, ref_loss.numpy(), rtol=1e-4)
    assert np.linalg.norm(g - ref_grad.numpy()) / np.linalg.norm(ref_grad.numpy()) < 1e-4
    # the graph's gradient predicts its own loss change (central difference on the float32 losses) along the
    # gradient itself, per window scaled to at most 1 grey level a pixel: the largest first-order change, far above
    # the losses' float32 rounding whatever the preset's sensitivity, and a step small enough for curvature not to show
    direction = g / np.abs(g).max(axis=tuple(range(1, g.ndim)), keepdims=True)
    eps = 4.0
    plus, _ = grad.run(None, {**feeds, "video": (feeds["video"] + eps * direction).astype(np.float32)})
    minus, _ = grad.run(None, {**feeds, "video": (feeds["video"] - eps * direction).astype(np.float32)})
    for b in range(2):
        numeric = (float(plus[b]) - float(minus[b])) / (2 * eps)
        analytic = float(np.sum(g[b].astype(np.float64) * direction[b]))
        assert numeric == pytest.approx(analytic, rel=2e-2, abs=1e-7)


def test_exported_softplus_is_exact_for_tiny_and_large_rates(point_export) -> None:
    """The export writes softplus and its gradient (a sigmoid) with vectorised operators, exact in relative terms
    from rates of 1e-38 up (log(1 + exp(x)) written out gives 0 below ~1e-8, ONNX Runtime's Sigmoid is off by
    tens of percent there, and the Poisson loss's gradient divides by the rate)."""
    import onnx

    from neurocine.decoder.encoder.export import _softplus_exact

    _, paths = point_export
    ops = [node.op_type for node in onnx.load(str(paths["gradient"])).graph.node]
    assert "Softplus" not in ops  # ONNX Runtime's kernel is exact but scalar (slow); its Sigmoid is approximate
    x = torch.tensor([-88.0, -40.0, -20.0, -17.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 17.0, 30.0, 90.0])
    ref = np.logaddexp(0.0, x.double().numpy())
    np.testing.assert_allclose(_softplus_exact(x).double().numpy(), ref, rtol=3e-7)
    from neurocine.decoder.encoder.export import _softplus_input_grad

    sigmoid = 1.0 / (1.0 + np.exp(-x.double().numpy()))
    np.testing.assert_allclose(_softplus_input_grad(torch.ones_like(x), x, 1.0, 20.0).double().numpy(), sigmoid,
                               rtol=3e-7)
