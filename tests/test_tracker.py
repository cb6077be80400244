"""Stream bookkeeping: gaps reported as ranges, duplicates, out-of-order, restarts, late joiners."""

from __future__ import annotations

import numpy as np
import pytest

from neurocine.streams.protocol import End, Frame, FrameBeforeSession, Heartbeat, SessionHeader, SessionMismatch
from neurocine.streams.tracker import ImplausibleClaim, StreamTracker

N = 8


def hdr(sid: str = "a") -> SessionHeader:
    return SessionHeader(sid, "replay", "m", 30.0, np.arange(N, dtype=np.int64))


def frame(seq: int, sid: str = "a", t_pub: int = 0) -> Frame:
    return Frame(sid, seq, seq, t_pub, np.zeros(N, np.float32), np.zeros(4, np.float32))


def feed(t: StreamTracker, seqs, sid: str = "a") -> list[int]:
    out = []
    for s in seqs:
        m = t.accept(frame(s, sid), recv_ns=0)
        if m is not None:
            out.append(m.seq)
    return out


def test_gaps_are_reported_as_ranges() -> None:
    t = StreamTracker()
    t.accept(hdr())
    delivered = feed(t, [0, 1, 2, 5, 6, 10])
    assert delivered == [0, 1, 2, 5, 6, 10]
    assert t.stats.gaps == 2 and t.stats.missing == 5
    assert t.stats.gap_ranges == [("a", 3, 4), ("a", 7, 9)]


def test_duplicates_dropped_and_late_fill_counted_out_of_order() -> None:
    t = StreamTracker()
    t.accept(hdr())
    delivered = feed(t, [0, 1, 1, 3, 2, 2, 0])
    assert delivered == [0, 1, 3, 2]
    assert t.stats.duplicates == 3 and t.stats.out_of_order == 1 and t.stats.missing == 0
    assert t.stats.received == 4


def test_trailing_loss_seen_through_heartbeat_and_end() -> None:
    t = StreamTracker()
    t.accept(hdr())
    feed(t, [0, 1])
    t.accept(Heartbeat("a", 0, 4))
    assert t.stats.gap_ranges == [("a", 2, 4)]
    t.accept(End("a", 8))
    assert t.stats.gap_ranges[-1] == ("a", 5, 7) and t.stats.missing == 6 and t.ended


def test_header_resend_is_silent_and_restart_is_a_new_session() -> None:
    t = StreamTracker()
    assert t.accept(hdr()) is not None
    assert t.accept(hdr()) is None  # periodic re-send
    feed(t, [0, 1, 2])
    new = t.accept(hdr("b"))
    assert isinstance(new, SessionHeader) and t.stats.sessions == 2
    assert feed(t, [0, 1], sid="b") == [0, 1]  # sequence numbers restart without a false gap
    assert t.stats.gaps == 0 and t.stats.duplicates == 0


def test_frames_before_header_are_unsynced_not_malformed() -> None:
    t = StreamTracker()
    with pytest.raises(FrameBeforeSession):
        t.accept(frame(7))
    t.accept(hdr())
    with pytest.raises(SessionMismatch, match="frame 3 of session zzz"):
        t.accept(frame(3, "zzz"))
    assert t.stats.unsynced == 2 and t.stats.malformed == 0
    # a late joiner starts at whatever sequence number it first sees: no gap for what came before
    assert feed(t, [40, 41]) == [40, 41] and t.stats.gaps == 0


def test_changed_header_under_same_id_is_an_error() -> None:
    t = StreamTracker()
    t.accept(hdr())
    changed = SessionHeader("a", "replay", "m", 60.0, np.arange(N, dtype=np.int64))
    with pytest.raises(SessionMismatch, match="different header"):
        t.accept(changed)


def test_late_frames_counted() -> None:
    t = StreamTracker(late_after_s=0.1)
    t.accept(hdr())
    t.accept(frame(0, t_pub=0), recv_ns=50_000_000)
    t.accept(frame(1, t_pub=0), recv_ns=250_000_000)
    assert t.stats.late == 1


def test_late_joiner_heartbeat_before_first_frame_is_not_a_gap() -> None:
    t = StreamTracker()
    t.accept(hdr())
    t.accept(Heartbeat("a", 0, 99))
    assert feed(t, [100, 101]) == [100, 101]
    assert t.stats.gaps == 0 and t.stats.missing == 0


# ---------------------------------------------------------------------------------------- single poisons
def test_forged_huge_heartbeat_cannot_blind_the_tracker() -> None:
    t = StreamTracker()
    t.accept(hdr())
    feed(t, [0, 1])
    with pytest.raises(ImplausibleClaim):
        t.accept(Heartbeat("a", 0, 1 << 62))
    assert feed(t, [2, 3]) == [2, 3]  # later frames are not taken for duplicates
    assert t.stats.rejected == 1 and t.stats.missing == 0 and t.stats.duplicates == 0


def test_forged_end_is_checked_against_what_was_received() -> None:
    t = StreamTracker()
    t.accept(hdr())
    feed(t, [0, 1, 2, 3])
    with pytest.raises(ImplausibleClaim, match="frame 3 was received"):
        t.accept(End("a", 2))  # claims fewer frames than were received
    with pytest.raises(ImplausibleClaim):
        t.accept(End("a", 1 << 40))
    assert not t.ended and feed(t, [4]) == [4]


