"""Deterministic sample inputs (tests, benchmarks, export examples): a smooth natural-ish movie, behaviour."""

from __future__ import annotations

import numpy as np


def random_smooth_movies(batch: int, frames: int, seed: int) -> np.ndarray:
    """(batch, frames, 36, 64) float32 in 0..255: drifting gratings plus a moving bright blob."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    y, x = np.mgrid[0:36, 0:64]
    movies = []
    for _ in range(batch):
        img = np.zeros((frames, 36, 64))
        for _ in range(3):
            theta, freq, speed = rng.uniform(0, np.pi), rng.uniform(0.05, 0.25), rng.uniform(-0.3, 0.3)
            phase = freq * (x * np.cos(theta) + y * np.sin(theta))[None] + speed * t
            img += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * phase)
        cy, cx = rng.uniform(8, 28), rng.uniform(10, 54)
        vy, vx = rng.uniform(-0.5, 0.5, size=2)
        dist2 = (y[None] - cy - vy * t) ** 2 + (x[None] - cx - vx * t) ** 2
        img += 2.0 * np.exp(-dist2 / 40.0)
        img = (img - img.min()) / (img.max() - img.min())
        movies.append(255.0 * img)
    return np.stack(movies).astype(np.float32)


def behaviour(batch: int, frames: int, seed: int) -> np.ndarray:
    """(batch, frames, 4) float32: running speed, pupil dilation, pupil x, pupil y (slow drifts)."""
    rng = np.random.default_rng(seed)
    base = np.array([5.0, 20.0, 30.0, 25.0], dtype=np.float32)
    drift = np.cumsum(rng.normal(0, 0.2, size=(batch, frames, 4)), axis=1)
    return (base + drift).astype(np.float32)
