"""Window layout of the published method: 32-frame windows, stride 8, the last aligned to the movie's end.

gather_windows cuts a (T, ...) movie into a (B, W, ...) batch with one fancy index (no per-window loop);
fold_windows sums (or averages) per-window arrays back onto the frames with W vectorised adds (window
starts are distinct, so `acc[starts + j] += x[:, j]` never adds twice into one frame within one add).
"""

from __future__ import annotations

import numpy as np

WINDOW = 32
STRIDE = 8


class WindowError(ValueError):
    """A movie too short for the window, or a bad window/stride."""


def window_starts(n_frames: int, window: int = WINDOW, stride: int = STRIDE) -> np.ndarray:
    """First frame of each window: 0, stride, 2 stride, ... and a last one at n_frames - window."""
    if window < 1 or stride < 1:
        raise WindowError(f"window and stride must be >= 1, got window={window} stride={stride}")
    if n_frames < window:
        raise WindowError(f"movie has {n_frames} frames, fewer than one window of {window}")
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return np.asarray(starts, dtype=np.int64)


def gather_windows(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """(T, ...) -> (B, window, ...) copies of x[start:start + window]."""
    idx = np.asarray(starts)[:, None] + np.arange(window)[None, :]
    return x[idx]


def fold_windows(x: np.ndarray, starts: np.ndarray, n_frames: int, average: bool = True) -> np.ndarray:
    """(B, W, ...) per-window values -> (n_frames, ...) sum (or mean over covering windows) per frame.

    Frames no window covers get 0.
    """
    w = x.shape[1]
    acc = np.zeros((n_frames, *x.shape[2:]), dtype=x.dtype)
    starts = np.asarray(starts)
    for j in range(w):
        acc[starts + j] += x[:, j]
    if average:
        count = coverage(starts, w, n_frames)
        shape = (n_frames,) + (1,) * (x.ndim - 2)
        acc /= np.maximum(count, 1).reshape(shape).astype(x.dtype)
    return acc


def coverage(starts: np.ndarray, window: int, n_frames: int) -> np.ndarray:
    """How many windows cover each frame."""
    count = np.zeros(n_frames, dtype=np.int64)
    for s in np.asarray(starts):
        count[s : s + window] += 1
    return count
