"""The viewer, for real: decoded and truth streams over loopback, a Qt widget rendered offscreen."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from neurocine.decoder.analysis.metrics import corr
from neurocine.decoder.live.decoded import DecodedFrame, encode_decoded_frame
from neurocine.decoder.view.state import ViewerState
from neurocine.streams.protocol import SessionHeader
from neurocine.streams.session import new_session_id
from neurocine.streams.transport import Publisher
from tests.conftest import REPO, free_port


def pattern(seq: int) -> np.ndarray:
    """A bright (never black) frame with structure: vertical bars that drift with seq."""
    x = np.arange(64)[None, :]
    y = np.arange(36)[:, None]
    return (140 + 100 * np.sin(2 * np.pi * (x + seq) / 16) * np.cos(2 * np.pi * y / 36)).clip(40, 255).astype(np.uint8)


def publish_streams(decoded_ep: str, truth_ep: str, stop: threading.Event, n: int = 400, rate_hz: float = 60.0) -> None:
    """Truth frames and their decoded twins at `rate_hz` (absolute deadlines), once the viewer subscribed."""
    with Publisher(decoded_ep) as dec, Publisher(truth_ep) as truth:
        dec.wait_subscribers(1, 30)
        truth.wait_subscribers(1, 30)
        sid = new_session_id()
        truth.begin(SessionHeader(sid, "replay", "m", 30.0, np.arange(3, dtype=np.int64), stimulus_shape=(36, 64)))
        t0 = time.monotonic()
        for seq in range(n):
            if stop.is_set():
                return
            t = time.time_ns()
            truth.send_frame(seq, t, np.zeros(3, np.float32), np.zeros(4, np.float32), pattern(seq))
            dec.send_raw(encode_decoded_frame(DecodedFrame(sid, seq, t, t, t, time.time_ns(), 8, True, pattern(seq))))
            truth.tick()
            dec.tick()
            time.sleep(max(0.0, t0 + (seq + 1) / rate_hz - time.monotonic()))


def decoded_panel(grey: np.ndarray) -> np.ndarray:
    """The left black panel: columns up to the first light gap between the two movie panels."""
    top = grey[: int(grey.shape[0] * 0.6)]
    has_black = (grey[int(grey.shape[0] * 0.05) : int(grey.shape[0] * 0.5)] < 10).any(axis=0)
    first = int(np.argmax(has_black))
    last = first + int(np.argmin(has_black[first:]))  # first column after it with no black: the gap
    row_black = (top[:, first:last] < 10).any(axis=1)
    r0 = int(np.argmax(row_black))
    r1 = r0 + int(np.argmin(row_black[r0:]))  # the light gap above the correlation plot
    return top[r0:r1, first:last]


def bbox_of_bright(panel: np.ndarray, thresh: int = 30) -> tuple[slice, slice]:
    """The movie's rectangle: rows and columns that are mostly non-black."""
    bright = panel > thresh
    rows = np.where(bright.mean(axis=1) > 0.5)[0]
    cols = np.where(bright[rows].mean(axis=0) > 0.5)[0]
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def test_offscreen_screenshot_shows_the_decoded_frame(tmp_path: Path) -> None:
    dec_ep, truth_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    stop = threading.Event()
    th = threading.Thread(target=publish_streams, args=(dec_ep, truth_ep, stop), daemon=True)
    th.start()
    png = tmp_path / "view.png"
    try:
        r = subprocess.run([sys.executable, "-m", "neurocine", "view", "--connect", dec_ep, "--truth", truth_ep,
                            "--screenshot", str(png), "--frames", "40", "--timeout", "60"],
                           cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    finally:
        stop.set()
        th.join(10)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["decoded_frames"] >= 40 and summary["pixel_correlation_mean"] > 0.99
    from PySide6.QtGui import QImage

    img = QImage(str(png)).convertToFormat(QImage.Format.Format_Grayscale8)
    w, h = img.width(), img.height()
    grey = np.frombuffer(img.constBits(), np.uint8).reshape(h, img.bytesPerLine())[:, :w]
    assert grey.std() > 10  # not blank
    left = decoded_panel(grey)
    rows, cols = bbox_of_bright(left)
    shown = left[rows, cols].astype(np.float64)
    # downsample what is on screen to 36x64 and compare with the frame that was sent
    ys = (np.arange(36) + 0.5) * shown.shape[0] / 36
    xs = (np.arange(64) + 0.5) * shown.shape[1] / 64
    small = shown[ys.astype(int)][:, xs.astype(int)]
    best = max(corr(small, pattern(summary["last_seq"] - k)) for k in range(3))
    assert best > 0.95


def test_state_matches_truth_by_sequence_number_and_counts_drops() -> None:
    s = ViewerState()
    for seq in range(5):
        s.on_truth("a", seq, pattern(seq))
    for seq in (0, 1, 4):
        s.on_decoded(DecodedFrame("a", seq, 0, 0, 0, 0, 8, True, pattern(seq)), now_ns=10_000_000)
    s.on_decoded(DecodedFrame("a", 5, 0, 0, 0, 0, 8, False, pattern(0)), now_ns=10_000_000)  # provisional: ignored
    summ = s.summary()
    assert summ["decoded_frames"] == 3 and summ["drops"] == 2 and summ["last_seq"] == 4
    assert summ["pixel_correlation_mean"] == pytest.approx(1.0)


def test_state_says_when_the_decoded_stream_of_a_live_session_stops_but_not_after_its_end() -> None:
    from neurocine.streams.stall import StallConfig

    s = ViewerState(stall=StallConfig(stall_after_s=1.0))
    for seq in range(3):
        s.on_decoded(DecodedFrame("a", seq, 0, 0, 0, 0, 8, True, pattern(seq)), now_ns=0, now_s=10.0 + seq / 30)
    s.watch.check(10.5)
    assert not s.summary()["stalled"]
    s.watch.check(11.2)  # 1.1 s without a decoded frame while the session is live
    assert s.summary()["stalled"] and s.summary()["stalls"] == 1
    s.on_decoded(DecodedFrame("a", 3, 0, 0, 0, 0, 8, False, pattern(3)), now_ns=0, now_s=11.5)  # provisional counts
    assert not s.summary()["stalled"] and s.summary()["stalled_s"] == pytest.approx(1.43, abs=0.01)
    # the decoder flushes the session's last frames when it ends: silence after them is normal
    s.on_decoded(DecodedFrame("a", 4, 0, 0, 0, 0, 0, True, pattern(4), flushed="end"), now_ns=0, now_s=11.6)
    s.watch.check(60.0)
    assert not s.summary()["stalled"] and s.summary()["stalls"] == 1
