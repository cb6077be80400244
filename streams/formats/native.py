"""The recorder's own format (``.ncr``): an append-only log of wire messages, crash-safe and replayable.

Layout (all integers little-endian)::

    file   := MAGIC record*
    record := SYNC u32:body_len u32:crc32(body) body
    body   := u64:recv_ns u16:n_parts (u32:part_len)*n_parts part*

Each part is the exact bytes that travelled on the wire, so a recording is bit-identical to what
was received and replays through the same protocol decoder. A record is written with one
``write`` call (so ``kill -9`` of the writer loses no written record: the OS holds it) and the file is
fsync'ed at least once a second (a power cut loses at most the last second). What ``kill -9`` of a
*recorder* loses is what still waited in ZeroMQ's queues: see streams/record.py.

Damage costs at most the record it hits: readers skip a damaged record by searching for the next SYNC
marker with a valid CRC, stop cleanly at a torn tail (a recording still being written, or a crash),
accept a damaged magic when intact records follow, and the session header is repeated at least once a
second of frames (HEADER_REPEAT_S: the recorder by its clock, write_native by frame count) so losing one copy
loses no session; frames are matched to their header by session id wherever in the file it is. The report lists
damage, a torn tail and holes (missing sequence numbers, e.g. where a restarted recorder appended).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.protocol import (
    Decoded,
    End,
    Frame,
    ProtocolError,
    SessionHeader,
    encode_end,
    encode_frame,
    encode_session,
    parse_message,
)
from neurocine.streams.session import Session, Trial, frame_segments, frame_trials, header_of

MAGIC = b"NCREC\x00v1"
SYNC = b"NCR\x1e"
_REC = struct.Struct("<4sII")  # sync, body length, crc32
_BODY = struct.Struct("<QH")  # recv_ns, n_parts
MAX_BODY = 1 << 30
#: A recording holds its session header again at least this often (seconds of frames): a damaged byte then costs
#: the frames up to the next copy at most, never the session.
HEADER_REPEAT_S = 1.0
MAX_HOLES = 100  # holes listed per session (all are counted)


def _format_error(msg: str) -> Exception:
    from neurocine.streams.formats import FormatError

    return FormatError(msg)


@dataclasses.dataclass
class ReadReport:
    """What a reader skipped: damaged records in the middle and an incomplete tail."""

    records: int = 0
    skipped_bytes: int = 0
    damaged_at: list[int] = dataclasses.field(default_factory=list)
    torn_tail_bytes: int = 0
    undecodable: list[str] = dataclasses.field(default_factory=list)
    bad_magic: bool = False
    orphan_frames: dict[str, int] = dataclasses.field(default_factory=dict)  # frames whose header is lost
    holes: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)  # session -> [first, last]
    missing: dict[str, int] = dataclasses.field(default_factory=dict)  # session -> frames inside holes

    @property
    def damaged(self) -> bool:
        """The file itself is damaged (not merely holes from a lossy stream)."""
        return bool(self.damaged_at or self.torn_tail_bytes or self.undecodable or self.bad_magic
                    or self.orphan_frames)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["undecodable"] = self.undecodable[:10]
        d["damaged"] = self.damaged
        return d


class NativeWriter:
    """Appends wire messages to an .ncr file; safe against crashes of the writing process."""

    def __init__(self, path: str | Path, fsync_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.fsync_interval_s = fsync_interval_s
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            with open(self.path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise _format_error(f"{self.path}: exists and is not a neurocine recording; refusing to append")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if new:
            os.write(self._fd, MAGIC)
            os.fsync(self._fd)
        self._last_sync = time.monotonic()
        self._synced_records = 0
        self.records = 0
        self.bytes_written = 0

    def __enter__(self) -> NativeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, parts: Sequence[Any], recv_ns: int | None = None) -> None:
        """Append one message (its raw parts) as a single record."""
        bufs = [memoryview(getattr(p, "buffer", p)).cast("B") for p in parts]
        head = _BODY.pack(time.time_ns() if recv_ns is None else recv_ns, len(bufs))
        lens = struct.pack(f"<{len(bufs)}I", *(len(b) for b in bufs))
        crc = zlib.crc32(lens, zlib.crc32(head))
        for b in bufs:
            crc = zlib.crc32(b, crc)
        body_len = len(head) + len(lens) + sum(len(b) for b in bufs)
        record = b"".join([_REC.pack(SYNC, body_len, crc), head, lens, *bufs])
        view = memoryview(record)
        while view:  # one write for the whole record in practice; loop only on a short write
            view = view[os.write(self._fd, view):]
        self.records += 1
        self.bytes_written += len(record)
        self.sync_if_due()

    def sync_if_due(self) -> None:
        """fsync when something was written since the last one and the interval has passed; a writer that
        falls idle calls this too, so its last records reach the disk within the interval, not at the next write."""
        if self.records != self._synced_records and time.monotonic() - self._last_sync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fd)
        self._last_sync = time.monotonic()
        self._synced_records = self.records

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def iter_records(path: str | Path, report: ReadReport | None = None) -> Iterator[tuple[int, list[bytes]]]:
    """Yield (recv_ns, parts) of each intact record; damage and a torn tail go into `report`."""
    report = report if report is not None else ReadReport()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise _format_error(f"{p}: cannot read ({e})") from e
    pos, end = len(MAGIC), len(data)
    mv = memoryview(data)
    if not data.startswith(MAGIC):
        # One damaged byte in the magic must not lose the file: go on when an intact record follows.
        wrong = sum(a != b for a, b in zip(data[: len(MAGIC)].ljust(len(MAGIC), b"\0"), MAGIC, strict=True))
        if wrong > 2 or _parse_record(mv, pos, end) is None:
            raise _format_error(f"{p}: not a neurocine recording (bad magic {data[:8]!r})")
        report.bad_magic = True
    while pos < end:
        parsed = _parse_record(mv, pos, end)
        if parsed is None:
            nxt = data.find(SYNC, pos + 1)
            # Torn tail: nothing intact after this point (a crash or a writer still busy).
            if nxt < 0 or not _any_valid_record_from(mv, nxt, end):
                report.torn_tail_bytes = end - pos
                return
            report.damaged_at.append(pos)
            report.skipped_bytes += nxt - pos
            pos = nxt
            continue
        recv_ns, parts, pos = parsed
        report.records += 1
        yield recv_ns, parts


def _any_valid_record_from(mv: memoryview, pos: int, end: int) -> bool:
    data = mv.obj
    while pos >= 0:
        if _parse_record(mv, pos, end) is not None:
            return True
        pos = data.find(SYNC, pos + 1)  # type: ignore[union-attr]
    return False


def _parse_record(mv: memoryview, pos: int, end: int) -> tuple[int, list[bytes], int] | None:
    if end - pos < _REC.size:
        return None
    sync, body_len, crc = _REC.unpack_from(mv, pos)
    start = pos + _REC.size
    if sync != SYNC or body_len > MAX_BODY or start + body_len > end or body_len < _BODY.size:
        return None
    body = mv[start : start + body_len]
    if zlib.crc32(body) != crc:
        return None
    recv_ns, n_parts = _BODY.unpack_from(body, 0)
    off = _BODY.size
    if off + 4 * n_parts > body_len:
        return None
    lens = struct.unpack_from(f"<{n_parts}I", body, off)
    off += 4 * n_parts
    if off + sum(lens) != body_len:
        return None
    parts = []
    for n in lens:
        parts.append(bytes(body[off : off + n]))
        off += n
    return recv_ns, parts, start + body_len


@dataclasses.dataclass
class Recording:
    """Everything in a recording, grouped by session, in the order received."""

    headers: dict[str, SessionHeader]
    frames: dict[str, list[Frame]]
    ends: dict[str, End]
    decoded: dict[str, list[Decoded]]
    report: ReadReport

    @property
    def session_ids(self) -> list[str]:
        return list(self.headers)


def read_recording(path: str | Path) -> Recording:
    """Decode every record; invalid messages are listed in the report, never fatal."""
    report = ReadReport()
    rec = Recording({}, {}, {}, {}, report)
    frames: dict[str, list[Frame]] = {}
    for _, parts in iter_records(path, report):
        try:
            msg = parse_message(parts)
        except ProtocolError as e:
            report.undecodable.append(str(e))
            continue
        if isinstance(msg, SessionHeader):
            rec.headers.setdefault(msg.session_id, msg)
        elif isinstance(msg, Frame):
            frames.setdefault(msg.session_id, []).append(msg)  # its header may come later (a repeat)
        elif isinstance(msg, End):
            rec.ends[msg.session_id] = msg
        elif isinstance(msg, Decoded):
            rec.decoded.setdefault(msg.session_id, []).append(msg)
    for sid in rec.headers:
        rec.frames[sid] = [f for f in frames.get(sid, []) if f.traces.shape[0] == rec.headers[sid].n_neurons]
        holes = _holes(f.seq for f in rec.frames[sid])
        if holes:
            report.holes[sid] = holes[:MAX_HOLES]
            report.missing[sid] = sum(b - a + 1 for a, b in holes)
    report.orphan_frames = {sid: len(v) for sid, v in frames.items() if sid not in rec.headers}
    return rec


def _holes(seqs: Iterator[int]) -> list[list[int]]:
    """[first, last] runs of sequence numbers missing between the lowest and the highest present."""
    s = sorted(set(seqs))
    return [[a + 1, b - 1] for a, b in itertools.pairwise(s) if b - a > 1]


def session_from_messages(header: SessionHeader, frames: Sequence[Frame]) -> Session:
    """Build a Session from a header and its frames (sorted by seq, duplicates dropped)."""
    by_seq: dict[int, Frame] = {}
    for f in frames:
        by_seq.setdefault(f.seq, f)
    ordered = [by_seq[s] for s in sorted(by_seq)]
    n, t = header.n_neurons, len(ordered)
    traces = np.empty((t, n), np.float32)
    behaviour = np.empty((t, 4), np.float32)
    stimulus = None
    if header.stimulus_shape is not None and all(f.stimulus is not None for f in ordered):
        stimulus = np.empty((t, *header.stimulus_shape), np.uint8)
    for i, f in enumerate(ordered):
        traces[i] = f.traces
        behaviour[i] = f.behaviour
        if stimulus is not None:
            stimulus[i] = f.stimulus
    return Session(
        traces=traces,
        behaviour=behaviour,
        timestamps_ns=np.array([f.t_acq_ns for f in ordered], np.int64),
        neuron_ids=header.neuron_ids.copy(),
        frame_rate=header.frame_rate,
        mouse_id=header.mouse_id,
        stimulus=stimulus,
        trials=_trials_from_frames(ordered, header.trial_tiers),
        session_id=header.session_id,
        source=header.source,
        start_time_ns=header.start_time_ns,
    )


def _trials_from_frames(frames: Sequence[Frame], tiers: dict[int, str]) -> list[Trial]:
    """Runs of frames with one trial index and one segment; a run whose segment differs from the previous
    frame's follows a cut (a replay of non-contiguous trials, or a --loop starting again)."""
    if not frames or all(f.trial is None and f.segment is None for f in frames):
        return []
    trials: list[Trial] = []
    start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or (frames[i].trial, frames[i].segment) != (frames[start].trial, frames[start].segment):
            idx = frames[start].trial if frames[start].trial is not None else -1
            cut = start > 0 and frames[start].segment != frames[start - 1].segment
            trials.append(Trial(idx, start, i, tiers.get(idx, "none"), cut))
            start = i
    return trials


