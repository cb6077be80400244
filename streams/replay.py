"""Replay a recorded session as a live stream, at its recorded frame times (drift-free) or flat out."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import Progress
from neurocine.streams.session import Session, StreamedSession, header_of, new_session_id
from neurocine.streams.summary import percentiles
from neurocine.streams.transport import Publisher

SPIN_NS = 1_000_000  # busy-wait the last millisecond before a deadline: sleep() overshoots
#: A replay waits for its slowest subscriber (nodrop), so a deep queue only holds frames in flight: a
#: subscriber killed mid-replay (`kill -9` of `record`) loses what sat there. Short queues lose little (see
#: streams/record.py); measured flat out into a recorder, end to end, 3,570-4,250 frames/s against 4,240-4,530
#: with the 3,000-message queue and autotuned buffers (example session, shared 2-core machine, load 4.5).
REPLAY_SNDHWM = 100
REPLAY_SNDBUF = 64 * 1024  # bytes; unset, Linux autotunes the socket's send buffer up to 4 MB


def replay_publisher(bind: str, sndhwm: int | None = None, **kw: Any) -> Publisher:
    """The publisher `neurocine replay` uses: waits for slow subscribers (nodrop), short queues."""
    return Publisher(bind, sndhwm=sndhwm or REPLAY_SNDHWM, sndbuf=REPLAY_SNDBUF, nodrop=True, **kw)


@dataclasses.dataclass
class ReplayReport:
    session_id: str
    frames: int
    seconds: float
    achieved_rate_hz: float
    target_rate_hz: float | None
    #: |actual - scheduled| publish time of each frame (percentiles; zeros when unpaced)
    jitter_ms: dict[str, float | None]
    interrupted: bool = False
    #: cuts marked on the wire (a new `segment` number): between trials not recorded back to back, and where a
    #: --loop starts again
    cuts: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def replay(
    session: Session | StreamedSession,
    pub: Publisher,
    *,
    speed: float = 1.0,
    loop: bool = False,
    source: str = "replay",
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Publish every frame of `session` on `pub`; `speed` 0 means as fast as possible.

    Frame i is due at start + (t_i - t_0) / speed, an absolute deadline, so lateness never
    accumulates. Looping continues the same session (sequence numbers and acquisition times go on).
    Trials are read one at a time (a StreamedSession holds one trial in memory); every frame carries its
    trial index and segment number, and the segment goes up by one at each cut (a trial marked `cut`, and the
    start of each repeat of a --loop), so a decoder knows where the recording is not continuous.
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    if isinstance(session, Session) and session.n_frames == 0:
        raise ValueError("session has no frames to replay")
    sid = new_session_id()
    header = dataclasses.replace(header_of(session), session_id=sid, source=source)
    period_ns = round(1e9 / session.frame_rate)
    lateness: list[int] = []
    pub.begin(header)
    t_start = time.perf_counter_ns()
    seq = segment = 0
    pass_ns = 0  # where the current pass starts on the replay's timeline (a loop continues it)
    t0: int | None = None
    interrupted = False
    try:
        while True:
            first_of_pass, last_rel = True, 0
            for part in session.iter_trials():
                if part.n_frames == 0:
                    continue
                if seq and (part.trial.cut or first_of_pass):
                    segment += 1
                first_of_pass = False
                if t0 is None:
                    t0 = int(part.timestamps_ns[0])
                stamps = part.timestamps_ns
                for i in range(part.n_frames):
                    last_rel = int(stamps[i]) - t0
                    offset = pass_ns + last_rel
                    if speed > 0:
                        deadline = t_start + int(offset / speed)
                        _wait_until(deadline, pub, should_stop)
                        lateness.append(time.perf_counter_ns() - deadline)
                    if should_stop():
                        raise KeyboardInterrupt
                    stim = None if part.stimulus is None else part.stimulus[i]
                    pub.send_frame(seq, t0 + offset, part.traces[i], part.behaviour[i], stim, part.trial.index,
                                   segment)
                    seq += 1
                    if progress is not None:
                        progress(seq)
            if seq == 0:
                pub.end("complete")
                raise ValueError("session has no frames to replay")
            if not loop:
                break
            pass_ns += last_rel + period_ns
    except KeyboardInterrupt:
        interrupted = True
    elapsed = (time.perf_counter_ns() - t_start) / 1e9
    pub.end("interrupted" if interrupted else "complete")
    jitter = np.abs(np.array(lateness, dtype=np.float64)) / 1e6 if lateness else np.zeros(1)
    return ReplayReport(
        session_id=sid,
        frames=seq,
        seconds=round(elapsed, 4),
        achieved_rate_hz=round(seq / elapsed, 3) if elapsed > 0 else float("inf"),
        target_rate_hz=session.frame_rate * speed if speed > 0 else None,
        jitter_ms=percentiles(jitter, 4),
        interrupted=interrupted,
        cuts=segment,
    )


def replay_decoded(
    path: str | Path,
    pub: Publisher,
    *,
    speed: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> ReplayReport:
    """Re-publish the `decoded` messages of a recording (.ncr), bit for bit, at the pace they were recorded.

    Why: a decoded stream recorded by `neurocine record` plays back to a viewer or a closed-loop client
    exactly as the decode service sent it (its sequence numbers, timestamps, frames and stats).
    """
    from neurocine.streams.formats.native import iter_records
    from neurocine.streams.protocol import Decoded, ProtocolError, parse_message

    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    records = []
    for recv_ns, parts in iter_records(path):
        try:
            msg = parse_message(parts)
        except ProtocolError:
            continue  # counted by `neurocine inspect`; never replayed
        if isinstance(msg, Decoded):
            records.append((recv_ns, parts, msg.session_id))
    if not records:
        raise ValueError(f"{path}: holds no decoded messages to replay")
    t0_rec, t_start = records[0][0], time.perf_counter_ns()
    lateness: list[int] = []
    sent, interrupted = 0, False
    for recv_ns, parts, _ in records:
        if speed > 0:
            deadline = t_start + int((recv_ns - t0_rec) / speed)
            _wait_until(deadline, pub, should_stop)
            lateness.append(time.perf_counter_ns() - deadline)
        if should_stop():
            interrupted = True
            break
        pub.send_raw(parts)
        sent += 1
    elapsed = (time.perf_counter_ns() - t_start) / 1e9
    jitter = np.abs(np.array(lateness, dtype=np.float64)) / 1e6 if lateness else np.zeros(1)
    span_s = (records[-1][0] - t0_rec) / 1e9
    return ReplayReport(
        session_id=records[0][2],
        frames=sent,
        seconds=round(elapsed, 4),
        achieved_rate_hz=round(sent / elapsed, 3) if elapsed > 0 else float("inf"),
        target_rate_hz=round(len(records) / span_s * speed, 3) if speed > 0 and span_s > 0 else None,
        jitter_ms=percentiles(jitter, 4),
        interrupted=interrupted,
    )


def _wait_until(deadline_ns: int, pub: Publisher, should_stop: Callable[[], bool]) -> None:
    """Sleep until the deadline, sending heartbeats/header re-sends while waiting."""
    while True:
        remaining = deadline_ns - time.perf_counter_ns()
        if remaining <= 0 or should_stop():
            return
        if remaining > SPIN_NS:
            pub.tick()
            time.sleep(min(remaining - SPIN_NS, 50_000_000) / 1e9)


def print_progress(total: int | None) -> Callable[[int], None]:
    """A progress callback: frames published so far, as one progress line on stderr."""
    return Progress("replay", total, unit="frame")
