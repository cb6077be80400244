"""The DwiseNeuro encoder family: parameter counts, input layout, outputs, loss and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurocine.decoder.encoder.model import (
    Encoder,
    build_encoder,
    calibrate_batchnorm,
    count_parameters,
    poisson_loss,
    positional_encoding_3d,
)
from neurocine.decoder.encoder.presets import PRESETS, EncoderConfig, get_preset
from neurocine.decoder.encoder.samples import behaviour, random_smooth_movies


@pytest.mark.parametrize(("preset", "core"), [("dwiseneuro", 3_075_736), ("dwiseneuro7", 3_673_404)])
def test_dwiseneuro_parameter_counts_match_the_published_ones(preset: str, core: int) -> None:
    enc = Encoder(get_preset(preset), {"a": 7, "b": 1000})
    assert count_parameters(enc.core) == core
    assert count_parameters(enc.cortex) == 5_402_624
    # grouped (groups=2) Conv1d 4096 -> N (padded to a multiple of the groups) with bias
    assert count_parameters(enc.readouts["a"]) == 4096 // 2 * 8 + 8
    assert count_parameters(enc.readouts["b"]) == 4096 // 2 * 1000 + 1000


def test_dwiseneuro_core_output_is_256_channels_on_8x8() -> None:
    enc = Encoder(get_preset("dwiseneuro"), {"a": 3})
    assert enc.core.out_features == 256 and enc.core.out_size == (8, 8)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_window_forward_equals_dwiseneuro_planes_and_is_non_negative(preset: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(get_preset(preset), {"m": 12}, seed=1).eval()
    enc.stats["m"].behaviour_mean.copy_(torch.tensor([5.0, 20.0, 30.0, 25.0]))
    enc.stats["m"].behaviour_std.copy_(torch.tensor([2.0, 3.0, 4.0, 5.0]))
    video = torch.from_numpy(random_smooth_movies(2, 32, seed=0))
    beh = torch.from_numpy(behaviour(2, 32, seed=0))
    with torch.no_grad():
        out = enc(video, beh, "m")
        planes = enc.make_planes(video, beh, "m")
        halves = enc.forward_planes(planes, "m")
    assert out.shape == (2, 12, 32)
    assert bool((out >= 0).all())
    assert torch.allclose(out[:, :, 0::2], halves[:2], rtol=1e-4, atol=1e-4 * float(out.abs().max()))
    assert torch.allclose(out[:, :, 1::2], halves[2:], rtol=1e-4, atol=1e-4 * float(out.abs().max()))


def test_planes_layout_pad64_centres_the_frame_and_orders_behaviour() -> None:
    enc = Encoder(get_preset("dwiseneuro"), {"m": 2})
    enc.stats["m"].behaviour_std.fill_(1.0)
    video = torch.full((1, 32, 36, 64), 127.5 + 64.0)  # normalises to 1
    beh = torch.arange(32 * 4, dtype=torch.float32).reshape(1, 32, 4)
    planes = enc.make_planes(video, beh, "m")
    assert planes.shape == (2, 5, 16, 64, 64)
    assert bool((planes[:, 0, :, 14:50] == 1).all())
    assert bool((planes[:, 0, :, :14] == 0).all()) and bool((planes[:, 0, :, 50:] == 0).all())
    # channel 1..4 = running_speed, pupil_dilation, pupil_x, pupil_y; batch 0 = even frames, 1 = odd
    for c in range(4):
        assert float(planes[0, 1 + c, 3, 7, 9]) == float(beh[0, 6, c])
        assert float(planes[1, 1 + c, 3, 0, 0]) == float(beh[0, 7, c])


def test_native_layout_keeps_36x64() -> None:
    enc = Encoder(get_preset("tiny"), {"m": 2})
    planes = enc.make_planes(torch.zeros(1, 32, 36, 64), torch.zeros(1, 32, 4), "m")
    assert planes.shape == (2, 5, 16, 36, 64)


def test_positional_encoding_is_fixed_and_distinguishes_positions() -> None:
    pe = positional_encoding_3d(20, 16, 8, 8)
    assert pe.shape == (1, 20, 16, 8, 8)
    assert torch.equal(pe, positional_encoding_3d(20, 16, 8, 8))
    flat = pe[0].reshape(20, -1).T  # one code per (t, y, x)
    assert torch.unique(flat, dim=0).shape[0] == 16 * 8 * 8


def test_seed_fixes_the_weights() -> None:
    a = build_encoder(get_preset("tiny"), {"m": 3}, seed=5)
    b = build_encoder(get_preset("tiny"), {"m": 3}, seed=5)
    c = build_encoder(get_preset("tiny"), {"m": 3}, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_training_mode_uses_drop_path_and_dropout_but_eval_is_deterministic() -> None:
    import dataclasses

    from neurocine.decoder.encoder.model import DropPath

    # the small core with DwiseNeuro's readout (the point readout has no dropout): both kinds of drop present
    config = dataclasses.replace(get_preset("small"), readout="pooled", cortex_features=(64,))
    enc = build_encoder(config, {"m": 4}, seed=0)
    video = torch.from_numpy(random_smooth_movies(2, 32, seed=1))
    beh = torch.from_numpy(behaviour(2, 32, seed=1))
    calibrate_batchnorm(enc, [(video, beh)], "m")
    drop_paths = [m for m in enc.modules() if isinstance(m, DropPath) and m.rate > 0]
    dropouts = [m for m in enc.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    assert drop_paths and dropouts
    for m in drop_paths:  # the preset's rates (up to 0.05) would often keep every branch of a 2-sample batch
        m.rate = 0.5

    def random_in_training(seed: int = 0) -> bool:
        """Two training-mode passes with different seeds differ (and the same seed repeats)."""
        enc.train()
        with torch.no_grad():
            torch.manual_seed(seed)
            a = enc(video, beh, "m")
            torch.manual_seed(seed)
            again = enc(video, beh, "m")
            torch.manual_seed(seed + 1)
            b = enc(video, beh, "m")
        assert torch.equal(a, again)
        return not torch.equal(a, b)

    assert random_in_training()
    rates = [m.rate for m in drop_paths]
    for m in drop_paths:  # drop path alone off: the dropout still draws
        m.rate = 0.0
    assert random_in_training()
    for m, r in zip(drop_paths, rates, strict=True):  # dropout alone off: the drop path still draws
        m.rate = r
    for m in dropouts:
        m.p = 0.0
    assert random_in_training()
    for m in drop_paths:  # both off: training mode is deterministic, so the randomness was theirs
        m.rate = 0.0
    assert not random_in_training()
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(video, beh, "m"), enc(video, beh, "m"))


def test_poisson_loss_ignores_nan_observations_and_zero_weight_neurons() -> None:
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    obs = torch.tensor([[[0.5, float("nan")], [1.0, 2.0]]])
    full = poisson_loss(pred, obs)
    expected = np.mean([1 - 0.5 * math.log(1), 3 - 1 * math.log(3), 4 - 2 * math.log(4)])
    assert float(full) == pytest.approx(expected, rel=1e-6)
    only_second = poisson_loss(pred, obs, torch.tensor([0.0, 1.0]))
    assert float(only_second) == pytest.approx(np.mean([3 - math.log(3), 4 - 2 * math.log(4)]), rel=1e-6)
    per_batch = poisson_loss(pred, obs, torch.tensor([[0.0, 1.0]]))
    assert float(per_batch) == pytest.approx(float(only_second))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e(torch.zeros(1, 30, 36, 64), torch.zeros(1, 30, 4), "m"), "windows of 32"),
        (lambda e: e(torch.zeros(1, 32, 64, 64), torch.zeros(1, 32, 4), "m"), r"\(B, T, 36, 64\)"),
        (lambda e: e(torch.zeros(1, 32, 36, 64), torch.zeros(1, 32, 2), "m"), "behaviour must be"),
        (lambda e: e(torch.zeros(1, 32, 36, 64), torch.zeros(1, 32, 4), "x"), "unknown mouse"),
    ],
)
def test_bad_inputs_get_clear_errors(call, message: str) -> None:
    enc = Encoder(get_preset("tiny"), {"m": 2})
    with pytest.raises((ValueError, KeyError), match=message):
        call(enc)


def test_bad_configs_and_presets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoder preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match="one stride per block"):
        EncoderConfig(name="x", core_features=(8, 8), spatial_strides=(1,), cortex_features=(16,))
    with pytest.raises(ValueError, match="not divisible by groups"):
        EncoderConfig(name="x", core_features=(8,), spatial_strides=(1,), cortex_features=(15,))
    with pytest.raises(ValueError, match="at least one neuron"):
        Encoder(get_preset("tiny"), {"m": 0})
    cfg = PRESETS["tiny"]
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown encoder config fields"):
        EncoderConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_stable_softplus_is_accurate_from_tiny_to_large_rates() -> None:
    from neurocine.decoder.encoder.readouts import stable_softplus

    x = torch.linspace(-400, 400, 20001)
    ref = torch.nn.functional.softplus(x.double(), beta=0.07, threshold=1e9)
    got = stable_softplus(x, 0.07).double()
    assert float(((got - ref).abs() / ref).max()) < 5e-6


def test_gaussian_readout_pools_around_each_neurons_position() -> None:
    from neurocine.decoder.encoder.readouts import GaussianReadout

    readout = GaussianReadout(4, (5, 8), 3, beta=1.0)
    with torch.no_grad():
        readout.position.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))  # (x, y) corners and centre
        readout.log_sigma.fill_(math.log(0.05))  # narrower than a cell: all weight on the nearest one
        w = readout.spatial_weights().reshape(3, 5, 8)
    assert torch.allclose(w.sum(dim=(1, 2)), torch.ones(3))
    assert float(w[0, 0, 0]) > 0.99 and float(w[1, 4, 7]) > 0.99
    # a feature map that is 1 in exactly one cell reaches only the neuron sitting there
    x = torch.zeros(1, 4, 2, 5, 8)
    x[:, :, :, 4, 7] = 1.0
    with torch.no_grad():
        readout.features.fill_(1.0)
        readout.bias.fill_(0.0)
        out = readout(x)  # (1, 3, 2)
    assert out.shape == (1, 3, 2)
    assert float(out[0, 1, 0]) > float(out[0, 0, 0]) + 3.0


def test_stem_roughness_prefers_smooth_kernels() -> None:
    from neurocine.decoder.encoder.train import stem_roughness

    enc = build_encoder(get_preset("tiny"), {"m": 2}, seed=0)
    noisy = float(stem_roughness(enc))
    yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    blob = torch.exp(-((yy - 3) ** 2 + (xx - 3) ** 2) / 8.0)
    with torch.no_grad():
        enc.core.stem.weight[:, 0, 0] = blob
    assert float(stem_roughness(enc)) < 0.2 * noisy


def test_unknown_readout_and_even_stem_kernel_are_refused() -> None:
    with pytest.raises(ValueError, match="readout must be one of"):
        get_preset("tiny").replace(readout="mystery")
    with pytest.raises(ValueError, match="stem_kernel"):
        get_preset("tiny").replace(stem_kernel=6)
    with pytest.raises(ValueError, match="no cortex"):
        get_preset("tiny").replace(cortex_features=(64,))