def read_native(path: str | Path, session_id: str | None = None) -> Session:
    """The (first, or named) session of a recording as an in-memory Session."""
    rec = read_recording(path)
    if not rec.headers:
        raise _format_error(f"{path}: holds no session header ({rec.report.records} records)")
    if session_id is None:
        session_id = rec.session_ids[0]
    if session_id not in rec.headers:
        raise _format_error(f"{path}: no session {session_id!r} (has {rec.session_ids})")
    return session_from_messages(rec.headers[session_id], rec.frames[session_id])


def header_every(frame_rate: float) -> int:
    """Frames between two copies of the session header in a written recording (one second's worth)."""
    return max(1, int(frame_rate * HEADER_REPEAT_S))


def write_native(session: Session, path: str | Path) -> None:
    """Write a whole session as a recording (as if it had been received), atomically."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.unlink(missing_ok=True)
    trial_of, segment_of = frame_trials(session), frame_segments(session)
    with NativeWriter(tmp, fsync_interval_s=3600) as w:
        head = encode_session(header_of(session))
        every = header_every(session.frame_rate)
        w.write(head, 0)
        for seq, t_acq, traces, behaviour, stim in session.iter_frames():
            if seq and seq % every == 0:
                w.write(head, 0)  # repeated: one damaged copy loses no session
            w.write(encode_frame(session.session_id, seq, t_acq, 0, traces, behaviour, stim, int(trial_of[seq]),
                                 int(segment_of[seq])), 0)
        w.write(head, 0)  # and once more at the end: at least two copies, whatever the length
        w.write(encode_end(End(session.session_id, session.n_frames, "complete", 0)), 0)
    os.replace(tmp, p)
