"""Message size limits on real loopback sockets: a cut-off subscriber comes back; the session bounds each part."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from neurocine.streams.formats.native import read_recording
from neurocine.streams.protocol import Frame, SessionHeader, encode_frame
from neurocine.streams.transport import (
    MAX_MESSAGE_BYTES,
    SESSION_PART_MARGIN,
    OversizedMessage,
    Publisher,
    Subscriber,
    session_part_limit,
)
from tests.conftest import REPO, free_port, wait_for


def _header(n: int, stimulus: tuple[int, int] | None = None, sid: str = "s1") -> SessionHeader:
    return SessionHeader(sid, "rig", "m", 30.0, np.arange(n, dtype=np.int64), stimulus_shape=stimulus)


def _frames(pub: Publisher, seqs: range, n: int) -> None:
    for i in seqs:
        pub.send_frame(i, i, np.full(n, i, np.float32), np.zeros(4, np.float32))


def test_a_recorder_cut_off_for_an_oversized_message_reconnects_and_records_what_follows(tmp_path: Path) -> None:
    """libzmq drops a peer that sends a part over MAXMSGSIZE and never retries it; the subscriber notices (socket
    monitor), says so in one log line, connects again and gets every valid frame sent after."""
    out, ep = tmp_path / "r.ncr", f"tcp://127.0.0.1:{free_port()}"
    rec = subprocess.Popen([sys.executable, "-m", "neurocine", "record", "--connect", ep, "--out", str(out),
                            "--until-end"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    n = 50
    try:
        with Publisher(ep, nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=60)
            pub.begin(_header(n))
            _frames(pub, range(10), n)
            assert wait_for(lambda: out.exists() and sum(len(v) for v in read_recording(out).frames.values()) == 10,
                            timeout=60)
            joins = pub.joins
            huge = np.zeros(MAX_MESSAGE_BYTES // 4 + 1, np.float32)  # a raw topic (what a recorder hears)
            pub.send_raw(encode_frame(pub.header.session_id, 10, 0, 0, huge, np.zeros(4, np.float32)))
            assert wait_for(lambda: pub.n_subscribers == 1 and pub.joins > joins, timeout=60)  # cut off, back
            pub.resend_header()
            _frames(pub, range(10, 40), n)
            pub.end()
        stdout, stderr = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0, stderr
    assert "cut this subscriber off" in stderr and "connecting again" in stderr
    (sid,) = read_recording(out).session_ids
    assert [f.seq for f in read_recording(out).frames[sid]] == list(range(40))
    assert json.loads(stdout)["record"]["frames"] == 40
    assert json.loads(stdout)["record"]["cutoffs"] == 1  # counted in its summary too


def test_the_session_header_bounds_every_part_of_its_frames() -> None:
    """Below the socket's ceiling, a frame part larger than the session can send is dropped before decoding,
    counted as `oversized`; valid frames around it arrive; a later session with more neurons gets its own limit."""
    n = 40
    errors: list[Exception] = []
    ep = f"tcp://127.0.0.1:{free_port()}"
    with Publisher(ep, nodrop=True) as pub, Subscriber(ep, on_error=errors.append) as sub:
        assert pub.wait_subscribers(1, timeout_s=30)
        pub.begin(_header(n))
        _frames(pub, range(2), n)
        big = session_part_limit(_header(n)) // 4 + 1  # one float more than the limit allows
        assert 4 * big < MAX_MESSAGE_BYTES
        pub.send_raw(encode_frame("s1", 2, 0, 0, np.zeros(big, np.float32), np.zeros(4, np.float32)))
        _frames(pub, range(3, 5), n)
        pub.end()
        pub.begin(_header(big, sid="s2"))  # a real session that size: its frames are fine
        _frames(pub, range(3), big)
        pub.end()
        got: list[tuple[str, int]] = []
        while len(got) < 7:
            m = sub.recv(timeout_s=30)
            assert m is not None, got
            if isinstance(m, Frame):
                got.append((m.session_id, m.seq))
        st = sub.stats
    assert got == [("s1", 0), ("s1", 1), ("s1", 3), ("s1", 4), ("s2", 0), ("s2", 1), ("s2", 2)]
    assert sub.oversized == 1 and st.errors_by_kind.get("oversized") == 1
    assert [type(e) for e in errors] == [OversizedMessage]
    assert f"{4 * big}" in str(errors[0])
    # a kept error does not keep its message alive (its traceback's frames held the parts: +270 MB under a flood)
    assert errors[0].__traceback__ is None and all(e.__traceback__ is None for e in sub.errors)


def test_session_part_limit_follows_the_header_under_the_ceiling() -> None:
    assert session_part_limit(_header(1000, (36, 64))) == 4000 + SESSION_PART_MARGIN
    assert session_part_limit(_header(10, (512, 512))) == 512 * 512 + SESSION_PART_MARGIN
    assert session_part_limit(_header(1000), ceiling=1000) == 1000
