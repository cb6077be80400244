"""`neurocine view`: a live pyqtgraph window of the decoded movie beside the true stimulus.

It is its own process and only consumes streams, so the GUI can never block the decoder. A Qt
timer at the frame rate drains the sockets without waiting and draws only the latest frame, with
fixed 0..255 levels (no auto-levelling, which would make the movie flicker and costs time).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import time
from typing import Any

import numpy as np

from decoder.metrics import corr

TRUTH_MEMORY = 900  # stimulus frames kept to match decoded frames (30 s at 30 Hz)
HISTORY = 300  # points in the running correlation plot


class ViewerState:
    """What the window shows, kept apart from Qt so it can be tested and reused headless."""

    def __init__(self) -> None:
        self.decoded: Any = None  # latest final DecodedFrame
        self.truth: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.truth_session: str | None = None
        self.correlations: collections.deque[tuple[int, float]] = collections.deque(maxlen=HISTORY)
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=HISTORY)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=60)
        self.frames_shown = 0
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

    def on_decoded(self, d: Any, now_ns: int) -> None:
        if not d.final:
            return
        if d.session_id != self._decoded_session:
            self._decoded_session, self._last_seq = d.session_id, None
            self.correlations.clear()
        if self._last_seq is not None and d.seq > self._last_seq + 1:
            self.decoded_missing += d.seq - self._last_seq - 1
        self._last_seq = d.seq if self._last_seq is None else max(self._last_seq, d.seq)
        self.decoded = d
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

    def summary(self, drops_on_wire: int = 0) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        corr = np.array([c for _, c in self.correlations]) if self.correlations else np.array([np.nan])
        return {
            "decoded_frames": self.decoded_received,
            "last_seq": None if self.decoded is None else self.decoded.seq,
            "latency_ms_p50": round(float(np.nanmedian(lat)), 2),
            "frame_rate_hz": round(self.frame_rate(), 2),
            "drops": int(self.decoded_missing + drops_on_wire),
            "pixel_correlation_mean": round(float(np.nanmean(corr)), 4) if self.correlations else None,
        }


def register(sub: Any) -> None:
    from streams.cli import add_verb

    p = add_verb(sub, "view", "live viewer of a decoded stream (pyqtgraph), with the true stimulus beside it",
                 "neurocine view --connect tcp://127.0.0.1:5556 --truth tcp://127.0.0.1:5555\n"
                 "neurocine view --connect tcp://127.0.0.1:5556 --screenshot out/view.png --frames 60")
    p.add_argument("--connect", default="tcp://127.0.0.1:5556", help="the decode service's endpoint")
    p.add_argument("--truth", help="the rig/replay endpoint whose frames carry the true stimulus")
    p.add_argument("--rate", type=float, default=30.0, help="redraw rate in Hz (default 30)")
    p.add_argument("--scale", type=int, default=6, help="screen pixels per movie pixel")
    p.add_argument("--screenshot", help="render offscreen, save a PNG after --frames decoded frames, and exit")
    p.add_argument("--frames", type=int, default=30, help="decoded frames to wait for before --screenshot")
    p.add_argument("--timeout", type=float, default=60.0, help="give up on --screenshot after this many seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    if args.screenshot or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        if not args.screenshot:
            print("view: no display found; rendering offscreen (use --screenshot to save what it draws)",
                  file=sys.stderr)
    try:
        import pyqtgraph  # noqa: F401
    except ImportError as e:
        print(f"view: needs pyqtgraph and PySide6-Essentials: pip install 'neurocine[view]' ({e})", file=sys.stderr)
        return 2
    from decoder.viewer_window import ViewerWindow

    window = ViewerWindow(args.connect, args.truth, rate_hz=args.rate, scale=args.scale)
    if args.screenshot:
        ok = window.run_until(args.frames, args.timeout)
        window.save_png(args.screenshot)
        summary = window.summary()
        summary["screenshot"] = args.screenshot
        print(json.dumps(summary))
        window.close_streams()
        if not ok:
            print(f"view: only {summary['decoded_frames']} decoded frames arrived within {args.timeout:g} s "
                  f"from {args.connect}", file=sys.stderr)
            return 1
        return 0
    t0 = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        window.exec()
    window.close_streams()
    print(json.dumps({**window.summary(), "seconds": round(time.monotonic() - t0, 1)}))
    return 0
