"""The Qt side of the viewer: widgets, the redraw timer and socket draining (imports Qt)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from neurocine.decoder.live.decoded import as_decoded_frame
from neurocine.decoder.view.contrast import DEFAULT_STRETCH, ContrastStretch, StretchConfig
from neurocine.decoder.view.state import ViewerState
from neurocine.streams.protocol import Decoded, Frame, ProtocolError
from neurocine.streams.stall import DEFAULT_STALL, StallConfig
from neurocine.streams.transport import Subscriber

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)
GREY = 128
#: The correlation plot and the readout redraw at this rate, not per frame: the plot is most of a redraw's cost
#: (measured under Xvfb: 11.6 ms per frame with it, 3.3 ms without), and a running curve needs no 30 Hz.
STATS_REDRAW_HZ = 5.0


class ViewerWindow(QtWidgets.QWidget):
    """Decoded | truth images, a running correlation plot and latency / rate / drop readouts."""

    def __init__(self, connect: str, truth: str | None, rate_hz: float = 30.0, scale: int = 6,
                 provisional: bool = False, stall: StallConfig = DEFAULT_STALL,
                 stretch: StretchConfig | None = DEFAULT_STRETCH) -> None:
        self.app = pg.mkQApp("neurocine view")
        super().__init__()
        self.setWindowTitle(f"neurocine view: {connect}")
        self.state = ViewerState(rate_hz, provisional, stall, where=connect)
        # the decoded stream's silences are the state's to judge (it has no sessions); the truth's, its subscriber's
        self.decoded_sub = Subscriber(connect, topics=[b"decoded", b"heartbeat"], stall=None, log_name="view")
        self.truth_sub = Subscriber(truth, topics=[b"session", b"frame", b"end"], stall=stall,
                                    log_name="view") if truth else None

        #: decoded frames are shown contrast-stretched (view/contrast.py) unless asked not to; messages stay raw
        self.stretch = ContrastStretch(stretch) if stretch is not None else None
        title = "decoded (provisional: newest estimate)" if provisional else "decoded"
        title += f"<br><small>{stretch.label() if stretch is not None else 'raw grey levels'}</small>"
        layout = QtWidgets.QVBoxLayout(self)
        row = QtWidgets.QHBoxLayout()
        self.decoded_item = self._add_image(row, title, scale)
        self.truth_item = self._add_image(row, "true stimulus" if truth else "true stimulus (no --truth)", scale)
        layout.addLayout(row, stretch=3)

        self.plot = pg.PlotWidget(title="pixel correlation, decoded vs true (per frame)")
        self.plot.setYRange(-0.2, 1.0)
        self.plot.setLabel("bottom", "frame")
        self.plot.showGrid(y=True, alpha=0.3)
        self.curve = self.plot.plot(pen=pg.mkPen("y", width=2))
        self.plot.setMinimumHeight(160)
        layout.addWidget(self.plot, stretch=2)

        self.readout = QtWidgets.QLabel("waiting for decoded frames ...")
        self.readout.setStyleSheet("font-family: monospace; font-size: 12pt;")
        layout.addWidget(self.readout)

        self.timer = QtCore.QTimer(self)
        self.timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.tick)
        self.timer.start(max(1, int(1000 / (4 * rate_hz))))  # 4x the frame rate: see neurocine.decoder.view.cli
        self._drawn: tuple[str, int] | None = None  # (session, seq) of the frame on screen
        self._stats_drawn_s = 0.0
        self.resize(2 * 64 * scale + 60, 36 * scale + 320)
        self.show()

    def _add_image(self, row: QtWidgets.QHBoxLayout, title: str, scale: int) -> pg.ImageItem:
        """One movie panel (its own graphics widget, so both panels get the same size)."""
        panel = pg.GraphicsLayoutWidget()
        panel.setBackground("k")
        panel.addLabel(title, row=0, col=0, color="w")
        view = panel.addViewBox(row=1, col=0)
        view.setAspectLocked(True)
        view.invertY(True)
        view.setMouseEnabled(False, False)
        item = pg.ImageItem(np.full((36, 64), GREY, np.uint8), levels=(0, 255))
        view.addItem(item)
        panel.setMinimumSize(64 * scale + 20, 36 * scale + 40)
        row.addWidget(panel, stretch=1)
        return item

    # ------------------------------------------------------------------ socket draining
    def _drain(self) -> None:
        if self.truth_sub is not None:
            while (m := self.truth_sub.recv(timeout_s=0)) is not None:
                if isinstance(m, Frame) and m.stimulus is not None:
                    self.state.on_truth(m.session_id, m.seq, m.stimulus)
        while (m := self.decoded_sub.recv(timeout_s=0)) is not None:
            if isinstance(m, Decoded):
                try:
                    d = as_decoded_frame(m)
                except ProtocolError:
                    continue  # counted by nothing else: not a decoded frame; ignore, never crash the GUI
                self.state.on_decoded(d, time.time_ns())
        self.state.watch.check(time.monotonic())  # nothing more waits: is the decoded stream silent?

    # ------------------------------------------------------------------ drawing
    def tick(self) -> None:
        self._drain()
        self.draw(self.state.next_to_show(time.monotonic()))
        if self.state.watch.stalled and time.monotonic() - self._stats_drawn_s >= 1 / STATS_REDRAW_HZ:
            self._stats_drawn_s = time.monotonic()
            self.draw_stats()  # no new frame redraws the readout during a stall: it must still say so

    def draw(self, d: Any) -> None:
        """Put decoded frame `d` (and its true stimulus) on screen; the stats at their own slower rate."""
        if d is None or (d.session_id, d.seq) == self._drawn:
            return
        if self._drawn is not None and self._drawn[0] != d.session_id and self.stretch is not None:
            self.stretch.reset()
        self._drawn = (d.session_id, d.seq)
        shown = self.stretch(d.frame) if self.stretch is not None else d.frame
        self.decoded_item.setImage(shown, autoLevels=False, levels=(0, 255))
        truth = self.state.truth_for(d)
        if truth is not None:
            self.truth_item.setImage(truth, autoLevels=False, levels=(0, 255))
        self.state.on_drawn(time.monotonic())
        if time.monotonic() - self._stats_drawn_s >= 1 / STATS_REDRAW_HZ:
            self._stats_drawn_s = time.monotonic()
            self.draw_stats()

    def draw_stats(self) -> None:
        """The running correlation curve and the readout line."""
        if self.state.correlations:
            xs, ys = zip(*self.state.correlations, strict=True)
            self.curve.setData(np.array(xs), np.nan_to_num(np.array(ys)))
        s = self.summary()
        corr = "-" if s["pixel_correlation_mean"] is None else f"{s['pixel_correlation_mean']:.3f}"
        p50 = s["latency_ms"]["p50"]
        latency = "-" if p50 is None else f"{p50:.1f}"
        stalled = f"   STALLED {s['stalled_for_s']:.1f} s: no decoded frame" if s["stalled"] else ""
        self.readout.setText(
            f"frame {s['last_seq']}   latency {latency} ms (p50, publish->shown)   "
            f"{s['frame_rate_hz']:.1f} Hz   drops {s['drops']}   mean r {corr}{stalled}"
        )

    def summary(self) -> dict[str, Any]:
        wire = self.decoded_sub.stats
        out = self.state.summary(drops_on_wire=wire.missing)
        if self.truth_sub is not None:
            truth = self.truth_sub.stats
            out["truth_stalls"], out["truth_stalled_s"] = truth.stalls, truth.stalled_s
        return out

    # ------------------------------------------------------------------ offscreen use
    def run_until(self, n_frames: int, timeout_s: float) -> bool:
        """Process events until `n_frames` decoded frames were drawn (True) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.app.processEvents()
            self._drain()
            if self.state.decoded_received >= n_frames:
                # no more ticks: one would draw newer frames while the screenshot is taken, and the summary would
                # name a frame other than the one on screen (seen on a loaded machine: correlation -0.38)
                self.timer.stop()
                self.draw(self.state.take_latest())
                self.draw_stats()
                self.app.processEvents()
                return True
            time.sleep(0.005)
        return False

    def save_png(self, path: str) -> None:
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.app.processEvents()
        if not self.grab().save(str(path)):
            raise OSError(f"could not write {path}")

    def exec(self, seconds: float | None = None) -> None:
        """Run the window until it is closed, Ctrl-C, or `seconds` have passed."""
        import signal

        # Ctrl-C and SIGTERM (demo, systemd) quit the event loop so the summary is still printed; the timer
        # runs Python every few ms, so the handler runs promptly.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.app.quit())
        if seconds is not None:
            QtCore.QTimer.singleShot(int(seconds * 1000), self.app.quit)
        self.app.exec()

    def close_streams(self) -> None:
        self.timer.stop()
        self.decoded_sub.close()
        if self.truth_sub is not None:
            self.truth_sub.close()
