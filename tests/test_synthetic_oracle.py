"""The oracle encoder (PyTorch) equals the numpy model of the synthetic mouse."""

import numpy as np
import pytest
import torch

from neurocine.decoder.encoder.oracle import OracleEncoder
from neurocine.streams.synthetic import BehaviourGenerator, expected_activity, make_mouse, natural_movie


def test_oracle_equals_numpy_within_1e_4():
    m = make_mouse(5, 200)
    videos = np.stack([natural_movie(60, s, "test") for s in (1, 2)])
    behs = np.stack([BehaviourGenerator(s).frames(60) for s in (3, 4)])
    behs[..., 2:] *= 3  # bigger gaze shifts
    enc = OracleEncoder(m)
    out = enc(torch.tensor(videos, dtype=torch.float32), torch.tensor(behs)).detach().numpy()
    assert out.shape == (2, 200, 60) and (out >= 0).all()
    for b in range(2):
        ref = expected_activity(m, videos[b], behs[b]).T
        assert np.abs(out[b] - ref).max() <= 1e-4 * np.abs(ref).max()
        np.testing.assert_allclose(out[b], ref, rtol=1e-4, atol=1e-6)


def test_oracle_is_differentiable_even_from_grey():
    enc = OracleEncoder(make_mouse(0, 50))
    video = torch.full((1, 12, 36, 64), 127.5, requires_grad=True)
    enc(video, torch.zeros(1, 12, 4)).sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0


def test_oracle_from_dataset_folder(tmp_path):
    m = make_mouse(2, 30)
    m.save(tmp_path / "meta" / "mouse")
    enc = OracleEncoder.from_dataset(tmp_path)
    assert enc.n_neurons == 30
    with pytest.raises(ValueError, match="video"):
        enc(torch.zeros(1, 5, 36, 60), torch.zeros(1, 5, 4))
