"""Record a stream to disk: every valid message, bit-identical, append-only (``.ncr``), or as NWB.

NWB files cannot be appended safely, so an ``.nwb`` recording spools to ``<out>.partial.ncr`` while
it runs and is converted when it stops; if the process dies the spool is still a valid recording.

What a killed recorder loses: every message it received is written at once (one ``write`` per record,
no buffer in the process; the file is fsync'ed every second against power cuts, which ``kill -9`` is not),
so ``kill -9`` loses no received message; it loses what was still on its way to it. Under a backlog
(``replay --speed 0``) that is every queue between the publisher and this process, all full: the
publisher's queue (SNDHWM), both kernel TCP buffers, and the receive queue (RCVHWM). Unset, those held
thousands of frames (the kernel autotunes its buffers to MBs; measured 4,800 frames lost). So the recorder
keeps its side short (RECORD_RCVHWM messages, RECORD_RCVBUF bytes) and a replay its side (REPLAY_SNDHWM,
REPLAY_SNDBUF, streams/replay.py): `kill_loss_bound` frames at most (245 of the example session's
6.4 KB frames). Short queues lose nothing in normal operation: a replay waits for its slowest subscriber
(nodrop), and a live rig keeps its own 3,000-message queue per subscriber (nothing waits at 30 Hz; that
queue only fills, and could then be lost, while a recorder falls more than 3 s behind a live stream).
A restarted recorder appending to the same file leaves a hole
that ``neurocine inspect`` reports. The session header is written again every HEADER_REPEAT_S so that one
damaged record never loses a session.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from neurocine.streams.formats import FormatError
from neurocine.streams.formats.native import HEADER_REPEAT_S, NativeWriter, read_recording, session_from_messages
from neurocine.streams.protocol import Decoded, End, Frame, Heartbeat, SessionHeader
from neurocine.streams.transport import Subscriber

RECORD_RCVHWM = 100  # messages queued for the recorder in ZeroMQ (3.3 s of a live 30 Hz stream)
RECORD_RCVBUF = 64 * 1024  # bytes, the kernel's receive buffer (Linux doubles it)
#: Bytes a ZeroMQ TCP connection holds outside its queues: the kernel buffers (Linux allocates twice SO_SNDBUF
#: and SO_RCVBUF) and ZeroMQ's 8 KiB read and write batches.
_IN_FLIGHT_SLACK = 16 * 1024


def kill_loss_bound(frame_bytes: int, sndhwm: int | None = None, sndbuf: int | None = None) -> int:
    """Most frames a `kill -9` of `neurocine record` can lose under a flat-out `neurocine replay` (any backlog).

    Why a formula: the loss is what the queues and buffers between the two processes hold, so it follows
    from their sizes and the frame size (`frame_bytes`: one frame message on the wire)."""
    from neurocine.streams.replay import REPLAY_SNDBUF, REPLAY_SNDHWM

    sndhwm = REPLAY_SNDHWM if sndhwm is None else sndhwm
    sndbuf = REPLAY_SNDBUF if sndbuf is None else sndbuf
    kernel = 2 * (sndbuf + RECORD_RCVBUF) + _IN_FLIGHT_SLACK
    return RECORD_RCVHWM + sndhwm + -(-kernel // max(1, frame_bytes)) + 1  # +1: the message being written


@dataclasses.dataclass
class RecordSummary:
    path: str
    frames: int
    decoded: int
    sessions: list[str]
    gaps: int
    missing: int
    gap_ranges: list[list]
    duplicates: int
    out_of_order: int
    malformed: int
    unsynced: int
    late: int
    errors_by_kind: dict[str, int]
    seconds: float
    stopped_by: str
    stalls: int = 0  # times a live session went silent past the stall limit (each logged as a warning)
    stalled_s: float = 0.0
    cutoffs: int = 0  # times the publisher cut the recorder off and it connected again

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def record(
    sub: Subscriber,
    out: str | Path,
    *,
    max_frames: int | None = None,
    max_seconds: float | None = None,
    until_end: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> RecordSummary:
    """Write what `sub` delivers to `out` until a limit, an `end` (if `until_end`), or Ctrl-C."""
    out = Path(out)
    nwb = out.suffix.lower() == ".nwb"
    spool = out.with_name(out.name + ".partial.ncr") if nwb else out
    if nwb and spool.exists():
        raise FormatError(
            f"{spool}: a spool from an earlier (interrupted) run exists. It is a complete neurocine recording: "
            f"keep it under another name (e.g. mv it to {out.stem}-recovered.ncr; `neurocine inspect` and "
            f"`neurocine replay` read it) or remove it, then record again")
    frames = decoded = 0
    sessions: list[str] = []
    header_parts: list[bytes] | None = None
    last_header = 0.0
    t0 = time.monotonic()
    stopped_by = "end"
    with NativeWriter(spool) as writer:
        try:
            while True:
                if should_stop():
                    stopped_by = "stop"
                    break
                if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
                    stopped_by = "seconds"
                    break
                msg = sub.recv(timeout_s=0.2)
                if msg is None or isinstance(msg, Heartbeat):
                    writer.sync_if_due()  # idle: what was written still reaches the disk within the interval
                    continue
                now = time.monotonic()
                if isinstance(msg, Frame) and header_parts is not None and now - last_header >= HEADER_REPEAT_S:
                    writer.write(header_parts, sub.last_recv_ns)
                    last_header = now
                writer.write(sub.last_parts, sub.last_recv_ns)
                if isinstance(msg, SessionHeader):
                    sessions.append(msg.session_id)
                    header_parts = [bytes(getattr(p, "buffer", p)) for p in sub.last_parts]
                    last_header = now
                elif isinstance(msg, Frame):
                    frames += 1
                elif isinstance(msg, Decoded):
                    decoded += 1
                elif isinstance(msg, End) and until_end:
                    break
                if max_frames is not None and frames + decoded >= max_frames:
                    stopped_by = "frames"
                    break
        except KeyboardInterrupt:
            stopped_by = "interrupt"
    if nwb:
        _spool_to_nwb(spool, out)
    st = sub.stats
    return RecordSummary(
        path=str(out), frames=frames, decoded=decoded, sessions=sessions, gaps=st.gaps, missing=st.missing,
        gap_ranges=[list(r) for r in st.gap_ranges], duplicates=st.duplicates, out_of_order=st.out_of_order,
        malformed=st.malformed, unsynced=st.unsynced, late=st.late, errors_by_kind=st.errors_by_kind,
        seconds=round(time.monotonic() - t0, 3), stopped_by=stopped_by, stalls=st.stalls, stalled_s=st.stalled_s,
        cutoffs=st.cutoffs,
    )


def _spool_to_nwb(spool: Path, out: Path) -> None:
    from neurocine.streams.formats.nwb import write_nwb

    rec = read_recording(spool)
    if not rec.headers:
        raise FormatError(f"{spool}: nothing was recorded; no NWB file written")
    if len(rec.headers) > 1:
        for k, sid in enumerate(rec.session_ids):
            write_nwb(session_from_messages(rec.headers[sid], rec.frames[sid]), out.with_stem(f"{out.stem}-{k}"))
    else:
        sid = rec.session_ids[0]
        write_nwb(session_from_messages(rec.headers[sid], rec.frames[sid]), out)
    spool.unlink()
