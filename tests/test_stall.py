"""No silent stall: a live session that goes silent is logged and counted, and a subscriber cut off by a
broken stream or left by a restarted publisher hears frames again within a second, on real loopback sockets."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from neurocine.streams.protocol import Frame, SessionHeader
from neurocine.streams.stall import StallConfig, StallWatch
from neurocine.streams.transport import Publisher, Subscriber
from tests.conftest import free_port, wait_for

N = 20


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The messages logged on `neurocine.<name>` inside the block (the verbs' loggers do not propagate)."""
    handler, log = _Lines(), logging.getLogger(f"neurocine.{name}")
    log.addHandler(handler)
    try:
        yield handler.lines
    finally:
        log.removeHandler(handler)


def _header(sid: str) -> SessionHeader:
    return SessionHeader(sid, "rig", "m", 30.0, np.arange(N, dtype=np.int64))


def _send(pub: Publisher, seq: int) -> None:
    pub.send_frame(seq, time.time_ns(), np.full(N, seq % 7, np.float32), np.zeros(4, np.float32))


# ---------------------------------------------------------------------------------------------- the watch alone
def test_watch_warns_once_when_a_live_session_goes_silent_and_again_when_it_is_back() -> None:
    with logged("stalltest") as lines:
        w = StallWatch(StallConfig(stall_after_s=2.0, repeat_s=10.0), logging.getLogger("neurocine.stalltest"), "ep")
        w.check(100.0)  # nothing expected yet: no session
        w.session("s", 0.0)
        w.frame(0, 0.5)
        w.check(2.4)
        assert not w.stalled and lines == []
        w.check(2.6, hint="no heartbeat either")
        assert w.stalled and w.stalls == 1 and len(lines) == 1
        assert "no valid frame for 2.1 s from ep" in lines[0] and "last seq 0" in lines[0]
        assert "no heartbeat either" in lines[0]
        w.check(5.0)
        assert len(lines) == 1  # one line when it starts ...
        w.check(12.7)
        assert len(lines) == 2 and "still no valid frame after 12.2 s" in lines[1]  # ... then one per repeat_s
        assert w.stalled_for(12.7) == pytest.approx(12.2)
        w.frame(400, 13.0)
        assert not w.stalled and "back after 12.5 s" in lines[2]
        assert w.as_dict(13.0) == {"stalled": False, "stalled_for_s": 0.0, "stalls": 1, "stalled_s": 12.5,
                                   "longest_stall_s": 12.5}


def test_watch_takes_the_silence_after_an_end_for_normal() -> None:
    w = StallWatch(StallConfig(stall_after_s=1.0))
    w.session("s", 0.0)
    w.frame(0, 0.0)
    w.ended(0.1)
    w.check(60.0)
    assert not w.stalled and w.stalls == 0
    w.frame(1, 61.0)  # the rig resumes after its `end`: expected again
    w.check(62.5)
    assert w.stalled and w.stalls == 1


# ---------------------------------------------------------------------------------------------- real sockets
def test_a_subscriber_says_so_when_the_session_stops_and_counts_it() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    with logged("stalltest") as lines, Publisher(ep) as pub, \
            Subscriber(ep, stall=StallConfig(stall_after_s=0.8), log_name="stalltest") as sub:
        assert pub.wait_subscribers(1, 10)
        pub.begin(_header("s"))
        for seq in range(5):
            _send(pub, seq)
        got: list[int] = []
        assert wait_for(lambda: isinstance(m := sub.recv(timeout_s=0.05), Frame) and got.append(m.seq) is None
                        and len(got) == 5, timeout=10)
        assert got == list(range(5))
        # the rig stops sending frames but stays up (heartbeats): recv keeps timing out, the stall is noticed
        assert wait_for(lambda: (pub.tick(), sub.recv(timeout_s=0.05))[1] is None and sub.stats.stalled, timeout=10)
        st = sub.stats
        assert st.stalls == 1 and st.stalled_for_s >= 0.8  # longer than the heartbeat interval: heartbeats came
        assert any("STALLED" in x and "heartbeat(s): the publisher is up but sends no frame" in x for x in lines)
        _send(pub, 5)
        assert isinstance(sub.recv(timeout_s=5), Frame)
        assert not sub.stats.stalled and sub.stats.stalls == 1 and any("back after" in x for x in lines)
        pub.end()
        assert wait_for(lambda: sub.recv(timeout_s=0.05) is not None and sub.tracker.ended, timeout=5)
        t_end = time.monotonic()
        while time.monotonic() < t_end + 1.6:  # twice the limit of silence after an `end`: normal, not a stall
            sub.recv(timeout_s=0.1)
        assert sub.stats.stalls == 1


def _first_seq_heard(sub: Subscriber, pub: Publisher, n: int) -> int | None:
    """Send frames 0..n-1 at 30 Hz; the first seq `sub` received (None: none)."""
    t0, first = time.monotonic(), None
    for seq in range(n):
        _send(pub, seq)
        while time.monotonic() < t0 + (seq + 1) / 30:
            m = sub.recv(timeout_s=0.005)
            if isinstance(m, Frame) and first is None:
                first = m.seq
        pub.tick()
    return first


def test_a_restarted_publisher_is_heard_again_within_a_second() -> None:
    """ZeroMQ reconnects by itself here; the header that a publisher sends on a join spares the wait for its
    periodic re-send. Within a second, counted in the new publisher's own frames (30 Hz)."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(ep) as sub:
        with Publisher(ep) as pub:
            assert pub.wait_subscribers(1, 10)
            pub.begin(_header("before"))
            assert _first_seq_heard(sub, pub, 10) == 0
        time.sleep(1.5)  # down long enough for ZeroMQ's reconnect interval to back off to its longest
        with Publisher(ep) as pub:
            pub.begin(_header("after"))  # no waiting for the subscriber: a rig restarted by systemd does not
            first = _first_seq_heard(sub, pub, 60)
    assert first is not None and first < 30, first  # frames sent in the first second reach it
    assert sub.session is not None and sub.session.session_id == "after"


def _broken_zmtp_server(port: int, stop: threading.Event) -> socket.socket:
    """A TCP peer on `port` that answers every connection with a ZMTP 3 greeting naming no real mechanism."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    srv.settimeout(0.05)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"BOGUS".ljust(20, b"\x00") + b"\x00" * 32

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError):
                conn.sendall(greeting)
            conn.close()
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_a_subscriber_cut_off_by_a_broken_stream_connects_again() -> None:
    """A handshake that fails (HANDSHAKE_FAILED_PROTOCOL) is a cut-off ZeroMQ never retries: without our
    reconnect this subscriber would stay deaf to the real publisher that binds the port afterwards."""
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    stop = threading.Event()
    _broken_zmtp_server(port, stop)
    with logged("stalltest") as lines, Subscriber(ep, log_name="stalltest") as sub:
        assert wait_for(lambda: sub.recv(timeout_s=0.05) is None and sub.cutoffs >= 1, timeout=10)
        stop.set()
        assert wait_for(lambda: _port_free(port), timeout=10)
        with Publisher(ep) as pub:
            pub.begin(_header("real"))
            first = _first_seq_heard(sub, pub, 60)
    assert first is not None and first < 30, first
    assert any("cut this subscriber off" in x for x in lines)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
