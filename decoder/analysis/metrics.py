"""Quality of a reconstructed movie, scored the way Bauer, Margrie & Clopath (eLife 2026) score it.

One Pearson correlation, `corr`, is the only one in the project (training's validation, `reconstruct`, the
viewer and every bench call it). Its rules:
- NaN marks a missing sample: a pair with a NaN on either side is left out of that series.
- A *flat* series (no variance over its valid samples, within float round-off) scores 0 against anything and
  counts in every mean. Why 0 and not "left out": a constant prediction carries no information, and leaving it
  out would reward a model (or a reconstruction) for going silent where it is unsure. This is the Sensorium /
  neuralpredictors convention, so the encoder's validation number stays comparable with theirs.
- A series with fewer than 2 valid samples was not measured: NaN, and left out of means (`nanmean`).

Paper scoring (`movie_correlation`): the reconstruction (the ensemble average, if any) is smoothed with a
3D Gaussian of sigma 0.5 frames/pixels over (t, y, x); the first 30 frames are dropped (activity trails the
stimulus and the encoder needs its history); Pearson correlation over all (frame, pixel) pairs inside the
evaluation mask, one number per movie. Only the reconstruction is smoothed, the true movie is not (the
smoothing removes the pixel-level high-frequency noise that gradient descent leaves, the truth has none).
`movie_metrics` reports every metric with that smoothing and, under "unsmoothed", without it (sigma 0).

Smoothing: scipy.ndimage.gaussian_filter, kernel truncated at 4 sigma (radius 2 at sigma 0.5), boundary
mode 'reflect' (half-sample symmetric: edge pixels are mirrored, so borders are not pulled towards 0).

Beside the correlations, on the same (smoothed, skipped, masked) pixels: RMSE and PSNR on the 0..255 scale,
and scikit-image's SSIM (its defaults: 7x7 uniform window, data range 255) computed per frame on the eval
mask's bounding box, its SSIM map averaged over the mask's pixels (less the box's 3-pixel border, as
scikit-image's own mean does: with a full mask it is exactly `structural_similarity`). Unlike correlation
these three punish a reconstruction's lower contrast and offset, which gradient inversion from grey always has.

numpy + scipy (+ scikit-image for SSIM only): the decode service scores itself without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The paper's scoring constants.
SMOOTH_SIGMA = 0.5
SKIP_FRAMES = 30
#: Movies are on the 0..255 scale (the paper's video tensor): PSNR's peak and SSIM's data range.
DATA_RANGE = 255.0
#: Relative round-off under which a series counts as flat (see the module docstring).
FLAT_TOL = 1e-10


class MetricsError(ValueError):
    """Arrays handed to a metric have mismatched shapes or too few frames."""


def corr(x: Any, y: Any, axis: int | None = None) -> Any:
    """Pearson r of x and y along `axis` (None: over all elements), NaN pairs left out, flat series 0.

    Returns a float for axis=None or 1-D input, else an array over the other axes. See the module docstring
    for the rules (missing samples, flat series, too few samples)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise MetricsError(f"corr: shapes differ, {x.shape} and {y.shape}")
    if axis is None:
        x, y, axis = x.ravel(), y.ravel(), 0
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    valid = np.isfinite(x) & np.isfinite(y)
    n = valid.sum(axis=-1)
    safe_n = np.maximum(n, 1)
    xz, yz = np.where(valid, x, 0.0), np.where(valid, y, 0.0)
    xc = np.where(valid, x - (xz.sum(-1) / safe_n)[..., None], 0.0)
    yc = np.where(valid, y - (yz.sum(-1) / safe_n)[..., None], 0.0)
    sxx, syy = (xc * xc).sum(-1), (yc * yc).sum(-1)
    # flat: variance below round-off of the series' own magnitude
    scale_x = np.maximum(np.abs(xz).max(-1, initial=0.0), 1.0)
    scale_y = np.maximum(np.abs(yz).max(-1, initial=0.0), 1.0)
    flat = (sxx <= n * (FLAT_TOL * scale_x) ** 2) | (syy <= n * (FLAT_TOL * scale_y) ** 2)
    den = np.sqrt(np.where(flat, 1.0, sxx * syy))
    r = np.where(flat, 0.0, (xc * yc).sum(-1) / den)
    r = np.where(n >= 2, np.clip(r, -1.0, 1.0), np.nan)
    return float(r) if r.ndim == 0 else r


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


