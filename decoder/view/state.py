"""What the viewer knows, apart from Qt: the frames waiting to be shown, their pacing, the truth they are
matched with and the summary printed at the end (pure Python + numpy, so it is tested without a window)."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from neurocine.decoder.analysis.metrics import corr
from neurocine.decoder.live.decoded import follow
from neurocine.streams.commandline import get_logger
from neurocine.streams.stall import DEFAULT_STALL, StallConfig, StallWatch
from neurocine.streams.summary import percentiles

TRUTH_MEMORY = 900  # stimulus frames kept to match decoded frames (30 s at 30 Hz)
HISTORY = 300  # points in the running correlation plot
#: Decoded frames waiting to be shown before the oldest are skipped (0.5 s at 30 Hz). A decoder that falls
#: behind for a moment publishes its backlog in a burst (on 2 loaded cores 62 % of decoded frames came < 5 ms
#: after the previous one); showing only the newest would draw ~11 of 30 frames per second, so frames are
#: paced out one per frame period instead, and skipped only when the queue would delay the view by more.
MAX_PENDING = 15
#: A queued frame is shown once this fraction of a frame period has passed since the previous one, so the
#: display catches up after a burst (up to 1/0.75 = 1.33x the stream's rate) without falling behind.
PACE = 0.75


class ViewerState:
    """What the window shows, kept apart from Qt so it can be tested and reused headless."""

    def __init__(self, frame_rate_hz: float = 30.0, provisional: bool = False, stall: StallConfig = DEFAULT_STALL,
                 where: str = "") -> None:
        self.period_s = 1.0 / frame_rate_hz
        #: the decoded stream going silent while a session is live is logged (and shown, and in the summary)
        self.watch = StallWatch(stall, get_logger("view"), where)
        #: show provisional frames (each frame's estimate as it arrives, `decode --provisional`) instead of final ones
        self.provisional = provisional
        self.decoded: Any = None  # latest final DecodedFrame
        self.pending: collections.deque[Any] = collections.deque()  # final frames not yet shown, oldest first
        self.skipped = 0  # decoded frames never shown because the queue was full
        self.truth: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.truth_session: str | None = None
        self.correlations: collections.deque[tuple[int, float]] = collections.deque(maxlen=HISTORY)
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=HISTORY)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=60)
        self.frames_shown = 0  # redraws that put a new decoded frame on screen
        self.shown_per_second: collections.Counter[int] = collections.Counter()  # whole monotonic second -> count
        self._first_draw_s: float | None = None
        self._last_draw_s = 0.0
        self.decoded_received = 0
        self.decoded_missing = 0
        self._last_seq: int | None = None
        self._decoded_session: str | None = None

    def on_truth(self, session_id: str, seq: int, stimulus: np.ndarray) -> None:
        if session_id != self.truth_session:
            self.truth.clear()
            self.truth_session = session_id
        self.truth[seq] = np.array(stimulus)
        while len(self.truth) > TRUTH_MEMORY:
            self.truth.popitem(last=False)

    def on_decoded(self, d: Any, now_ns: int, now_s: float | None = None) -> None:
        follow(self.watch, d, time.monotonic() if now_s is None else now_s)  # every kind counts as the stream
        if d.final == self.provisional:
            return
        if d.session_id != self._decoded_session:
            self._decoded_session, self._last_seq = d.session_id, None
            self.correlations.clear()
        if self._last_seq is not None and d.seq > self._last_seq + 1:
            self.decoded_missing += d.seq - self._last_seq - 1
        self._last_seq = d.seq if self._last_seq is None else max(self._last_seq, d.seq)
        self.decoded = d
        self.pending.append(d)
        while len(self.pending) > MAX_PENDING:
            self.pending.popleft()
            self.skipped += 1
        self.decoded_received += 1
        self.latencies_ms.append((now_ns - d.t_pub_ns) / 1e6)
        self.arrivals.append(now_ns / 1e9)
        truth = self.truth_for(d)
        if truth is not None and truth.shape == d.frame.shape:
            self.correlations.append((d.seq, corr(d.frame, truth)))  # one frame's pixels

    def truth_for(self, d: Any) -> np.ndarray | None:
        if d is None or d.session_id != self.truth_session:
            return None
        return self.truth.get(d.seq)

    def frame_rate(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        span = self.arrivals[-1] - self.arrivals[0]
        return (len(self.arrivals) - 1) / span if span > 0 else 0.0

    def next_to_show(self, now_s: float) -> Any:
        """The next decoded frame to put on screen now (paced at the frame rate), or None."""
        if not self.pending or now_s - self._last_draw_s < PACE * self.period_s:
            return None
        return self.pending.popleft()

    def take_latest(self) -> Any:
        """The newest decoded frame, dropping the queue (a screenshot shows the newest, not a paced one)."""
        self.pending.clear()
        return self.decoded

    def on_drawn(self, now_s: float) -> None:
        """A redraw put a new decoded frame on screen."""
        self.frames_shown += 1
        self.shown_per_second[int(now_s)] += 1
        if self._first_draw_s is None:
            self._first_draw_s = now_s
        self._last_draw_s = now_s

    def shown_rate(self, window_s: int = 10) -> tuple[float, float | None]:
        """(mean, lowest over any `window_s` whole seconds) rate of new frames put on screen, in Hz."""
        if self._first_draw_s is None or self._last_draw_s <= self._first_draw_s:
            return 0.0, None
        mean = (self.frames_shown - 1) / (self._last_draw_s - self._first_draw_s)
        first, last = int(self._first_draw_s) + 1, int(self._last_draw_s) - 1  # whole seconds only
        if last - first + 1 < window_s:
            return mean, None
        counts = np.array([self.shown_per_second.get(k, 0) for k in range(first, last + 1)])
        sums = np.convolve(counts, np.ones(window_s, int), mode="valid")
        return mean, float(sums.min() / window_s)

    def summary(self, drops_on_wire: int = 0) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        corr = np.array([c for _, c in self.correlations]) if self.correlations else np.array([np.nan])
        shown_mean, shown_min = self.shown_rate()
        return {
            "decoded_frames": self.decoded_received,
            "frames_shown": self.frames_shown,
            "last_seq": None if self.decoded is None else self.decoded.seq,
            "latency_ms": percentiles(lat, 2),  # publish -> shown
            "frame_rate_hz": round(self.frame_rate(), 2),
            "shown_hz_mean": round(shown_mean, 2),
            "shown_hz_min_10s": None if shown_min is None else round(shown_min, 2),
            "drops": int(self.decoded_missing + drops_on_wire),
            "skipped_on_screen": self.skipped,
            "pixel_correlation_mean": round(float(np.nanmean(corr)), 4) if self.correlations else None,
            **self.watch.as_dict(),
        }
