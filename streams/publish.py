"""Publish from your own acquisition loop: one call per frame, the protocol's bookkeeping done for you.

A rig's acquisition software (motion correction, ROI extraction, deconvolution) ends each frame with N
numbers; :class:`RigPublisher` turns them into wire protocol v1 (docs/protocol.md) on top of
:class:`neurocine.streams.transport.Publisher`: it numbers frames, sends the session header when the session
starts and re-sends it every 0.5 s, sends heartbeats while the loop is idle (a background thread, so a
pipeline that blocks for a second still looks alive), and starts a new session id on `restart()` or
when the neurons change (ROIs re-extracted), so decoders reset instead of mixing two neuron sets.

    from neurocine.streams.publish import RigPublisher
    with RigPublisher("tcp://*:5555", neuron_ids=ids, frame_rate=30.0, mouse_id="M12") as rig:
        for traces in acquisition():          # (N,) float per frame, NaN = neuron not reported
            rig.publish(traces)               # behaviour, acquisition time: optional
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from neurocine.streams.protocol import BEHAVIOUR_CHANNELS, MAX_NEURONS, SOURCES, SessionHeader
from neurocine.streams.session import new_session_id
from neurocine.streams.transport import HEARTBEAT_INTERVAL_S, Publisher

#: How often the background thread wakes to send a due heartbeat or header re-send (s).
TICK_INTERVAL_S = 0.1


class RigPublisher:
    """One live stream of frames for one set of neurons; thread-safe (`publish` and the ticker share a lock).

    `publish(traces, behaviour=None, t_acq_ns=None)` sends one frame and returns its sequence number.
    Bad input (wrong length, +-Inf, an unknown behaviour shape) raises ValueError naming what and which
    frame, and sends nothing: the stream stays valid and the next good frame goes out.
    """

    def __init__(
        self,
        bind: str,
        neuron_ids: Any,
        frame_rate: float,
        mouse_id: str,
        *,
        source: str = "rig",
        stimulus_shape: tuple[int, int] | None = None,
        background_ticks: bool = True,
        publisher: Publisher | None = None,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source {source!r} is not one of {SOURCES}")
        if not (np.isfinite(frame_rate) and 0 < frame_rate <= 10_000):
            raise ValueError(f"frame_rate={frame_rate} must be a positive rate in Hz (<= 10000)")
        if not isinstance(mouse_id, str) or not mouse_id:
            raise ValueError(f"mouse_id must be a non-empty string, got {mouse_id!r}")
        self.frame_rate = float(frame_rate)
        self.mouse_id = mouse_id
        self.source = source
        self.stimulus_shape = stimulus_shape
        self._pub = publisher or Publisher(bind)
        self.endpoint = self._pub.endpoint
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.seq = 0
        self.sessions = 0
        self.header: SessionHeader = self._begin(self._check_ids(neuron_ids))
        self._ticker: threading.Thread | None = None
        if background_ticks:
            self._ticker = threading.Thread(target=self._tick_loop, name="rig-publisher-ticks", daemon=True)
            self._ticker.start()

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> RigPublisher:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("complete" if exc_type is None else "interrupted")

    # ------------------------------------------------------------------ sessions
    @staticmethod
    def _check_ids(neuron_ids: Any) -> np.ndarray:
        ids = np.asarray(neuron_ids)
        if ids.ndim != 1 or not (0 < ids.size <= MAX_NEURONS):
            raise ValueError(f"neuron_ids must be a 1-D list of 1..{MAX_NEURONS} ids, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"neuron_ids must be integers, got dtype {ids.dtype}")
        if np.unique(ids).size != ids.size:
            raise ValueError("neuron_ids are not unique (decoders match neurons by id)")
        return ids.astype("<i8")

    def _begin(self, ids: np.ndarray) -> SessionHeader:
        header = SessionHeader(
            session_id=new_session_id(), source=self.source, mouse_id=self.mouse_id, frame_rate=self.frame_rate,
            neuron_ids=ids, stimulus_shape=self.stimulus_shape, start_time_ns=time.time_ns(),
        )
        self._pub.begin(header)
        self.seq = 0
        self.sessions += 1
        return header

    @property
    def session_id(self) -> str:
        return self.header.session_id

    @property
    def n_neurons(self) -> int:
        return self.header.n_neurons

    def wait_subscribers(self, n: int = 1, timeout_s: float | None = None) -> bool:
        """Block until `n` neurocine subscribers listen (so they see frame 0); False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._pub.n_subscribers >= n:
                    self._pub.resend_header()  # the first header may have gone out before they joined
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def restart(self, neuron_ids: Any = None, reason: str = "interrupted") -> str:
        """End the current session and start a new one (new id, seq from 0); returns the new session id.

        Call it when the acquisition restarts, or pass new `neuron_ids` after re-extracting ROIs."""
        ids = self.header.neuron_ids if neuron_ids is None else self._check_ids(neuron_ids)
        with self._lock:
            self._pub.end(reason)
            self.header = self._begin(ids)
        return self.session_id

    # ------------------------------------------------------------------ frames
    def publish(
        self,
        traces: Any,
        behaviour: Any = None,
        t_acq_ns: int | None = None,
        *,
        stimulus: np.ndarray | None = None,
        trial: int | None = None,
    ) -> int:
        """Send one frame: traces (N,) in `neuron_ids` order (NaN = not reported); behaviour (4,) in
        BEHAVIOUR_CHANNELS order or None (NaN = not measured); t_acq_ns on the rig clock (default: now).
        Returns the frame's sequence number."""
        seq = self.seq
        tr = np.asarray(traces, dtype=np.float32)
        if tr.shape != (self.n_neurons,):
            raise ValueError(f"frame {seq}: traces have shape {tr.shape}, the session has {self.n_neurons} neurons "
                             "(call restart(neuron_ids=...) when the ROIs change)")
        if np.isinf(tr).any():
            raise ValueError(f"frame {seq}: traces hold {int(np.isinf(tr).sum())} infinite values "
                             "(use NaN for 'not reported'); frame not sent")
        if behaviour is None:
            beh = np.full(len(BEHAVIOUR_CHANNELS), np.nan, np.float32)
        else:
            beh = np.asarray(behaviour, dtype=np.float32)
            if beh.shape != (len(BEHAVIOUR_CHANNELS),):
                raise ValueError(f"frame {seq}: behaviour has shape {beh.shape}, expected "
                                 f"({len(BEHAVIOUR_CHANNELS)},) = {BEHAVIOUR_CHANNELS}")
            if np.isinf(beh).any():
                raise ValueError(f"frame {seq}: behaviour holds infinite values; frame not sent")
        if stimulus is not None and self.stimulus_shape is None:
            raise ValueError(f"frame {seq}: a stimulus was given but the publisher has no stimulus_shape")
        t_acq = time.time_ns() if t_acq_ns is None else int(t_acq_ns)
        with self._lock:
            self._pub.send_frame(seq, t_acq, tr, beh, stimulus, trial)
            self.seq = seq + 1
        return seq

    # ------------------------------------------------------------------ idle / close
    def tick(self) -> None:
        """Heartbeat and header re-send when due (the background thread calls this; call it yourself
        with background_ticks=False)."""
        with self._lock:
            if not self._pub._closed:
                self._pub.tick()

    def _tick_loop(self) -> None:
        while not self._stop.wait(min(TICK_INTERVAL_S, HEARTBEAT_INTERVAL_S)):
            self.tick()

    @property
    def dropped(self) -> int:
        """Frames a full queue refused (a live rig never waits for a slow subscriber)."""
        return self._pub.dropped

    def close(self, reason: str = "complete") -> None:
        """Send `end` (subscribers learn the frame count) and close the socket."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(2)
        with self._lock:
            if not self._pub._closed:
                self._pub.end(reason)
                self._pub.close()
