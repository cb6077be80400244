"""An event detector for the decoded movie: "is the target image on screen?" from correlation with it.

The decoded movie is noisy and blurred (pixel correlation with the truth ~0.2-0.3 per frame, README), so
the detector averages the Pearson correlation between the decoded frame and the target image over the
last `frames` frames (inside an optional region of interest) and fires when that mean crosses
`threshold`; after firing it stays quiet for `refractory` frames. Its hit rate and false alarms against
the known stimulus are measured by `neurocine bench loop`, which is where the defaults come from.
Light: numpy only.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    # Picked from `neurocine bench loop --events 24 --seed 0`'s detector_sweep (final frames, lag 16, a starved
    # decoder: 4 % of its steps ran): 2 frames at 0.25 gave 92 % hits / 8 % false alarms; checked on --seed 1.
    threshold: float = 0.25  # mean correlation that fires
    frames: int = 2  # frames averaged (67 ms at 30 Hz)
    refractory: int = 45  # frames of silence after firing (1.5 s)
    roi: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) of the 36 x 64 frame; None = all


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (0 when either is flat)."""
    x = a.astype(np.float64).ravel() - a.mean()
    y = b.astype(np.float64).ravel() - b.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / den) if den > 0 else 0.0


class TargetDetector:
    """Feed decoded frames in seq order with `update(seq, frame)`; it returns True on the frame that fires."""

    def __init__(self, target: np.ndarray, config: DetectorConfig = DetectorConfig()) -> None:
        if config.frames < 1 or config.refractory < 0:
            raise ValueError(f"detector needs frames >= 1 and refractory >= 0, got {config}")
        self.config = config
        self._roi = (slice(None), slice(None)) if config.roi is None else (
            slice(config.roi[0], config.roi[1]), slice(config.roi[2], config.roi[3]))
        self.target = np.asarray(target)[self._roi]
        if self.target.size < 2 or np.ptp(self.target) == 0:
            raise ValueError("the target image (inside the ROI) must not be flat")
        self._scores: collections.deque[tuple[int, float]] = collections.deque(maxlen=config.frames)
        self._quiet_until = -1
        self.last_mean = 0.0
        self.last_score = 0.0  # this frame's correlation alone

    def reset(self) -> None:
        """Forget the history (a new session: sequence numbers restart)."""
        self._scores.clear()
        self._quiet_until = -1

    def update(self, seq: int, frame: np.ndarray) -> bool:
        if self._scores and seq <= self._scores[-1][0]:
            return False  # not newer than what was seen (a repeat): ignore
        if self._scores and seq != self._scores[-1][0] + 1:
            self._scores.clear()  # a gap: start the average again
        self.last_score = correlation(frame[self._roi], self.target)
        self._scores.append((seq, self.last_score))
        self.last_mean = float(np.mean([s for _, s in self._scores]))
        if len(self._scores) < self.config.frames or seq < self._quiet_until:
            return False
        if self.last_mean >= self.config.threshold:
            self._quiet_until = seq + self.config.refractory
            return True
        return False