def _frames(
    truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None, sigma: float, skip: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, smoothed reconstruction) as float64 (T - skip, H, W) movies, and the boolean mask."""
    m = _check_pair(truth, recon, mask)
    if skip < 0:
        raise MetricsError(f"skip must be >= 0, got {skip}")
    if truth.shape[0] <= skip:
        raise MetricsError(f"movie has {truth.shape[0]} frames; scoring drops the first {skip}, nothing left")
    smoothed = smooth_movie(recon, sigma)  # smoothed over the whole movie, then the first frames dropped
    return np.asarray(truth, dtype=np.float64)[skip:], smoothed[skip:], m


def _prepared(
    truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None, sigma: float, skip: int
) -> tuple[np.ndarray, np.ndarray]:
    """(frames kept, pixels in mask) arrays of the truth and the smoothed reconstruction."""
    t, r, m = _frames(truth, recon, mask, sigma, skip)
    return t[:, m], r[:, m]


def movie_correlation(
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA,
    skip: int = SKIP_FRAMES,
) -> float:
    """The paper's score: Pearson r over all (frame, pixel) pairs in the mask, after smoothing and skip."""
    t, r = _prepared(truth, recon, mask, sigma, skip)
    return corr(t, r)


def frame_correlation(
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA,
    skip: int = SKIP_FRAMES,
) -> float:
    """Mean over frames of the spatial Pearson r inside the mask (a flat frame scores 0, see `corr`)."""
    t, r = _prepared(truth, recon, mask, sigma, skip)
    return float(np.nanmean(corr(t, r, axis=1)))


def rmse(
    truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA, skip: int = SKIP_FRAMES,
) -> float:  # fmt: skip
    """Root mean squared error over the (frame, pixel) pairs in the mask, on the 0..255 scale."""
    t, r = _prepared(truth, recon, mask, sigma, skip)
    return float(np.sqrt(np.mean((t - r) ** 2)))


def psnr(
    truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA, skip: int = SKIP_FRAMES,
) -> float:  # fmt: skip
    """Peak signal-to-noise ratio in dB (peak 255) over the pairs in the mask; inf for an exact copy."""
    e = rmse(truth, recon, mask, sigma, skip)
    return float("inf") if e == 0 else float(20 * np.log10(DATA_RANGE / e))


def ssim(
    truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA, skip: int = SKIP_FRAMES,
) -> float:  # fmt: skip
    """Mean over frames of scikit-image's SSIM on the mask's bounding box, its map averaged over the mask."""
    from skimage.metrics import structural_similarity

    t, r, m = _frames(truth, recon, mask, sigma, skip)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = m[box]
    win = min(7, *inside.shape)
    win -= 1 - win % 2  # odd
    if win < 3:
        raise MetricsError(f"SSIM needs an eval mask at least 3x3 pixels across, got {inside.shape}")
    # as scikit-image's own mean: leave out the box's border of half a window (its windows run off the box)
    pad = (win - 1) // 2
    core = np.zeros_like(inside)
    core[pad : inside.shape[0] - pad, pad : inside.shape[1] - pad] = True
    if (inside & core).any():
        inside = inside & core
    values = []
    for a, b in zip(t[:, box[0], box[1]], r[:, box[0], box[1]], strict=True):
        _, smap = structural_similarity(a, b, win_size=win, data_range=DATA_RANGE, full=True)
        values.append(smap[inside].mean())
    return float(np.mean(values))


