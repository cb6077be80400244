"""Movie and response metrics, scored as the paper does (smoothing, skipped frames, eval mask)."""

import numpy as np
import pytest

from neurocine.decoder.analysis.metrics import (
    METRICS,
    MetricsError,
    corr,
    frame_correlation,
    mean_metrics,
    movie_correlation,
    movie_metrics,
    psnr,
    response_correlation,
    rmse,
    smooth_movie,
    spread,
    ssim,
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
    assert set(m) == {*METRICS, "smoothing_sigma", "unsmoothed"} and m["smoothing_sigma"] == 0.5
    assert set(m["unsmoothed"]) == set(METRICS)
    assert m["unsmoothed"]["pixel_correlation"] == pytest.approx(1.0) and m["unsmoothed"]["ssim"] == pytest.approx(1.0)
    assert m["pixel_correlation"] < 1.0 and m["ssim"] < 1.0  # the smoothed copy is no longer exact


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


def test_corr_known_values_axis_and_missing_samples():
    assert corr([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert corr([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    x = np.array([[1.0, 2, 3], [1, 2, 3]])
    y = np.array([[1.0, 3, 2], [3, 2, 1]])
    np.testing.assert_allclose(corr(x, y, axis=1), [0.5, -1.0])
    np.testing.assert_allclose(corr(x.T, y.T, axis=0), [0.5, -1.0])
    assert corr(x, y) == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1])
    # a NaN on either side drops the pair: [1,2,3] vs [1,3,2] after dropping the 4th pair
    assert corr([1, 2, 3, 4], [1, 3, 2, np.nan]) == pytest.approx(0.5)
    assert np.isnan(corr([1.0, np.nan], [2.0, 3.0]))  # one valid pair: not measured
    with pytest.raises(MetricsError, match="shapes differ"):
        corr([1, 2], [1, 2, 3])


def test_flat_series_score_zero_and_count_everywhere():
    """The one rule: a flat series scores 0 and counts in the mean (training, validation, reconstruct)."""
    assert corr([5, 5, 5], [1, 2, 3]) == 0.0
    assert corr([1, 2, 3], [5, 5, 5]) == 0.0
    assert corr(np.full(50, 0.1) * 3, np.arange(50.0)) == 0.0  # round-off is not variance
    pred = np.array([[1, 7], [2, 7], [3, 7], [4, 7.0]])
    obs = np.array([[1, 1], [2, 2], [3, 3], [4, 4.0]])
    assert response_correlation(pred, obs, skip=0) == pytest.approx(0.5)  # (1 + 0) / 2: flat neuron counts
    from neurocine.decoder.encoder.data import sensorium_correlation

    assert sensorium_correlation([pred], [obs], skip=0) == pytest.approx(0.5)  # same rule in training
    truth = np.zeros((2, 1, 3))
    truth[:, 0] = [1, 2, 3]
    recon = truth.copy()
    recon[1] = 9.0  # a flat frame
    assert frame_correlation(truth, recon, sigma=0, skip=0) == pytest.approx(0.5)
    assert movie_correlation(truth, np.full_like(truth, 127.5), sigma=0, skip=0) == 0.0  # grey start


def test_rmse_psnr_ssim_in_the_mask():
    truth = np.zeros((2, 12, 12))
    recon = np.zeros((2, 12, 12))
    recon[:, :, 6:] = 50.0  # error only in the right half
    left = np.zeros((12, 12), bool)
    left[:, :6] = True
    assert rmse(truth, recon, left, sigma=0, skip=0) == 0.0
    assert psnr(truth, recon, left, sigma=0, skip=0) == float("inf")
    assert rmse(truth, recon, ~left, sigma=0, skip=0) == pytest.approx(50.0)
    assert psnr(truth, recon, ~left, sigma=0, skip=0) == pytest.approx(20 * np.log10(255 / 50))
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 255, (3, 20, 20))
    assert ssim(t, t, sigma=0, skip=0) == pytest.approx(1.0)
    from skimage.metrics import structural_similarity

    r = t + rng.normal(0, 30, t.shape)
    want = np.mean([structural_similarity(a, b, data_range=255) for a, b in zip(t, r, strict=True)])
    assert ssim(r * 0 + t, r, sigma=0, skip=0) == pytest.approx(want)  # whole frame: scikit-image's own value
    mask = np.zeros((20, 20), bool)
    mask[2:12, 5:15] = True
    r2 = r.copy()
    r2[:, ~mask] = 0  # ruin everything outside the mask: the masked SSIM barely moves
    inside = ssim(t, r2, mask, sigma=0, skip=0)
    assert inside > ssim(t, r2, sigma=0, skip=0)
    assert inside == pytest.approx(ssim(t, r, mask, sigma=0, skip=0), abs=0.1)
    row = np.zeros((20, 20), bool)
    row[5, 2:10] = True  # one row: no SSIM window fits
    with pytest.raises(MetricsError, match="3x3"):
        ssim(t, r, row, sigma=0, skip=0)


def test_mean_metrics_and_spread():
    truth = np.random.default_rng(2).uniform(0, 255, (40, 8, 8))
    per = [movie_metrics(truth, truth + k, skip=5) for k in (1.0, 3.0)]
    avg = mean_metrics(per)
    assert avg["rmse"] == pytest.approx(np.mean([p["rmse"] for p in per]))
    assert avg["unsmoothed"]["rmse"] == pytest.approx(2.0) and avg["smoothing_sigma"] == 0.5
    s = spread([0.4, 0.5, 0.6])
    assert s["mean"] == pytest.approx(0.5) and s["sd"] == pytest.approx(0.1) and s["n"] == 3
    assert s["ci95_half_width"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), abs=1e-3)
    assert s["movies_for_target"] == 385  # ceil((1.96 * 0.1 / 0.01)^2)
    assert spread([0.3])["ci95"] is None
