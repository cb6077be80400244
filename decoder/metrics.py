"""Quality of a reconstructed movie, scored the way Bauer, Margrie & Clopath (eLife 2026) score it.

Paper scoring (`movie_correlation`): the reconstruction (the ensemble average, if any) is smoothed with a
3D Gaussian of sigma 0.5 frames/pixels over (t, y, x); the first 30 frames are dropped (activity trails the
stimulus and the encoder needs its history); Pearson correlation over all (frame, pixel) pairs inside the
evaluation mask, one number per movie. Only the reconstruction is smoothed, the true movie is not (the
smoothing removes the pixel-level high-frequency noise that gradient descent leaves, the truth has none).

Smoothing: scipy.ndimage.gaussian_filter, kernel truncated at 4 sigma (radius 2 at sigma 0.5), boundary
mode 'reflect' (half-sample symmetric: edge pixels are mirrored, so borders are not pulled towards 0).

numpy + scipy only: the decode service scores itself without torch.
"""

from __future__ import annotations

import numpy as np

#: The paper's scoring constants.
SMOOTH_SIGMA = 0.5
SKIP_FRAMES = 30


class MetricsError(ValueError):
    """Arrays handed to a metric have mismatched shapes or too few frames."""


def smooth_movie(movie: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """3D Gaussian smoothing over (t, y, x) of a (T, H, W) movie; float64 out (sigma 0 = unchanged)."""
    movie = np.asarray(movie, dtype=np.float64)
    if movie.ndim != 3:
        raise MetricsError(f"movie must be (T, H, W), got shape {movie.shape}")
    if sigma <= 0:
        return movie
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(movie, sigma=sigma, mode="reflect", truncate=4.0)


def _check_pair(truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    truth = np.asarray(truth)
    recon = np.asarray(recon)
    if truth.ndim != 3 or truth.shape != recon.shape:
        raise MetricsError(
            f"truth and reconstruction must both be (T, H, W); got {truth.shape} and {recon.shape}"
        )
    if mask is None:
        return np.ones(truth.shape[1:], dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != truth.shape[1:]:
        raise MetricsError(f"eval mask must be (H, W) = {truth.shape[1:]}, got {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise MetricsError("eval mask selects no pixel")
    return mask


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _prepared(
    truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None, sigma: float, skip: int
) -> tuple[np.ndarray, np.ndarray]:
    """(frames kept, pixels in mask) arrays of the truth and the smoothed reconstruction."""
    m = _check_pair(truth, recon, mask)
    if skip < 0:
        raise MetricsError(f"skip must be >= 0, got {skip}")
    if truth.shape[0] <= skip:
        raise MetricsError(f"movie has {truth.shape[0]} frames; scoring drops the first {skip}, nothing left")
    smoothed = smooth_movie(recon, sigma)  # smoothed over the whole movie, then the first frames dropped
    return np.asarray(truth, dtype=np.float64)[skip:, m], smoothed[skip:, m]


def movie_correlation(
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA,
    skip: int = SKIP_FRAMES,
) -> float:
    """The paper's score: Pearson r over all (frame, pixel) pairs in the mask, after smoothing and skip."""
    t, r = _prepared(truth, recon, mask, sigma, skip)
    return _pearson(t.ravel(), r.ravel())


def frame_correlation(
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA,
    skip: int = SKIP_FRAMES,
) -> float:
    """Mean over frames of the spatial Pearson r inside the mask (frames with a flat image are left out)."""
    t, r = _prepared(truth, recon, mask, sigma, skip)
    t = t - t.mean(axis=1, keepdims=True)
    r = r - r.mean(axis=1, keepdims=True)
    den = np.sqrt((t * t).sum(axis=1) * (r * r).sum(axis=1))
    ok = den > 0
    if not ok.any():
        return float("nan")
    return float(np.mean((t * r).sum(axis=1)[ok] / den[ok]))


def response_correlation(predicted: np.ndarray, recorded: np.ndarray, skip: int = SKIP_FRAMES) -> float:
    """Mean over neurons of the Pearson r over time between predicted and recorded activity, both (T, N).

    NaN in `recorded` (not reported) drops that (frame, neuron) pair; neurons that are flat in either
    array are left out of the mean.
    """
    p = np.asarray(predicted, dtype=np.float64)
    o = np.asarray(recorded, dtype=np.float64)
    if p.ndim != 2 or p.shape != o.shape:
        raise MetricsError(f"predicted and recorded must both be (T, N); got {p.shape} and {o.shape}")
    if p.shape[0] <= skip:
        raise MetricsError(f"{p.shape[0]} frames; scoring drops the first {skip}, nothing left")
    p, o = p[skip:], o[skip:]
    valid = np.isfinite(o) & np.isfinite(p)
    cnt = valid.sum(axis=0)
    pz, oz = np.where(valid, p, 0.0), np.where(valid, o, 0.0)
    pm = pz.sum(axis=0) / np.maximum(cnt, 1)
    om = oz.sum(axis=0) / np.maximum(cnt, 1)
    pc = np.where(valid, p - pm, 0.0)
    oc = np.where(valid, o - om, 0.0)
    den = np.sqrt((pc * pc).sum(axis=0) * (oc * oc).sum(axis=0))
    ok = (den > 0) & (cnt > 1)
    if not ok.any():
        return float("nan")
    return float(np.mean((pc * oc).sum(axis=0)[ok] / den[ok]))


def movie_metrics(
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA,
    skip: int = SKIP_FRAMES,
) -> dict[str, float]:
    """Pixel correlation (paper score), mean per-frame correlation, and the same without smoothing."""
    return {
        "pixel_correlation": movie_correlation(truth, recon, mask, sigma, skip),
        "frame_correlation": frame_correlation(truth, recon, mask, sigma, skip),
        "pixel_correlation_unsmoothed": movie_correlation(truth, recon, mask, 0.0, skip),
    }
