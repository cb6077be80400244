"""The recorder's .ncr format: bit-identical, append-only, readable while written, crash-tolerant."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurocine.streams.formats import FormatError, load_session, save_session
from neurocine.streams.formats.native import NativeWriter, iter_records, read_native, read_recording
from neurocine.streams.protocol import encode_frame, encode_session
from neurocine.streams.replay import replay
from neurocine.streams.transport import Publisher
from tests.conftest import REPO, assert_sessions_equal, free_port, make_session, wait_for


def test_round_trip_bit_identical_with_trials_and_nan(tmp_path: Path) -> None:
    s = make_session(nan_fraction=0.05)
    save_session(s, tmp_path / "s.ncr")
    r = load_session(tmp_path / "s.ncr")
    assert_sessions_equal(s, r)
    assert r.trials == s.trials and r.session_id == s.session_id and r.mouse_id == s.mouse_id
    assert load_session(tmp_path / "s.ncr", tier="oracle").trials[0].index == 11


def _write_frames(path: Path, n: int, sync_interval: float = 1.0) -> NativeWriter:
    s = make_session(n_frames=n, n_trials=1)
    from neurocine.streams.session import header_of

    w = NativeWriter(path, fsync_interval_s=sync_interval)
    w.write(encode_session(header_of(s)))
    for i in range(n):
        w.write(encode_frame(s.session_id, i, i, i, s.traces[i], s.behaviour[i], s.stimulus[i]))
    return w


def test_readable_while_being_written(tmp_path: Path) -> None:
    w = _write_frames(tmp_path / "live.ncr", 20)
    assert read_native(tmp_path / "live.ncr").n_frames == 20  # writer still open
    w.write(encode_frame(read_native(tmp_path / "live.ncr").session_id, 20, 0, 0, np.zeros(40, np.float32),
                         np.zeros(4, np.float32), np.zeros((36, 64), np.uint8)))
    assert read_native(tmp_path / "live.ncr").n_frames == 21
    w.close()


def test_torn_tail_loses_only_the_torn_record(tmp_path: Path) -> None:
    p = tmp_path / "t.ncr"
    _write_frames(p, 30).close()
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    rec = read_recording(p)
    assert len(next(iter(rec.frames.values()))) == 29
    assert rec.report.torn_tail_bytes > 0 and rec.report.damaged_at == []


def test_damaged_middle_record_is_skipped_and_reported(tmp_path: Path) -> None:
    p = tmp_path / "d.ncr"
    _write_frames(p, 30).close()
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    rec = read_recording(p)
    frames = next(iter(rec.frames.values()))
    assert len(frames) == 29 and len(rec.report.damaged_at) == 1
    assert sorted(f.seq for f in frames) != list(range(29))  # the hole is where the damage was


def test_appending_to_a_foreign_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.ncr"
    p.write_bytes(b"not a recording")
    with pytest.raises(FormatError, match="not a neurocine recording; refusing to append"):
        NativeWriter(p)
    with pytest.raises(FormatError, match="bad magic"):
        list(iter_records(p))
    assert p.read_bytes() == b"not a recording"  # untouched


def test_empty_recording_is_a_clear_error(tmp_path: Path) -> None:
    NativeWriter(tmp_path / "e.ncr").close()
    with pytest.raises(FormatError, match="holds no session header"):
        read_native(tmp_path / "e.ncr")


def test_kill_9_during_recording_loses_at_most_the_last_second(tmp_path: Path) -> None:
    out = tmp_path / "k.ncr"
    port = free_port()
    session = make_session(n_frames=300, n_neurons=500, n_trials=1)
    import subprocess

    rec = subprocess.Popen([sys.executable, "-m", "neurocine", "record", "--connect", f"tcp://127.0.0.1:{port}",
                            "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Publisher(f"tcp://127.0.0.1:{port}", nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=20)
            stop_at = time.monotonic() + 2.0
            replay(session, pub, speed=1.0, should_stop=lambda: time.monotonic() > stop_at)
            sent = pub.last_seq + 1
            os.kill(rec.pid, signal.SIGKILL)
            rec.wait(10)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert wait_for(lambda: out.exists(), 1)
    got = read_native(out)
    assert sent >= 50
    assert got.n_frames >= sent - 30  # at most one second (30 frames) lost
    assert got.traces.tobytes() == session.traces[: got.n_frames].tobytes()


# ------------------------------------------------------------------------------------- damage
def _small_recording(path: Path, n: int = 6) -> int:
    """header, n frames, header again, end (what write_native writes); returns the record count."""
    save_session(make_session(n_frames=n, n_neurons=4, n_trials=1, stimulus=False), path)
    return sum(1 for _ in iter_records(path))


def test_any_single_corrupted_byte_loses_at_most_the_record_it_hits(tmp_path: Path) -> None:
    p = tmp_path / "s.ncr"
    total = _small_recording(p)
    clean = p.read_bytes()
    n_frames = read_native(p).n_frames
    for pos in range(len(clean)):
        data = bytearray(clean)
        data[pos] ^= 0x5A
        p.write_bytes(bytes(data))
        rec = read_recording(p)
        (sid,) = rec.session_ids  # the session survives wherever the byte was (its header is repeated)
        kept = len(rec.frames[sid]) + 1 + len(rec.ends)
        assert kept >= total - 2, pos  # header copies count once; at most one record lost
        assert len(rec.frames[sid]) >= n_frames - 1, pos
        if pos >= len(b"NCREC\x00v1"):
            assert rec.report.damaged, pos


def test_frames_before_a_damaged_first_header_are_salvaged(tmp_path: Path) -> None:
    p = tmp_path / "s.ncr"
    _small_recording(p)
    data = bytearray(p.read_bytes())
    data[8 + 12 + 20] ^= 0xFF  # inside the first record (the session header)
    p.write_bytes(bytes(data))
    assert read_native(p).n_frames == 6
    r = subprocess.run([sys.executable, "-m", "neurocine", "inspect", str(p)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "damaged" in r.stderr
    assert json.loads(r.stdout)["damage"]["damaged_at"] == [8]


def test_holes_are_reported_and_a_clean_file_inspects_clean(tmp_path: Path) -> None:
    p = tmp_path / "h.ncr"
    w = _write_frames(p, 10)
    sid = read_native(p).session_id
    for seq in (15, 16):  # a restarted recorder appending later frames
        w.write(encode_frame(sid, seq, 0, 0, np.zeros(40, np.float32), np.zeros(4, np.float32),
                             np.zeros((36, 64), np.uint8)))
    w.close()
    rec = read_recording(p)
    assert rec.report.holes == {sid: [[10, 14]]} and rec.report.missing == {sid: 5} and not rec.report.damaged
    r = subprocess.run([sys.executable, "-m", "neurocine", "inspect", str(p)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["holes"][sid]["missing"] == 5


@functools.lru_cache(maxsize=1)
def _clean_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        _small_recording(Path(d) / "c.ncr")
        return (Path(d) / "c.ncr").read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=400), at=st.integers(0, 10_000), cut=st.integers(0, 400))
def test_reader_fuzzed_never_raises_anything_but_format_error(tmp_path: Path, junk: bytes, at: int,
                                                              cut: int) -> None:
    clean = _clean_bytes()
    at = at % (len(clean) + 1)
    p = tmp_path / "f.ncr"
    p.write_bytes(clean[:at] + junk + clean[at + cut :])
    try:
        rec = read_recording(p)
    except FormatError:
        return
    assert sum(len(v) for v in rec.frames.values()) <= 6


def test_the_shipped_example_holds_its_header_at_least_once_a_second_of_frames() -> None:
    """One damaged byte in the shipped example loses at most a second of it, never the session (its header is
    repeated as `neurocine record` repeats it)."""
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats.native import header_every
    from neurocine.streams.protocol import Frame, SessionHeader, parse_message

    headers, since, longest = 0, 0, 0
    for _, parts in iter_records(example_session_path()):
        msg = parse_message(parts)
        if isinstance(msg, SessionHeader):
            headers, since, rate = headers + 1, 0, msg.frame_rate
        elif isinstance(msg, Frame):
            since += 1
            longest = max(longest, since)
    assert headers >= 2 and longest <= rate == 30.0 and header_every(rate) == 30
    session = load_session(example_session_path())
    assert session.mouse_id == "synthetic-0" and session.n_frames == 1200 and len(session.trials) == 4


def test_a_written_recording_repeats_its_header_every_second_of_frames(tmp_path: Path) -> None:
    session = make_session(n_frames=100)  # 30 Hz: copies before frames 0, 30, 60, 90, and at the end
    save_session(session, tmp_path / "s.ncr")
    kinds = [bytes(parts[0]) for _, parts in iter_records(tmp_path / "s.ncr")]
    at = [kinds[:k].count(b"frame") for k, kind in enumerate(kinds) if kind == b"session"]
    assert at == [0, 30, 60, 90, 100]
