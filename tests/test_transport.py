"""ZeroMQ transport over real loopback sockets: completeness, gaps, late joiners, restarts, garbage."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import zmq

from neurocine.streams.bench_transport import measure
from neurocine.streams.protocol import End, Frame, SessionHeader, encode_frame
from neurocine.streams.session import new_session_id
from neurocine.streams.transport import HELLO_PREFIX, Publisher, Subscriber, TransportError
from tests.conftest import free_port, wait_for

N = 64


def header(n: int = N, sid: str | None = None) -> SessionHeader:
    return SessionHeader(sid or new_session_id(), "replay", "m", 30.0, np.arange(n, dtype=np.int64))


def drain(sub: Subscriber, until_end: bool = True, timeout_s: float = 5.0) -> list:
    out = []
    while True:
        m = sub.recv(timeout_s=timeout_s)
        if m is None:
            return out
        out.append(m)
        if until_end and isinstance(m, End):
            return out


def test_every_frame_arrives_bit_identical() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(200, N)).astype(np.float32)
    with Publisher("tcp://127.0.0.1:0", nodrop=True) as pub, Subscriber(pub.endpoint) as sub:
        assert pub.wait_subscribers(1, timeout_s=5)
        pub.begin(header())
        for i in range(200):
            pub.send_frame(i, i * 1000, data[i], np.full(4, i, np.float32))
        pub.end()
        msgs = drain(sub)
    frames = [m for m in msgs if isinstance(m, Frame)]
    assert [f.seq for f in frames] == list(range(200))
    assert np.stack([f.traces for f in frames]).tobytes() == data.tobytes()
    assert isinstance(msgs[0], SessionHeader) and isinstance(msgs[-1], End) and msgs[-1].n_frames == 200


def test_ten_minute_8000_neuron_session_flat_out_arrives_complete() -> None:
    # 18,000 frames of 8,000 neurons (10 min at 30 Hz) from a publisher process, as fast as it can go.
    result = measure(n_neurons=8000, n_frames=18_000, rate=0.0)
    assert result["frames_received"] == 18_000
    assert result["gaps"] == 0 and result["missing"] == 0


def test_deliberately_dropped_range_is_reported_as_that_range() -> None:
    with Publisher("tcp://127.0.0.1:0", nodrop=True) as pub, Subscriber(pub.endpoint) as sub:
        pub.wait_subscribers(1, timeout_s=5)
        h = header()
        pub.begin(h)
        for i in [*range(0, 100), *range(150, 300)]:
            pub.send_frame(i, i, np.zeros(N, np.float32), np.zeros(4, np.float32))
        pub.end()
        drain(sub)
        st = sub.stats
    assert st.received == 250 and st.gaps == 1 and st.missing == 50
    assert st.gap_ranges == [(h.session_id, 100, 149)]


def test_publisher_restart_on_same_port_is_a_new_session() -> None:
    with Publisher(f"tcp://127.0.0.1:{free_port()}", nodrop=True) as first:
        endpoint = first.endpoint
        sub = Subscriber(endpoint)
        first.wait_subscribers(1, timeout_s=5)
        h1 = header()
        first.begin(h1)
        for i in range(10):
            first.send_frame(i, i, np.zeros(N, np.float32), np.zeros(4, np.float32))
        msgs1 = drain(sub, until_end=False, timeout_s=0.5)
    # the rig process dies without an `end`; a new one binds the same port (once the OS has released it)
    second = _bind_retrying(endpoint)
    with second:
        # The subscriber reconnects by itself (ZeroMQ sockets act on reconnects while their owner polls them).
        assert wait_for(lambda: sub.recv(timeout_s=0.05) is None and second.n_subscribers >= 1, timeout=10)
        h2 = header()
        second.begin(h2)
        for i in range(5):
            second.send_frame(i, i, np.ones(N, np.float32), np.zeros(4, np.float32))
        second.end()
        msgs2 = drain(sub)
    st = sub.stats
    sub.close()
    assert sum(isinstance(m, Frame) for m in msgs1) == 10
    assert [m.seq for m in msgs2 if isinstance(m, Frame)] == list(range(5))
    assert isinstance(msgs2[0], SessionHeader) and msgs2[0].session_id == h2.session_id
    assert st.sessions == 2 and st.gaps == 0 and st.duplicates == 0


def _bind_retrying(endpoint: str, timeout_s: float = 5.0) -> Publisher:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Publisher(endpoint, nodrop=True)
        except TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_garbage_on_the_wire_is_counted_and_the_stream_goes_on() -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.XPUB)  # a plain publisher that sees subscriptions: it sends once the subscriber is in
    raw.setsockopt(zmq.RCVTIMEO, 10_000)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    errors = []
    with Subscriber(f"tcp://127.0.0.1:{port}", on_error=errors.append) as sub:
        while not raw.recv()[1:].startswith(HELLO_PREFIX):  # its last subscription: every topic is in before it
            pass
        h = header(4)
        from neurocine.streams.protocol import encode_session

        raw.send_multipart([bytes(x) for x in encode_session(h)])
        raw.send_multipart([b"frame", b"\xc1garbage"])
        raw.send_multipart([b"frame", msgpack.packb({"v": 1, "arrays": []})])
        bad_n = encode_frame(h.session_id, 0, 0, 0, np.zeros(5, np.float32), np.zeros(4, np.float32))
        raw.send_multipart([bytes(x) for x in bad_n])
        raw.send_multipart([b"framez", b"x"])
        good = encode_frame(h.session_id, 1, 0, 0, np.ones(4, np.float32), np.zeros(4, np.float32))
        raw.send_multipart([bytes(x) for x in good])
        msgs = [sub.recv(2), sub.recv(2)]
        st = sub.stats
    raw.close(0)
    assert isinstance(msgs[0], SessionHeader) and isinstance(msgs[1], Frame) and msgs[1].seq == 1
    assert st.malformed == 4 and st.received == 1
    # 'framez' matches the 'frame' subscription prefix, so it reaches the decoder and is named there
    assert st.errors_by_kind == {"malformed_header": 1, "bad_payload": 2, "unknown_topic": 1}
    assert any("5 traces, session" in str(e) for e in errors)


def test_wait_subscribers_counts_neurocine_subscribers() -> None:
    with Publisher("tcp://127.0.0.1:0") as pub:
        assert not pub.wait_subscribers(1, timeout_s=0.2)
        a, b = Subscriber(pub.endpoint), Subscriber(pub.endpoint)
        assert pub.wait_subscribers(2, timeout_s=5)
        a.close()
        b.close()


def test_a_message_over_the_size_ceiling_is_never_buffered_or_delivered() -> None:
    """ZeroMQ cuts off a peer that sends a part over MAXMSGSIZE before buffering it (ZeroMQ itself does not
    reconnect to it, the Subscriber does: tests/test_transport_limits.py). Nothing of it is ever delivered."""
    from neurocine.streams.protocol import Decoded, encode_decoded
    from neurocine.streams.transport import MAX_MESSAGE_BYTES

    ep = f"tcp://127.0.0.1:{free_port()}"
    with Publisher(ep, nodrop=True) as pub, Subscriber(ep) as sub:
        assert pub.wait_subscribers(1, timeout_s=10)
        pub.send_raw(encode_decoded("x", {"seq": 0}, [("small", np.zeros(4, np.uint8))]))
        huge = np.zeros(MAX_MESSAGE_BYTES + 1, np.uint8)  # a valid `decoded` message, just too big
        pub.send_raw(encode_decoded("x", {"seq": 1}, [("frame", huge)]))
        got = [m for m in (sub.recv(timeout_s=1.0), sub.recv(timeout_s=1.0)) if m is not None]
        assert wait_for(lambda: sub.recv(timeout_s=0.05) is None and sub.cutoffs == 1, timeout=30)  # cut off
    assert [m.fields["seq"] for m in got if isinstance(m, Decoded)] == [0]


def test_a_restart_within_the_hold_delivers_the_new_header_with_its_own_parts_and_every_new_frame() -> None:
    """A rig restarted without an `end` (a crash): the new header is held while the old frames are recent; the
    new session's first frame after the hold switches over. The subscriber hands out the header, whose raw
    parts (what a recorder writes) are the header's, then that frame: the frame that switches is not lost."""
    import threading

    from neurocine.streams.protocol import parse_message

    traces = np.zeros(N, np.float32)
    got: list = []
    with Publisher("tcp://127.0.0.1:0", nodrop=True) as pub, Subscriber(pub.endpoint) as sub:
        assert pub.wait_subscribers(1, timeout_s=5)
        sub.tracker.switch_hold_ns = 100_000_000  # 0.1 s, so the new frames come before the header's re-send

        def consume() -> None:  # a consumer that keeps reading, as `record` does
            while (m := sub.recv(timeout_s=5)) is not None:
                got.append((m, parse_message(sub.last_parts)))
                if isinstance(m, End):
                    return

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        a, b = header(), header()
        pub.begin(a)
        for i in range(10):
            pub.send_frame(i, i, traces, np.zeros(4, np.float32))
        pub.begin(b)  # no end: the header arrives while "a" streams, and is held
        assert wait_for(lambda: sub.tracker.stats.held_sessions == 1, timeout=10)
        time.sleep(0.15)  # "a" goes silent past the hold (the consumer waits on an empty socket): time is the point
        for i in range(10):
            pub.send_frame(i, i, traces, np.zeros(4, np.float32))
            time.sleep(0.005)
        pub.end()
        reader.join(15)
    kinds = [(type(m).__name__, m.session_id, getattr(m, "seq", None)) for m, _ in got]
    assert kinds[:11] == [("SessionHeader", a.session_id, None)] + [("Frame", a.session_id, i) for i in range(10)]
    assert kinds[11:] == ([("SessionHeader", b.session_id, None)] + [("Frame", b.session_id, i) for i in range(10)]
                          + [("End", b.session_id, None)])
    assert all(type(m) is type(raw) and m.session_id == raw.session_id for m, raw in got)  # parts match messages
