"""The optimiser's update, in one place: offline (decoder/reconstruct/offline.py) and streaming
(decoder/reconstruct/streaming.py) both call it; only what counts as "the step number" differs (the
iteration offline, each frame's own age when streaming, since a frame joins the optimisation when it arrives).

Per step, given the movie's gradient (mean over the windows covering each frame):
1. spatial Gaussian blur (`grad_blur` px; 0 = the paper's none), times the optimisation mask, clipped to
   +-`clip`;
2. first-moment Adam: m = beta m + (1 - beta) g, bias-corrected m / (1 - beta^age), step lr_age * m_hat with
   lr_age = lr * min(1, age / warmup) (linear warm-up), then the movie is clipped to [0, 255].
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    """The update's settings and their defaults, the paper's constants, defined once: OfflineConfig and
    StreamingConfig extend this class (streaming changes only the blur's default)."""

    lr: float = 1000.0
    warmup: int = 10  # iterations (offline) or steps of a frame's age (streaming) of linear warm-up
    beta: float = 0.9
    clip: float = 1.0
    #: each window's input gradient is divided by its L2 norm + norm_eps before the windows are averaged
    norm_eps: float = 1e-6
    grad_blur: float = 0.0  # spatial Gaussian sigma (px) on each step's gradient; 0 = the paper's (none)

    def update_error(self) -> str | None:
        """What is wrong with these settings, or None (the configs raise it as their own error)."""
        if self.warmup < 0 or not 0 <= self.beta < 1 or self.lr <= 0 or self.clip <= 0 or self.norm_eps < 0:
            return (f"bad optimiser settings: lr={self.lr} warmup={self.warmup} beta={self.beta} clip={self.clip} "
                    f"norm_eps={self.norm_eps}")
        if self.grad_blur < 0:
            return f"grad_blur must be >= 0, got {self.grad_blur}"
        return None


def blur_gradient(g: np.ndarray, sigma: float) -> np.ndarray:
    """Spatial Gaussian blur of a (..., H, W) gradient (sigma 0: unchanged, the same array).

    Why (not in the paper): an encoder with a strided stem has a gridded, pixel-noisy input gradient;
    a blur of about the stride keeps the picture and drops the grid (`neurocine bench quality` measures it).
    Two small matrix products: faster here than scipy's filter on (T, 36, 64), and the same numbers as
    scipy.ndimage.gaussian_filter(mode="nearest", truncate=3) (tests/test_reconstruct_offline.py).
    """
    if sigma <= 0:
        return g
    h, w = g.shape[-2:]
    return np.matmul(np.matmul(_blur_matrix(h, sigma), g), _blur_matrix(w, sigma).T)


@functools.lru_cache(maxsize=16)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float32: a 1-D Gaussian blur (truncated at 3 sigma, edges repeated) as a matrix product."""
    radius = max(1, int(3 * sigma + 0.5))  # scipy.ndimage.gaussian_filter's rule for truncate=3
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    m = np.zeros((n, n), np.float64)
    for i in range(n):
        for k, tap in zip(range(-radius, radius + 1), taps, strict=True):
            m[i, min(max(i + k, 0), n - 1)] += tap
    return m.astype(np.float32)


def prepare_gradient(g: np.ndarray, mask: np.ndarray | float, cfg: UpdateSettings) -> np.ndarray:
    """Step 1: blur, mask, clip (in place where it can; returns the prepared gradient)."""
    g = blur_gradient(g, cfg.grad_blur)
    g *= mask
    np.clip(g, -cfg.clip, cfg.clip, out=g)
    return g


def momentum_update(video: np.ndarray, m: np.ndarray, g: np.ndarray, age: int | np.ndarray,
                    cfg: UpdateSettings) -> None:
    """Step 2, in place on `video` and `m` ((F, H, W) float32): `age` is the step number, one for all frames
    (offline) or one per frame ((F,), streaming), counted from 1."""
    m *= np.float32(cfg.beta)
    m += np.float32(1.0 - cfg.beta) * g
    a = np.asarray(age, np.float64)
    lr = cfg.lr * (np.minimum(1.0, a / cfg.warmup) if cfg.warmup else np.ones_like(a))
    scale = (lr / (1.0 - cfg.beta**a)).astype(np.float32)
    video -= (scale[:, None, None] if scale.ndim else scale) * m
    np.clip(video, 0.0, 255.0, out=video)
