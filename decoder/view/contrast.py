"""Display contrast for decoded frames: a running percentile window, for the eyes only.

Why: the first guess shrinks toward the mean frame (a ridge regression), so a decoded frame that correlates
0.4 with the truth spans a fraction of the grey levels and looks uniformly grey beside it. Stretching each
frame between the low and high percentiles of the last `window` frames makes what it says visible, without
flicker (the levels follow the stream, not each frame) and without inventing structure (a monotone map of the
grey levels: correlation is unchanged). Applied only where a frame is shown (the viewer, the demo's video);
every message and file keeps the raw frames.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class StretchConfig:
    """Percentiles of the running window mapped to black and white, and the window's length in frames."""

    low: float = 1.0
    high: float = 99.0
    window: int = 90  # 3 s at 30 Hz: slow enough not to pump with each frame

    def label(self) -> str:
        return f"contrast stretched for display ({self.low:g}-{self.high:g} % of the last {self.window} frames)"


#: What the viewer and the demo's video use unless told --raw-contrast.
DEFAULT_STRETCH = StretchConfig()


class ContrastStretch:
    """Maps frames to 0..255 between the running window's low and high percentiles (each frame's own
    percentiles, averaged over the window); a flat window leaves frames as they are."""

    def __init__(self, config: StretchConfig = DEFAULT_STRETCH) -> None:
        self.config = config
        self._lows: collections.deque[float] = collections.deque(maxlen=config.window)
        self._highs: collections.deque[float] = collections.deque(maxlen=config.window)

    def reset(self) -> None:
        """A new session: its levels are its own."""
        self._lows.clear()
        self._highs.clear()

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        f = np.asarray(frame, np.float32)
        lo, hi = np.percentile(f, [self.config.low, self.config.high])
        self._lows.append(float(lo))
        self._highs.append(float(hi))
        lo, hi = float(np.mean(self._lows)), float(np.mean(self._highs))
        if hi - lo < 1.0:
            return np.asarray(frame, np.uint8)
        return np.clip(np.rint((f - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