def test_a_single_far_jump_is_held_and_cannot_blind_later_frames() -> None:
    t = StreamTracker()
    t.accept(hdr())
    feed(t, [0, 1])
    assert feed(t, [1 << 62]) == []  # one forged sequence number: held, not believed
    assert feed(t, [2, 3]) == [2, 3]
    assert t.stats.rejected == 1 and t.stats.gaps == 0
    # a real jump (the next frame continues it) is believed one frame later, as one gap: O(1), not O(jump)
    assert feed(t, [50_000, 50_001, 50_002]) == [50_001, 50_002]
    assert t.stats.gap_ranges[-1] == ("a", 4, 50_000)


def test_out_of_order_frames_are_dropped_and_counted_when_order_is_needed() -> None:
    t = StreamTracker(in_order=True)
    t.accept(hdr())
    assert feed(t, [0, 2, 1, 3, 3]) == [0, 2, 3]
    assert t.stats.out_of_order == 1 and t.stats.dropped_late == 1 and t.stats.duplicates == 1


def test_many_gaps_keep_memory_bounded_and_late_fill_works() -> None:
    t = StreamTracker()
    t.accept(hdr())
    seqs = list(range(0, 20_000, 2))  # every other frame lost: 9,999 gaps
    feed(t, seqs)
    assert len(t._outstanding) <= 1000
    assert feed(t, [19_997, 19_997, 1]) == [19_997]  # recent late frame fills in; a very old one is a duplicate


def test_a_foreign_header_cannot_switch_a_streaming_session() -> None:
    t = StreamTracker(switch_hold_s=0.5)
    t.accept(hdr(), recv_ns=0)
    for s in range(5):
        t.accept(frame(s), recv_ns=s * 33_000_000)
    assert t.accept(hdr("intruder"), recv_ns=170_000_000) is None  # held: frames of "a" still flow
    assert t.accept(frame(5), recv_ns=200_000_000) is not None
    assert t.stats.held_sessions == 1 and t.session.session_id == "a"
    # the rig really restarted: "a" went silent; the new session's frame switches over (its header first)
    new = t.accept(frame(0, "intruder"), recv_ns=900_000_000)
    assert isinstance(new, SessionHeader) and new.session_id == "intruder"
    assert t.accept(frame(1, "intruder"), recv_ns=933_000_000).seq == 1


def test_a_consumer_away_with_messages_waiting_does_not_take_a_strangers_header_for_a_restart() -> None:
    """A recorder stalled 2 s on a slow disk, then reading its backlog: a stranger's header first, then the
    real session's frames still queued. The stall is not the stream's silence: the header stays held."""
    t = StreamTracker(switch_hold_s=0.5)
    t.accept(hdr(), recv_ns=0)
    for s in range(5):
        t.accept(frame(s), recv_ns=s * 33_000_000)
    t.note_away(2_000_000_000)  # the consumer came back after 2 s with messages waiting
    assert t.accept(hdr("intruder"), recv_ns=2_140_000_000) is None
    assert t.session.session_id == "a" and t.stats.held_sessions == 1
    assert [m.seq for m in (t.accept(frame(s), recv_ns=2_141_000_000 + s) for s in (5, 6))] == [5, 6]
    # without the note, the same gap reads as silence and the stranger takes over: what the note prevents
    u = StreamTracker(switch_hold_s=0.5)
    u.accept(hdr(), recv_ns=0)
    u.accept(frame(0), recv_ns=0)
    assert isinstance(u.accept(hdr("intruder"), recv_ns=2_140_000_000), SessionHeader)


def test_the_frame_that_switches_to_a_held_session_is_delivered_after_its_header_with_the_headers_parts() -> None:
    """A rig restarted within the hold: its header is held, its first frame switches; the consumer gets the
    header (and the header's own raw parts, which a recorder writes) and then that frame: nothing lost."""
    from neurocine.streams.protocol import encode_frame, encode_session, parse_message

    t = StreamTracker(switch_hold_s=0.5)
    t.accept_parts(encode_session(hdr()), recv_ns=0)
    t.accept_parts(encode_frame("a", 0, 0, 0, np.zeros(N, np.float32), np.zeros(4, np.float32)), recv_ns=0)
    assert t.accept_parts(encode_session(hdr("b")), recv_ns=100_000_000) is None  # "a" still streams: held
    first_b = encode_frame("b", 0, 0, 0, np.ones(N, np.float32), np.zeros(4, np.float32))
    got = t.accept_parts(first_b, recv_ns=900_000_000)  # "a" went silent: "b"'s frame switches
    assert isinstance(got, SessionHeader) and got.session_id == "b"
    assert isinstance(parse_message(t.delivered_parts), SessionHeader)  # the header's parts, not the frame's
    msg, parts, recv_ns = t.take_next()
    assert isinstance(msg, Frame) and (msg.session_id, msg.seq) == ("b", 0) and parts is first_b
    assert recv_ns == 900_000_000 and t.take_next() is None and t.stats.received == 2
