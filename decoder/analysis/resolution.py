"""Scoring the resolution analysis: one reconstruction of a programme of clips, cut back into clips and scored
per grid cell against the truth and against a shuffle (Bauer, Margrie & Clopath, eLife 2026).

Per clip: the paper's pixel correlation (analysis.metrics.corr) between its true frames and its reconstructed
frames (the whole reconstruction post-smoothed first, sigma 0.5 by default), over the eval-mask pixels.
Per cell (x, y):
- `r`: the mean over the cell's original (not inverted) clips;
- noise only: `r_inverted` (an inverted clip against its own truth), `inverted_vs_original` (an inverted
  clip's reconstruction against the *original* truth: the paper finds it anti-correlated, the sign of the
  stimulus is resolved) and `recon_vs_inverted_recon` (the two reconstructions against each other);
- the shuffle test: every reconstruction against the truth of every *other* clip of its cell (another noise
  draw of the same statistics, or another direction of the same grating; never its own inverted copy),
  `null_mean`, `null_sd`, `null_max_abs`, and `beats_shuffle`: the fraction of clips whose r exceeds every one
  of their null values (chance 1 / (nulls + 1)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neurocine.decoder.analysis.metrics import SMOOTH_SIGMA, corr, smooth_movie


def cut(video: np.ndarray, starts: Sequence[int], n_frames: int, sigma: float = SMOOTH_SIGMA) -> list[np.ndarray]:
    """The reconstruction of each clip, after the post-smoothing of the whole programme."""
    smoothed = smooth_movie(video, sigma)
    return [smoothed[s : s + n_frames] for s in starts]


def _r(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return corr(np.asarray(a, np.float64)[:, mask], np.asarray(b, np.float64)[:, mask])


def score_cells(clips: Sequence[Any], recons: Sequence[np.ndarray], mask: np.ndarray | None) -> dict[tuple, dict]:
    """Per cell, keyed (family, x, y) (see the module docstring). clips: neurocine.streams.synthetic.resolution.Clip;
    recons: the reconstruction of each clip."""
    if len(clips) != len(recons):
        raise ValueError(f"{len(clips)} clips but {len(recons)} reconstructions")
    m = np.ones(clips[0].frames.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    cells: dict[tuple, list[int]] = {}
    for i, c in enumerate(clips):
        cells.setdefault((c.family, *c.cell), []).append(i)
    out = {}
    for cell, idx in cells.items():
        own, nulls, beats = [], [], []
        inv, inv_orig, rr = [], [], []
        for i in idx:
            ci = clips[i]
            r = _r(clips[i].frames, recons[i], m)
            if ci.inverted:
                inv.append(r)
                partner = next(j for j in idx if clips[j].instance == ci.instance and not clips[j].inverted)
                inv_orig.append(_r(clips[partner].frames, recons[i], m))
                rr.append(_r(recons[partner], recons[i], m))
                continue
            own.append(r)
            mine = [_r(clips[j].frames, recons[i], m) for j in idx if clips[j].instance != ci.instance]
            nulls += mine
            if mine:
                beats.append(float(r > max(mine)))
        row: dict[str, Any] = {"r": _mean(own), "clips": len(idx)}
        if inv:
            row.update(r_inverted=_mean(inv), inverted_vs_original=_mean(inv_orig), recon_vs_inverted_recon=_mean(rr))
        if nulls:
            n = np.asarray(nulls)
            row.update(null_mean=round(float(n.mean()), 4), null_sd=round(float(n.std()), 4),
                       null_max_abs=round(float(np.abs(n).max()), 4), beats_shuffle=_mean(beats),
                       nulls_per_clip=len(nulls) // max(1, len(own)))  # fmt: skip
        out[cell] = row
    return out


def _mean(v: Sequence[float]) -> float | None:
    return round(float(np.nanmean(v)), 4) if len(v) else None


def grid(cells: dict[tuple, dict], family: str, xs: Sequence[float], ys: Sequence[float], key: str = "r") -> list[list]:
    """A (len(xs), len(ys)) table of one key of one family (None where missing), rows x, columns y."""
    return [[cells.get((family, float(x), float(y)), {}).get(key) for y in ys] for x in xs]
