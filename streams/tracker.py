"""Stream bookkeeping for a subscriber: the current session, sequence gaps, duplicates and counters.

Kept apart from the socket so that it can be tested and fuzzed without ZeroMQ: feed it decoded
messages (or raw parts) and it says which to deliver, raising typed ProtocolErrors for the rest.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streams.protocol import (
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
    decode,
)

#: Errors that mean "not synchronised yet", not "broken message": a late joiner sees them for <= 1 s.
UNSYNCED_KINDS = frozenset({FrameBeforeSession.kind, SessionMismatch.kind})
MAX_GAP_RANGES = 1000
MAX_OUTSTANDING = 100_000


@dataclasses.dataclass
class StreamStats:
    """Counters a subscriber keeps; `snapshot()` gives a copy safe to read at any time."""

    received: int = 0  # frames accepted and delivered
    sessions: int = 0  # distinct sessions seen (a publisher restart starts a new one)
    gaps: int = 0  # gap events (runs of missing sequence numbers)
    missing: int = 0  # frames currently missing (a late arrival fills one back in)
    duplicates: int = 0
    out_of_order: int = 0  # frames that arrived after a later one (they are still delivered)
    late: int = 0  # frames whose publish->receive latency exceeded the late threshold
    malformed: int = 0  # messages rejected as broken (all ProtocolError kinds except unsynced ones)
    unsynced: int = 0  # frames dropped while waiting for their session header
    nan_frames: int = 0  # frames with at least one NaN trace (a neuron not reported)
    heartbeats: int = 0
    ends: int = 0
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

    def __init__(self, late_after_s: float = 0.1) -> None:
        self.late_after_ns = int(late_after_s * 1e9)
        self.stats = StreamStats()
        self.session: SessionHeader | None = None
        self.ended = False
        self.last_seq = -1  # highest sequence number seen in the current session
        self._seen_frame = False
        self._outstanding: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.errors: collections.deque[ProtocolError] = collections.deque(maxlen=100)

    # ------------------------------------------------------------------ entry points
    def accept_parts(self, parts: Sequence[Any], recv_ns: int | None = None) -> Message | None:
        """Decode and check raw parts; returns the message to deliver, None to skip, or raises."""
        try:
            msg = decode(parts)
        except ProtocolError as e:
            self._count_error(e)
            raise
        return self.accept(msg, recv_ns)

    def accept(self, msg: Message, recv_ns: int | None = None) -> Message | None:
        try:
            return self._accept(msg, time.time_ns() if recv_ns is None else recv_ns)
        except ProtocolError as e:
            self._count_error(e)
            raise

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
            return self._on_session(msg)
        if isinstance(msg, Frame):
            return self._on_frame(msg, recv_ns)
        if isinstance(msg, Heartbeat):
            self.stats.heartbeats += 1
            if self.session is not None and msg.session_id == self.session.session_id:
                self._note_gap_upto(msg.last_seq)
            return msg
        if isinstance(msg, End):
            self._require_session(msg.session_id, "end")
            self.stats.ends += 1
            self._note_gap_upto(msg.n_frames - 1)
            self.ended = True
            return msg
        if isinstance(msg, Decoded):
            return msg
        raise ProtocolError(f"unexpected message object {type(msg).__name__}")

    def _on_session(self, h: SessionHeader) -> SessionHeader | None:
        if self.session is not None and h.session_id == self.session.session_id:
            if not h.same_as(self.session):
                raise SessionMismatch(
                    f"session {h.session_id} re-sent with a different header (neurons, rate or shape changed)",
                    b"session",
                )
            return None  # a periodic re-send: nothing new
        self.session = h
        self.ended = False
        self.last_seq = -1
        self._seen_frame = False
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

    def _on_frame(self, f: Frame, recv_ns: int) -> Frame | None:
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
            self.last_seq = f.seq - 1
        if f.seq <= self.last_seq:
            if f.seq in self._outstanding:
                del self._outstanding[f.seq]
                self.stats.out_of_order += 1
                self.stats.missing -= 1
            else:
                self.stats.duplicates += 1
                return None
        else:
            self._note_gap_upto(f.seq - 1)
            self.last_seq = f.seq
        self.stats.received += 1
        if recv_ns - f.t_pub_ns > self.late_after_ns:
            self.stats.late += 1
        if np.isnan(f.traces).any():
            self.stats.nan_frames += 1
        return f

    def _note_gap_upto(self, last: int) -> None:
        """Frames last_seq+1..last were never seen: record them as one gap."""
        first = self.last_seq + 1
        if last < first or self.session is None or not self._seen_frame:
            return
        self.stats.gaps += 1
        self.stats.missing += last - first + 1
        self.stats.gap_ranges.append((self.session.session_id, first, last))
        del self.stats.gap_ranges[:-MAX_GAP_RANGES]
        for seq in range(max(first, last - MAX_OUTSTANDING + 1), last + 1):
            self._outstanding[seq] = None
        while len(self._outstanding) > MAX_OUTSTANDING:
            self._outstanding.popitem(last=False)
        self.last_seq = last