def response_correlation(predicted: np.ndarray, recorded: np.ndarray, skip: int = SKIP_FRAMES) -> float:
    """Mean over neurons of the Pearson r over time between predicted and recorded activity, both (T, N).

    NaN in `recorded` (not reported) drops that (frame, neuron) pair; a flat neuron scores 0 and counts, a
    neuron with fewer than 2 reported frames is left out (the rules of `corr`)."""
    p = np.asarray(predicted, dtype=np.float64)
    o = np.asarray(recorded, dtype=np.float64)
    if p.ndim != 2 or p.shape != o.shape:
        raise MetricsError(f"predicted and recorded must both be (T, N); got {p.shape} and {o.shape}")
    if p.shape[0] <= skip:
        raise MetricsError(f"{p.shape[0]} frames; scoring drops the first {skip}, nothing left")
    r = corr(p[skip:], o[skip:], axis=0)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


METRICS = ("pixel_correlation", "frame_correlation", "ssim", "psnr", "rmse")


def _one_sigma(truth: np.ndarray, recon: np.ndarray, mask: np.ndarray | None, sigma: float, skip: int,
               ssim_score: bool) -> dict[str, float]:  # fmt: skip
    out = {
        "pixel_correlation": movie_correlation(truth, recon, mask, sigma, skip),
        "frame_correlation": frame_correlation(truth, recon, mask, sigma, skip),
    }
    if ssim_score:
        out["ssim"] = ssim(truth, recon, mask, sigma, skip)
    out["psnr"] = psnr(truth, recon, mask, sigma, skip)
    out["rmse"] = rmse(truth, recon, mask, sigma, skip)
    return out


def movie_metrics(
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray | None = None,
    sigma: float = SMOOTH_SIGMA,
    skip: int = SKIP_FRAMES,
    ssim_score: bool = True,
) -> dict[str, Any]:
    """Every metric with the post-smoothing `sigma` (the paper's 0.5 by default), the sigma itself, and under
    "unsmoothed" the same metrics without smoothing. Keys: `METRICS` (ssim only when `ssim_score`)."""
    out: dict[str, Any] = _one_sigma(truth, recon, mask, sigma, skip, ssim_score)
    out["smoothing_sigma"] = float(sigma)
    out["unsmoothed"] = _one_sigma(truth, recon, mask, 0.0, skip, ssim_score) if sigma > 0 else dict(out)
    out["unsmoothed"].pop("smoothing_sigma", None)
    return out


def mean_metrics(per_movie: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The mean over movies of `movie_metrics` dicts (nested "unsmoothed" too; non-numbers taken as is)."""
    out: dict[str, Any] = {}
    for key, first in per_movie[0].items():
        if isinstance(first, dict):
            out[key] = mean_metrics([p[key] for p in per_movie])
        elif key == "smoothing_sigma" or not isinstance(first, (int, float)):
            out[key] = first
        else:
            out[key] = float(np.mean([p[key] for p in per_movie]))
    return out


def spread(values: Sequence[float], target_half_width: float = 0.01) -> dict[str, Any]:
    """Mean, per-movie values, sample SD and the 95 % t-interval of the mean over movies; and how many movies
    the same SD would need for a half-width of `target_half_width` (normal approximation)."""
    v = np.asarray(values, dtype=np.float64)
    n = int(v.size)
    if n == 0:
        raise MetricsError("spread: no values")
    mean = float(v.mean())
    out: dict[str, Any] = {"mean": round(mean, 4), "n": n, "per_movie": [round(float(x), 4) for x in v]}
    if n < 2:
        return {**out, "sd": None, "ci95": None, "ci95_half_width": None, "movies_for_target": None}
    from scipy.stats import t as student_t

    sd = float(v.std(ddof=1))
    half = float(student_t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    return {
        **out,
        "sd": round(sd, 4),
        "ci95": [round(mean - half, 4), round(mean + half, 4)],
        "ci95_half_width": round(half, 4),
        "target_half_width": target_half_width,
        "movies_for_target": math.ceil((1.96 * sd / target_half_width) ** 2),
    }
