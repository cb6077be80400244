"""Stimuli of the synthetic mouse: deterministic, right shapes, train and test never share pixels."""

import numpy as np
import pytest

from neurocine.streams.synthetic import stimuli as S


def test_natural_movie_is_deterministic_and_uint8():
    a = S.natural_movie(90, seed=4, split="train")
    b = S.natural_movie(90, seed=4, split="train")
    assert a.shape == (90, 36, 64) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, S.natural_movie(90, seed=5, split="train"))
    assert a.std() > 10  # not a blank screen


def test_splits_give_different_movies_for_the_same_seed():
    assert not np.array_equal(S.natural_movie(30, 1, "train"), S.natural_movie(30, 1, "test"))


@pytest.mark.parametrize("index", range(len(S.PHOTOS)))
def test_split_regions_of_every_photo_are_disjoint_with_a_gap(index):
    shape = S.load_photos()[index].shape
    masks = {}
    for split in S.SPLITS:
        rows, cols = S.split_region(index, shape, split)
        m = np.zeros(shape, bool)
        m[rows, cols] = True
        assert m[rows, cols].shape[0] >= 36 and m[rows, cols].shape[1] >= 64, split
        masks[split] = m
    # grow each region by the gap minus the widest blur radius: still no overlap
    grow = 8
    for a in S.SPLITS:
        ys, xs = np.nonzero(masks[a])
        grown = np.zeros(shape, bool)
        grown[max(ys.min() - grow, 0):ys.max() + grow + 1, max(xs.min() - grow, 0):xs.max() + grow + 1] = True
        for b in S.SPLITS:
            if a != b:
                assert not (grown & masks[b]).any(), (a, b)


def test_unknown_split_is_a_clear_error():
    with pytest.raises(S.StimulusError, match="split"):
        S.NaturalMovie(0, "validation")


def test_gratings_drift_with_the_requested_period():
    g = S.drifting_grating(31, direction_deg=0, sf_cpd=0.04, tf_hz=1.0).astype(float)
    assert g.shape == (31, 36, 64) and g.dtype == float
    period_px = 1 / (0.04 * S.DEG_PER_PX)
    row = g[0, 0] - g[0, 0].mean()
    spectrum = np.abs(np.fft.rfft(row))
    assert abs(64 / spectrum.argmax() - period_px) < 3
    assert np.allclose(g[0], g[30], atol=2)  # 1 Hz at 30 frames: one full cycle
    frames, conds = S.grating_set(n_frames_each=2)
    assert len({c["direction_deg"] for c in conds}) >= 4 and frames.shape[0] == 2 * len(conds)


def _neighbour_corr(x, axis):
    x = x.astype(float) - x.mean()
    a = np.take(x, np.arange(x.shape[axis] - 1), axis=axis)
    b = np.take(x, np.arange(1, x.shape[axis]), axis=axis)
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]


def test_noise_movies_have_the_requested_length_constants():
    white = S.gaussian_noise_movie(60, 0, 0, seed=1)
    assert white.shape == (60, 36, 64) and white.dtype == np.uint8
    assert abs(_neighbour_corr(white, 2)) < 0.05 and abs(_neighbour_corr(white, 0)) < 0.05
    smooth_space = S.gaussian_noise_movie(60, 4, 0, seed=1)
    smooth_time = S.gaussian_noise_movie(60, 0, 4, seed=1)
    assert _neighbour_corr(smooth_space, 2) > 0.9 and abs(_neighbour_corr(smooth_space, 0)) < 0.2
    assert _neighbour_corr(smooth_time, 0) > 0.9 and abs(_neighbour_corr(smooth_time, 2)) < 0.1
    assert np.array_equal(S.gaussian_noise_movie(10, 2, 2, seed=3), S.gaussian_noise_movie(10, 2, 2, seed=3))
    assert S.NOISE_SPATIAL_LENGTHS == (0, 1, 2, 4, 8, 16, 32)
    with pytest.raises(S.StimulusError):
        S.gaussian_noise_movie(10, -1, 0)


def test_grey_movie():
    g = S.grey_movie(5)
    assert g.shape == (5, 36, 64) and (g == 128).all()


@pytest.mark.slow  # decodes an H.264 clip
def test_big_buck_bunny_clip_decodes_to_grey_frames() -> None:
    from neurocine.streams.synthetic.stimuli import bunny_movie

    movie = bunny_movie(40)
    assert movie.shape == (40, 36, 64) and movie.dtype == np.uint8
    assert movie.std() > 10 and not np.array_equal(movie[0], movie[-1])  # real, moving content
