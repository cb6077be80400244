"""Stream bookkeeping for a subscriber: the current session, sequence gaps, duplicates and counters.

Kept apart from the socket so that it can be tested and fuzzed without ZeroMQ: feed it decoded
messages (or raw parts) and it says which to deliver, raising typed ProtocolErrors for the rest.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from neurocine.streams.protocol import (
    Decoded,
    End,
    Frame,
    FrameBeforeSession,
    Heartbeat,
    Message,
    PayloadError,
    ProtocolError,
    SessionHeader,
    SessionMismatch,
    parse_message,
)

#: Errors that mean "not synchronised yet", not "broken message": a late joiner sees them for <= 1 s.
UNSYNCED_KINDS = frozenset({FrameBeforeSession.kind, SessionMismatch.kind})
MAX_GAP_RANGES = 1000
#: Missing ranges remembered for late arrivals; a frame later than the oldest is a duplicate.
MAX_OUTSTANDING_RANGES = 1000
#: A heartbeat or `end` may claim at most this many frames beyond the last one received (~1 min at 30 Hz,
#: far above the 3,000-message queues that can lose them); a larger claim is a forgery or a bug.
MAX_CLAIM = 2000
#: A frame more than this far ahead of the last one is held until the next frame confirms the jump, so one
#: forged sequence number cannot make every later real frame look like a duplicate.
MAX_JUMP = 300
#: A new session's header while the current one's frames are still flowing (last frame < this long ago)
#: is held, not switched to: a stranger's headers cannot flap the session while the rig is streaming.
SWITCH_HOLD_S = 0.5


class ImplausibleClaim(ProtocolError):
    """A heartbeat or `end` claims frames the stream cannot have sent (out of bounds, or before a received one)."""

    kind = "implausible_claim"


@dataclasses.dataclass
class StreamStats:
    """Counters a subscriber keeps; `snapshot()` gives a copy safe to read at any time."""

    received: int = 0  # frames accepted and delivered
    sessions: int = 0  # distinct sessions seen (a publisher restart starts a new one)
    gaps: int = 0  # gap events (runs of missing sequence numbers)
    missing: int = 0  # frames currently missing (a late arrival fills one back in)
    duplicates: int = 0
    out_of_order: int = 0  # frames that arrived after a later one (delivered unless in_order=True)
    dropped_late: int = 0  # out-of-order frames dropped because the consumer needs them in order
    rejected: int = 0  # forged-looking claims refused: jumps not confirmed, heartbeat/end claims out of bounds
    held_sessions: int = 0  # new-session headers held while the current session was still streaming
    late: int = 0  # frames whose publish->receive latency exceeded the late threshold
    malformed: int = 0  # messages rejected as broken (all ProtocolError kinds except unsynced ones)
    unsynced: int = 0  # frames dropped while waiting for their session header
    nan_frames: int = 0  # frames with at least one NaN trace (a neuron not reported)
    heartbeats: int = 0
    ends: int = 0
    # filled in by the Subscriber (streams/stall.py, transport.py): silences of a live session, cut-offs
    stalls: int = 0  # times a live session's stream went silent for longer than the stall limit
    stalled_s: float = 0.0  # their total length, the current one included
    stalled: bool = False  # silent right now
    stalled_for_s: float = 0.0  # ... for this long
    cutoffs: int = 0  # times the publisher cut this subscriber off (oversized part, broken stream) and it reconnected
    errors_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    gap_ranges: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (session, first, last)

    def snapshot(self) -> StreamStats:
        return dataclasses.replace(
            self, errors_by_kind=dict(self.errors_by_kind), gap_ranges=list(self.gap_ranges)
        )

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.snapshot())
        d["gap_ranges"] = [list(r) for r in self.gap_ranges]
        return d


class StreamTracker:
    """Follows one stream: validates messages against the session header and counts every fault."""

    def __init__(self, late_after_s: float = 0.1, *, in_order: bool = False,
                 switch_hold_s: float = SWITCH_HOLD_S) -> None:
        self.late_after_ns = int(late_after_s * 1e9)
        self.in_order = in_order  # drop (and count) late frames instead of delivering them
        self.switch_hold_ns = int(switch_hold_s * 1e9)
        self.stats = StreamStats()
        self.session: SessionHeader | None = None
        self.ended = False
        self.last_seq = -1  # highest sequence number received in the current session
        self._accounted = -1  # highest seq either received or recorded as missing
        self._seen_frame = False
        self._last_frame_ns = 0
        self._held: SessionHeader | None = None  # a new session's header waiting for the current one to stop
        self._held_parts: Sequence[Any] | None = None  # ... and its raw parts (a recorder writes those)
        self._in_parts: Sequence[Any] | None = None  # raw parts of the message being accepted
        #: raw parts of the message just delivered: the input's, or a held header's when a frame switched to it
        self.delivered_parts: Sequence[Any] | None = None
        self._next: tuple[Message, Sequence[Any] | None, int] | None = None  # delivered after a switch's header
        self._away_ns = 0  # time the consumer was away while messages waited (not silence of the stream)
        self._away_at_last_frame = 0
        self._jump: Frame | None = None  # a far-ahead frame waiting for confirmation
        self._outstanding: list[list[int]] = []  # missing [first, last] ranges, ascending, bounded
        self.errors: collections.deque[ProtocolError] = collections.deque(maxlen=100)

    # ------------------------------------------------------------------ entry points
    def accept_parts(self, parts: Sequence[Any], recv_ns: int | None = None) -> Message | None:
        """Decode and check raw parts; returns the message to deliver, None to skip, or raises."""
        try:
            msg = parse_message(parts)
        except ProtocolError as e:
            self._count_error(e)
            raise
        self._in_parts = self.delivered_parts = parts
        try:
            return self.accept(msg, recv_ns)
        finally:
            self._in_parts = None

    def take_next(self) -> tuple[Message, Sequence[Any] | None, int] | None:
        """A message to deliver before reading more: the frame that switched to a held session comes right
        after that session's header (message, raw parts, receive time), once."""
        nxt, self._next = self._next, None
        return nxt

    def note_away(self, ns: int) -> None:
        """The consumer was away `ns` while messages waited in its queue: that time is not the stream's silence
        (a recorder stalled on a slow disk must not take a stranger's header for a restart)."""
        self._away_ns += max(0, int(ns))

    def accept(self, msg: Message, recv_ns: int | None = None) -> Message | None:
        if self._in_parts is None:
            self.delivered_parts = None
        try:
            return self._accept(msg, time.time_ns() if recv_ns is None else recv_ns)
        except ProtocolError as e:
            self._count_error(e)
            raise

    def count_error(self, e: ProtocolError) -> None:
        """Count an error found outside the tracker (the socket's own checks) like one found here."""
        self._count_error(e)

    @property
    def headers(self) -> list[SessionHeader]:
        """The current session's header and one held (waiting to switch), if any: what frames may belong to."""
        return [h for h in (self.session, self._held) if h is not None]

    # ------------------------------------------------------------------ internals
    def _count_error(self, e: ProtocolError) -> None:
        self.errors.append(e)
        self.stats.errors_by_kind[e.kind] = self.stats.errors_by_kind.get(e.kind, 0) + 1
        if e.kind in UNSYNCED_KINDS:
            self.stats.unsynced += 1
        else:
            self.stats.malformed += 1

    def _accept(self, msg: Message, recv_ns: int) -> Message | None:
        if isinstance(msg, SessionHeader):
            return self._on_session(msg, recv_ns)
        if isinstance(msg, Frame):
            return self._on_frame(msg, recv_ns)
        if isinstance(msg, Heartbeat):
            self.stats.heartbeats += 1
            if self.session is not None and msg.session_id == self.session.session_id:
                self._claim(msg.last_seq, "heartbeat")
            return msg
        if isinstance(msg, End):
            self._require_session(msg.session_id, "end")
            if self._seen_frame and msg.n_frames - 1 < self.last_seq:
                self._reject(f"end of session {msg.session_id} says {msg.n_frames} frames, "
                             f"but frame {self.last_seq} was received", b"end")
            self._claim(msg.n_frames - 1, "end")
            self.stats.ends += 1
            self.ended = True
            return msg
        if isinstance(msg, Decoded):
            return msg
        raise ProtocolError(f"unexpected message object {type(msg).__name__}")

    def _reject(self, detail: str, topic: bytes) -> None:
        self.stats.rejected += 1
        raise ImplausibleClaim(detail, topic)

    def _claim(self, last: int, what: str) -> None:
        """A heartbeat or end says frames up to `last` were sent: record the missing tail, within bounds."""
        if not self._seen_frame or last <= self._accounted:
            return
        if last - self.last_seq > MAX_CLAIM:
            self._reject(f"{what} claims frames up to {last}, {last - self.last_seq} beyond the last received "
                         f"({self.last_seq}; at most {MAX_CLAIM} believed)", b"heartbeat" if what == "heartbeat"
                         else b"end")
        self._note_gap_upto(last)

    def _streaming(self, now_ns: int) -> bool:
        """The current session's frames are still flowing (it has not ended and sent one recently; the time the
        consumer was away with messages waiting does not count as silence)."""
        silence = (now_ns - self._last_frame_ns) - (self._away_ns - self._away_at_last_frame)
        return (self.session is not None and not self.ended and self._seen_frame
                and 0 <= silence < self.switch_hold_ns)

    def _on_session(self, h: SessionHeader, recv_ns: int) -> SessionHeader | None:
        if self.session is not None and h.session_id == self.session.session_id:
            if not h.same_as(self.session):
                raise SessionMismatch(
                    f"session {h.session_id} re-sent with a different header (neurons, rate or shape changed)",
                    b"session",
                )
            return None  # a periodic re-send: nothing new
        if self._streaming(recv_ns):
            if self._held is None or self._held.session_id != h.session_id:
                self.stats.held_sessions += 1
            self._held = h
            self._held_parts = self._in_parts
            return None
        return self._switch(h)

    def _switch(self, h: SessionHeader) -> SessionHeader:
        self.session = h
        self.ended = False
        self.last_seq = -1
        self._accounted = -1
        self._seen_frame = False
        self._held = self._held_parts = None
        self._jump = None
        self._outstanding.clear()
        self.stats.sessions += 1
        return h

    def _require_session(self, session_id: str, what: str) -> SessionHeader:
        if self.session is None:
            raise FrameBeforeSession(f"{what} of session {session_id} before any session header", b"frame")
        if session_id != self.session.session_id:
            raise SessionMismatch(
                f"{what} of session {session_id}, current session is {self.session.session_id} "
                "(a restarted publisher's header arrives within a second)",
                b"frame",
            )
        return self.session

    def _on_frame(self, f: Frame, recv_ns: int) -> Message | None:
        held = self._held
        if held is not None and f.session_id == held.session_id and not self._streaming(recv_ns):
            # The held session streams and the old one stopped (a restarted rig): switch now. The consumer
            # gets the new header first (with its own raw parts, so a recorder writes a header record), then
            # this frame, checked against the new session (take_next).
            header_parts, frame_parts = self._held_parts, self._in_parts
            header = self._switch(held)
            try:
                frame = self._on_frame(f, recv_ns)
            except ProtocolError as e:
                self._count_error(e)
                frame = None
            if frame is not None:
                self._next = (frame, frame_parts, recv_ns)
            self.delivered_parts = header_parts
            return header
        h = self._require_session(f.session_id, f"frame {f.seq}")
        if f.traces.shape[0] != h.n_neurons:
            raise PayloadError(
                f"frame {f.seq}: {f.traces.shape[0]} traces, session {h.session_id} has {h.n_neurons} neurons",
                b"frame",
            )
        stim_shape = None if f.stimulus is None else tuple(f.stimulus.shape)
        if stim_shape is not None and stim_shape != h.stimulus_shape:
            raise PayloadError(
                f"frame {f.seq}: stimulus shape {stim_shape}, session header says {h.stimulus_shape}", b"frame"
            )
        if not self._seen_frame:
            # First frame of this session here: a late joiner starts where it joined (no false gap).
            self._seen_frame = True
            self.last_seq = self._accounted = f.seq - 1
        if f.seq <= self.last_seq:
            if not self._fill(f.seq):
                self.stats.duplicates += 1
                return None
            self.stats.out_of_order += 1
            self.stats.missing -= 1
            if self.in_order:
                self.stats.dropped_late += 1
                return None
        else:
            if f.seq - self.last_seq > MAX_JUMP:
                if not self._confirms_jump(f):
                    self._jump = f
                    return None
            elif self._jump is not None:
                self.stats.rejected += 1  # the held jump was never continued: a forgery or a glitch
            self._jump = None
            if f.seq <= self._accounted:  # announced missing by a heartbeat, arrived after all
                self._fill(f.seq)
                self.stats.missing -= 1
            self._note_gap_upto(f.seq - 1)
            self.last_seq = f.seq
            self._accounted = max(self._accounted, f.seq)
        self._last_frame_ns = recv_ns
        self._away_at_last_frame = self._away_ns
        self.stats.received += 1
        if recv_ns - f.t_pub_ns > self.late_after_ns:
            self.stats.late += 1
        if np.isnan(f.traces).any():
            self.stats.nan_frames += 1
        return f

    def _confirms_jump(self, f: Frame) -> bool:
        """A far jump is believed when the next frame continues it (one forged seq is not)."""
        held = self._jump
        if held is None or not 0 < f.seq - held.seq <= MAX_JUMP:
            if held is not None:
                self.stats.rejected += 1  # the held jump was never continued
            return False
        self.stats.rejected += 1  # the first frame after a real jump is dropped (documented cost)
        return True

    def _fill(self, seq: int) -> bool:
        """Remove `seq` from the missing ranges; False when it was not missing (a duplicate). O(log ranges)."""
        k = bisect.bisect_right(self._outstanding, [seq, 1 << 63]) - 1
        if k < 0 or not self._outstanding[k][0] <= seq <= self._outstanding[k][1]:
            return False
        first, last = self._outstanding[k]
        pieces = [r for r in ([first, seq - 1], [seq + 1, last]) if r[0] <= r[1]]
        self._outstanding[k : k + 1] = pieces
        return True

    def _note_gap_upto(self, last: int) -> None:
        """Frames after everything accounted for up to `last` were never seen: record them as one gap (O(1))."""
        first = self._accounted + 1
        if last < first or self.session is None or not self._seen_frame:
            return
        self.stats.gaps += 1
        self.stats.missing += last - first + 1
        self.stats.gap_ranges.append((self.session.session_id, first, last))
        del self.stats.gap_ranges[:-MAX_GAP_RANGES]
        self._outstanding.append([first, last])
        del self._outstanding[:-MAX_OUTSTANDING_RANGES]
        self._accounted = last
