"""Closed-loop clients: receive the decoded movie as numpy frames with their source seq and timing.

Lives in `decoder/` because the `decoded` message's fields are defined here (decoder/live/decoded.py) and
`streams` never imports `decoder`; like messages.py it imports no torch or onnxruntime, so a client
machine with the light install (numpy, pyzmq, msgpack) can use it (tests/test_client.py checks it).

    from neurocine.decoder.client import DecodedStream
    with DecodedStream("tcp://decoder:5556", provisional=True) as stream:
        for f in stream:                       # LiveFrame: f.frame (36, 64) uint8, f.seq, f.final, ...
            if looks_like_target(f.frame):
                act()

A decoder publishes a `final` frame for source frame `seq` once `lag` newer frames have refined it, and,
when asked to (`neurocine decode --provisional`), a provisional estimate of each frame as soon as it
arrives (final=False; the same seq comes again later, better). `final` / `provisional` choose which kinds
are handed over; `newest_only` drops all but the newest waiting frame, for a client slower than 30 Hz.

Before acting, calibrate: `calibrate_detector(stream, rig, "bar")` runs a calibration block on the rig (the target
and catch changes at random times, nothing acted on) and returns, per kind of frame, the detector's threshold and
frame count for a stated false-alarm rate (neurocine.decoder.detect.calibrate); the installed example
`python -m neurocine.decoder.examples.closed_loop` shows it at the start of a session.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from neurocine.decoder.detect import DEFAULT_CALIBRATION, Calibration, CalibrationConfig, ScoreLog, calibrate
from neurocine.decoder.live.decoded import DecodedFrame, as_decoded_frame, follow
from neurocine.streams.commandline import get_logger
from neurocine.streams.control import TARGETS, AsyncRigControl
from neurocine.streams.protocol import TOPIC_DECODED, Decoded, ProtocolError
from neurocine.streams.stall import DEFAULT_STALL, StallConfig, StallWatch
from neurocine.streams.transport import Subscriber


@dataclasses.dataclass(frozen=True)
class LiveFrame:
    """One decoded frame as a client sees it."""

    session_id: str  # the source (rig) session
    seq: int  # source frame: the stimulus shown at that frame is what this frame estimates
    final: bool  # False: a provisional estimate that a later message for the same seq will replace
    frame: np.ndarray  # (36, 64) uint8, read-only
    t_acq_ns: int  # source frame acquired (rig clock)
    t_pub_ns: int  # source frame published by the rig
    t_done_ns: int  # decoder published this estimate
    t_recv_ns: int  # this client received it
    trigger_seq: int  # the source frame whose arrival produced this estimate (seq + lag; seq if not given)
    trigger_t_pub_ns: int  # when the rig published that frame
    lag: int  # frames between seq and the newest frame the decoder had (0 for provisional frames)
    new_session: bool  # the first frame of a new source session (reset per-session state)
    decoded: DecodedFrame  # everything the decoder sent (queue and compute times, steps, stats)

    @property
    def flushed(self) -> str:
        """"" for a frame refined for the decoder's whole lag (or a provisional one); "end" or "switch" for a final
        frame published early because the source session ended or another began (`lag` says how many frames
        refined it). A decoder publishes nothing for a frame it never received."""
        return self.decoded.flushed

    @property
    def latency_ms(self) -> float:
        """Source frame published -> this client has its estimate (includes the decoder's lag)."""
        return (self.t_recv_ns - self.t_pub_ns) / 1e6

    @property
    def overhead_ms(self) -> float:
        """Trigger frame published -> client has the estimate: transport + queue + compute, without the lag."""
        return (self.t_recv_ns - self.trigger_t_pub_ns) / 1e6


@dataclasses.dataclass
class ClientStats:
    final: int = 0
    provisional: int = 0
    filtered: int = 0  # received but of a kind not asked for
    skipped_stale: int = 0  # dropped by newest_only
    malformed: int = 0  # decoded messages that are not decoded frames (counted, never fatal)
    sessions: int = 0
    last_error: str = ""
    stalls: int = 0  # times the decoded stream of a live session went silent past the stall limit (logged)
    stalled: bool = False  # ... and it is silent now


class DecodedStream:
    """Subscriber to a decode service's `decoded` stream that hands over LiveFrames."""

    def __init__(self, connect: str, *, final: bool = True, provisional: bool = False, newest_only: bool = False,
                 rcvhwm: int = 1000, stall: StallConfig = DEFAULT_STALL) -> None:
        if not (final or provisional):
            raise ValueError("ask for final frames, provisional frames, or both")
        self.want_final, self.want_provisional, self.newest_only = final, provisional, newest_only
        self._sub = Subscriber(connect, topics=(TOPIC_DECODED,), rcvhwm=rcvhwm, stall=None)
        self.stats = ClientStats()
        self._session: str | None = None
        #: a closed loop must know when the decoded movie stops: a warning (logger neurocine.client) and stats
        self.watch = StallWatch(stall, get_logger("client"), connect)

    def __enter__(self) -> DecodedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _convert(self, msg: Decoded, recv_ns: int) -> LiveFrame | None:
        try:
            d = as_decoded_frame(msg)
        except ProtocolError as e:
            self.stats.malformed += 1
            self.stats.last_error = str(e)
            return None
        follow(self.watch, d, time.monotonic())
        self.stats.stalls, self.stats.stalled = self.watch.stalls, self.watch.stalled
        if not (self.want_final if d.final else self.want_provisional):
            self.stats.filtered += 1
            return None
        new = d.session_id != self._session
        if new:
            self._session = d.session_id
            self.stats.sessions += 1
        if d.final:
            self.stats.final += 1
        else:
            self.stats.provisional += 1
        trigger = d.trigger_seq if d.trigger_seq >= 0 else d.seq
        return LiveFrame(d.session_id, d.seq, d.final, d.frame, d.t_acq_ns, d.t_pub_ns, d.t_done_ns, recv_ns,
                         trigger, d.trigger_t_pub_ns or d.t_pub_ns, d.lag, new, d)

    def recv(self, timeout_s: float | None = 1.0) -> LiveFrame | None:
        """The next frame of the kinds asked for (the newest waiting one with newest_only), or None on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = self._sub.recv(timeout_s=left)
            if msg is None:
                self.watch.check(time.monotonic())
                self.stats.stalls, self.stats.stalled = self.watch.stalls, self.watch.stalled
                return None
            out = self._convert(msg, self._sub.last_recv_ns) if isinstance(msg, Decoded) else None
            if out is not None and self.newest_only:
                while (nxt := self._sub.recv(timeout_s=0)) is not None:
                    newer = self._convert(nxt, self._sub.last_recv_ns) if isinstance(nxt, Decoded) else None
                    if newer is not None:
                        self.stats.skipped_stale += 1
                        if out.new_session and not newer.new_session and newer.session_id == out.session_id:
                            newer = dataclasses.replace(newer, new_session=True)
                        out = newer
            if out is not None:
                return out
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[LiveFrame]:
        """Frames until closed (timeouts are skipped)."""
        while not self._sub._sock.closed:
            f = self.recv(timeout_s=0.5)
            if f is not None:
                yield f

    def close(self) -> None:
        self._sub.close()


# ---------------------------------------------------------------------------------------------- events on a rig
#: Seconds of movie between events of a calibration block (uniform): the decoded movie settles after a change
#: (the biology's ~1 s and the decoder's lag) before the next one.
EVENT_ITI_S = (2.5, 3.5)
log = get_logger("client")


class EventRunner:
    """Drives a rig through target and catch events while reading the decoded stream, in one thread.

    A *target* event shows the target image (the rig's reply names the first frame that shows it) and takes it off
    with a new movie after `window_s`, unless `take_off` is called sooner; a *catch* event switches to another movie
    and is scored for `window_s`. Commands go through AsyncRigControl, so frames are read while the rig waits for
    its frame clock. A calibration block (`calibrate_detector`) and `neurocine bench loop` both run on it;
    subclasses see every frame in `on_frame`."""

    def __init__(self, stream: DecodedStream, rig: AsyncRigControl, target: str, *, window_s: float,
                 iti_s: tuple[float, float] = EVENT_ITI_S, seed: int = 0) -> None:
        if target not in TARGETS:
            raise ValueError(f"target {target!r}: built-in targets are {sorted(TARGETS)}")
        self.stream, self.rig, self.target = stream, rig, target
        self.window_s, self.iti_s = window_s, iti_s
        self.rng = np.random.default_rng(seed)
        self.events: list[dict[str, Any]] = []
        self.pending: dict[int, tuple[dict[str, Any], str]] = {}  # command id -> (event, role)
        self.movie = 0

    def on_frame(self, f: LiveFrame) -> None:
        """Called for every decoded frame received (both kinds)."""

    def plan(self, n_events: int) -> list[str]:
        """n_events kinds in a seeded random order, half targets (rounded up) and half catch."""
        kinds = ["target"] * (n_events - n_events // 2) + ["catch"] * (n_events // 2)
        return [str(k) for k in self.rng.permutation(kinds)]

    def new_movie(self) -> int:
        self.movie = int(self.movie + 1 + self.rng.integers(0, 5))
        return self.movie

    def command(self, event: dict[str, Any], role: str, cmd: str, **fields: Any) -> None:
        self.pending[self.rig.send(cmd, **fields)] = (event, role)

    def take_off(self, event: dict[str, Any], by: str) -> None:
        """Take a target off now (`by`: who decided: "client" or "schedule")."""
        if "off_cmd" not in event:
            event["off_cmd"] = by
            self.command(event, "off", "movie", k=self.new_movie())

    def _on_reply(self, r: dict[str, Any]) -> None:
        event, role = self.pending.pop(r.get("id"), (None, None))
        if event is None or not r.get("ok"):
            log.info(f"unexpected rig reply {r}")
            return
        event[role] = {k: r[k] for k in ("seq", "t_recv_ns", "t_shown_ns", "t_pub_ns", "t_sent_ns", "t_reply_ns")}

    def pump(self, until_ns: int) -> None:
        """Handle frames and rig replies until the wall clock reaches until_ns."""
        while time.time_ns() < until_ns:
            for r in self.rig.replies(0):
                self._on_reply(r)
            f = self.stream.recv(timeout_s=0.003)
            if f is not None:
                self.on_frame(f)

    def run_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Movie for a random interval, then one event (`fields` kept in it); returns it, its "on"/"off" filled
        from the rig's replies."""
        self.pump(time.time_ns() + int(self.rng.uniform(*self.iti_s) * 1e9))
        ev: dict[str, Any] = {"kind": kind, **fields}
        self.events.append(ev)
        if kind == "target":
            self.command(ev, "on", "target", name=self.target)
        else:
            self.command(ev, "on", "movie", k=self.new_movie())
        deadline = time.time_ns() + int(self.window_s * 1e9)
        while time.time_ns() < deadline and "off_cmd" not in ev:
            self.pump(min(deadline, time.time_ns() + 20_000_000))
        if kind == "target":
            self.take_off(ev, "schedule")
        self.pump(time.time_ns() + 200_000_000)  # the off acknowledgement
        return ev

    def windows(self, window_frames: int) -> list[tuple[str, int, int]]:
        """(kind, first seq, end seq) of every event the rig acknowledged: a target until it went off, a catch
        event for window_frames."""
        return [(e["kind"], e["on"]["seq"], e["off"]["seq"] if e["kind"] == "target" and "off" in e
                 else e["on"]["seq"] + window_frames) for e in self.events if "on" in e]


class CalibrationBlock(EventRunner):
    """Events that nothing acts on (a target stays up for the whole window), each frame scored against the target
    per kind of frame: the data `neurocine.decoder.detect.calibrate` fits a detector to."""

    def __init__(self, stream: DecodedStream, rig: AsyncRigControl, target: str, *,
                 config: CalibrationConfig = DEFAULT_CALIBRATION, iti_s: tuple[float, float] = EVENT_ITI_S,
                 seed: int = 0, roi: tuple[int, int, int, int] | None = None) -> None:
        super().__init__(stream, rig, target, window_s=config.window_s, iti_s=iti_s, seed=seed)
        self.config = config
        self.logs = {"final": ScoreLog(TARGETS[target], roi), "provisional": ScoreLog(TARGETS[target], roi)}

    def on_frame(self, f: LiveFrame) -> None:
        self.logs["final" if f.final else "provisional"].add(f.seq, f.frame)

    def run(self, n_events: int, settle_s: float = 1.5) -> None:
        for kind in self.plan(n_events):
            self.run_event(kind)
        self.pump(time.time_ns() + int(settle_s * 1e9))  # the last final frames come a lag later

    def fit(self, kinds: Sequence[str] = ("provisional", "final")) -> dict[str, Calibration]:
        """A calibrated detector per kind of frame that was received (a kind never received is left out)."""
        windows = self.windows(self.config.window_frames)
        out = {}
        for kind in kinds:
            if len(self.logs[kind]):
                out[kind] = calibrate(*self.logs[kind].arrays(), windows, self.config)
        return out


def calibrate_detector(stream: DecodedStream, rig: AsyncRigControl, target: str, *, events: int = 20,
                       config: CalibrationConfig = DEFAULT_CALIBRATION, seed: int = 0,
                       roi: tuple[int, int, int, int] | None = None,
                       iti_s: tuple[float, float] = EVENT_ITI_S) -> dict[str, Calibration]:
    """Run a calibration block of `events` (half target, half catch) on a live rig and fit a detector per kind of
    frame received, for config.false_alarm_rate per catch window. Takes about events x 6 s at the defaults."""
    block = CalibrationBlock(stream, rig, target, config=config, seed=seed, roi=roi, iti_s=iti_s)
    block.run(events)
    return block.fit()
