"""Movie and response metrics, scored as the paper does (smoothing, skipped frames, eval mask)."""

import numpy as np
import pytest

from decoder.metrics import (
    MetricsError,
    frame_correlation,
    movie_correlation,
    movie_metrics,
    response_correlation,
    smooth_movie,
)


def test_pearson_over_masked_pixels_by_hand():
    truth = np.zeros((3, 2, 2))
    recon = np.zeros((3, 2, 2))
    truth[:, 0, 0] = [1, 2, 3]
    recon[:, 0, 0] = [1, 3, 2]
    truth[:, 1, 1] = 100.0  # outside the mask: must not count
    mask = np.array([[True, False], [False, False]])
    # r([1,2,3],[1,3,2]) = 0.5
    assert movie_correlation(truth, recon, mask, sigma=0, skip=0) == pytest.approx(0.5)
    # skipping the first frame leaves [2,3] vs [3,2]: r = -1
    assert movie_correlation(truth, recon, mask, sigma=0, skip=1) == pytest.approx(-1.0)


def test_smoothing_is_separable_gaussian_with_reflect_boundary():
    movie = np.zeros((9, 9, 9))
    movie[4, 4, 4] = 1.0
    out = smooth_movie(movie, 0.5)
    x = np.arange(-2, 3)
    k = np.exp(-(x**2) / (2 * 0.25))
    k /= k.sum()
    expected = np.einsum("i,j,k->ijk", k, k, k)
    np.testing.assert_allclose(out[2:7, 2:7, 2:7], expected, rtol=1e-12)
    assert out.sum() == pytest.approx(1.0)
    flat = np.full((4, 3, 5), 7.0)
    np.testing.assert_allclose(smooth_movie(flat), flat)  # reflect: a constant movie stays constant


def test_perfect_reconstruction_scores_one_and_shuffled_about_zero():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 255, (60, 36, 64))
    from scipy.ndimage import gaussian_filter

    truth = gaussian_filter(truth, 2.0)  # smooth movie: the scoring's smoothing barely changes it
    assert movie_correlation(truth, truth, sigma=0) == pytest.approx(1.0)
    assert movie_correlation(truth, truth) > 0.95
    assert movie_correlation(truth, 3 * truth + 5, sigma=0) == pytest.approx(1.0)
    shuffled = rng.permutation(truth.reshape(-1)).reshape(truth.shape)
    assert abs(movie_correlation(truth, shuffled)) < 0.05
    assert abs(frame_correlation(truth, shuffled)) < 0.05
    assert frame_correlation(truth, truth, sigma=0) == pytest.approx(1.0)
    m = movie_metrics(truth, truth)
    assert set(m) == {"pixel_correlation", "frame_correlation", "pixel_correlation_unsmoothed"}


def test_frame_correlation_is_mean_of_per_frame_r():
    truth = np.zeros((2, 1, 3))
    recon = np.zeros((2, 1, 3))
    truth[0, 0] = [1, 2, 3]
    recon[0, 0] = [1, 2, 3]  # r = 1
    truth[1, 0] = [1, 2, 3]
    recon[1, 0] = [3, 2, 1]  # r = -1
    assert frame_correlation(truth, recon, sigma=0, skip=0) == pytest.approx(0.0)
    truth[1, 0] = [1, 2, 3]
    recon[1, 0] = [1, 3, 2]  # r = 0.5
    assert frame_correlation(truth, recon, sigma=0, skip=0) == pytest.approx(0.75)


def test_response_correlation_per_neuron_mean_with_nan():
    pred = np.array([[1, 1], [2, 3], [3, 2], [4, 4.0]])
    obs = np.array([[1, 1], [2, 2], [3, 3], [4, np.nan]])
    # neuron 0: r = 1; neuron 1 (last frame NaN): [1,3,2] vs [1,2,3] -> 0.5
    assert response_correlation(pred, obs, skip=0) == pytest.approx(0.75)


def test_bad_inputs_are_named():
    with pytest.raises(MetricsError, match="eval mask"):
        movie_correlation(np.zeros((40, 2, 2)), np.zeros((40, 2, 2)), np.ones((3, 3)))
    with pytest.raises(MetricsError, match="drops the first 30"):
        movie_correlation(np.zeros((30, 2, 2)), np.zeros((30, 2, 2)))
    with pytest.raises(MetricsError, match="must both be"):
        movie_correlation(np.zeros((40, 2, 2)), np.zeros((40, 2, 3)))
