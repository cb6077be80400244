"""A real `neurocine decode` never goes deaf unnoticed, and publishes only what it received."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import zmq

from neurocine.decoder.live.decoded import as_decoded_frame
from neurocine.streams.protocol import Decoded, Heartbeat
from neurocine.streams.session import header_of
from neurocine.streams.transport import MAX_MESSAGE_BYTES, Publisher, Subscriber
from tests.conftest import free_port
from tests.test_service import example_slice, start_decoder, stop

#: Measured without the reconnect: after four of these on topic `frame`, the decoder received nothing more for 25 s.
HUGE = 256 << 20


def _paced(pub: Publisher, s, seqs: range, sub: Subscriber, got: list, t0: float | None = None) -> None:
    """Send `seqs` at 30 Hz (traces of the slice, cycled), collecting decoded frames meanwhile."""
    t0 = time.monotonic() if t0 is None else t0
    for i, seq in enumerate(seqs):
        pub.send_frame(seq, time.time_ns(), s.traces[seq % s.n_frames], s.behaviour[seq % s.n_frames])
        while time.monotonic() < t0 + (i + 1) / 30:
            m = sub.recv(timeout_s=0.005)
            if isinstance(m, Decoded):
                got.append(as_decoded_frame(m))
        pub.tick()


def test_four_oversized_messages_cut_the_decoder_off_for_less_than_a_second_and_a_silence_is_logged(
        small_mouse: Path) -> None:
    assert HUGE > MAX_MESSAGE_BYTES  # over the subscriber's ceiling: ZeroMQ cuts the connection
    s = example_slice(60)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    dec = start_decoder(small_mouse, rig, out, "--lag", "4", "--steps", "0", "--stall-after", "1")
    got: list = []
    try:
        with Subscriber(out) as sub, Publisher(rig) as pub:  # a live rig: drops, never waits
            assert pub.wait_subscribers(1, timeout_s=60)
            deadline = time.monotonic() + 60
            while not isinstance(sub.recv(timeout_s=0.05), Heartbeat) and time.monotonic() < deadline:
                pass  # the decoder's output is heard
            pub.begin(header_of(s))
            _paced(pub, s, range(30), sub, got)
            huge = zmq.Frame(np.zeros(HUGE, np.uint8))  # one buffer, sent four times without copying
            for _ in range(4):
                pub.send_raw([b"frame", huge])
            _paced(pub, s, range(30, 120), sub, got)
            t_quiet = time.monotonic()
            while time.monotonic() < t_quiet + 2.5:  # the rig stays up (heartbeats) but sends no frame
                pub.tick()
                m = sub.recv(timeout_s=0.02)
                if isinstance(m, Decoded):
                    got.append(as_decoded_frame(m))
            _paced(pub, s, range(120, 130), sub, got)
            pub.end()
            deadline = time.monotonic() + 30
            while (not got or got[-1].seq < 129) and time.monotonic() < deadline:
                m = sub.recv(timeout_s=0.1)
                if isinstance(m, Decoded):
                    got.append(as_decoded_frame(m))
    finally:
        out_text, err = stop(dec)
    after = [f.seq for f in got if f.seq >= 30]
    assert after, err[-3000:]
    # frames flow again within a second: the first frame decoded after the cut-off was sent < 30 frames after it
    assert after[0] < 60, (after[:5], err[-3000:])
    assert "cut this subscriber off" in err
    assert "STALLED: no valid frame" in err and "heartbeat(s): the publisher is up but sends no frame" in err
    assert "stream back after" in err
    wire = json.loads(out_text)["decode"]["wire"]
    assert wire["cutoffs"] >= 1 and wire["stalls"] >= 1 and not wire["stalled"]
    assert [f.seq for f in got if f.seq >= 120] == list(range(120, 130))


def test_a_decoder_joining_at_seq_a_million_publishes_only_frames_it_received(small_mouse: Path) -> None:
    """A late join with the default lag and provisional frames: every final frame was announced by its own
    provisional frame first (published on arrival: proof of receipt), the finals are exactly the frames the
    decoder counts as received, and the lag's flush at the `end` is marked as what it is."""
    lag, start = 32, 1_000_000
    s = example_slice(60)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    got: list = []
    with Subscriber(out) as sub, Publisher(rig) as pub:
        pub.begin(header_of(s))
        t0 = time.monotonic()
        _paced(pub, s, range(start, start + 15), sub, got, t0)  # the session runs before the decoder exists
        dec = start_decoder(small_mouse, rig, out, "--lag", str(lag), "--steps", "0", "--provisional")
        try:
            # the rig pauses until the decoder's own idle heartbeat reaches us: our subscription to its output is in
            # before it decodes anything (a provisional frame published before it would be lost to us, and its final
            # would then look like one never received)
            deadline = time.monotonic() + 90
            while not isinstance(sub.recv(timeout_s=0.05), Heartbeat):
                assert time.monotonic() < deadline, "no heartbeat from the decoder"
                pub.tick()
            seq = start + 15
            deadline = time.monotonic() + 90
            while sum(f.final for f in got) < 60 and time.monotonic() < deadline:  # joined, past its lag
                _paced(pub, s, range(seq, seq + 3), sub, got)
                seq += 3
            pub.end()
            deadline = time.monotonic() + 30
            while not any(f.flushed and f.lag == 0 for f in got) and time.monotonic() < deadline:  # the last one
                m = sub.recv(timeout_s=0.1)
                if isinstance(m, Decoded):
                    got.append(as_decoded_frame(m))
        finally:
            out_text, err = stop(dec)
    stats = json.loads(out_text)["decode"]
    provisional_first: dict[int, int] = {}
    for i, f in enumerate(got):
        if not f.final:
            provisional_first.setdefault(f.seq, i)
    finals = [(i, f) for i, f in enumerate(got) if f.final]
    assert finals, err[-3000:]
    for i, f in finals:
        assert f.seq in provisional_first and provisional_first[f.seq] < i, (f.seq, "final before any receipt")
    seqs = [f.seq for _, f in finals]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # in order, once each, no gap on loopback
    assert seqs[0] >= start + 15 and seqs[-1] == seq - 1  # from the first frame it heard to the last one sent
    assert len(seqs) == stats["frames_in"] == stats["decoded_out"] and stats["not_published"] == 0
    flushed = [f for _, f in finals if f.flushed]
    assert [f.seq for f in flushed] == seqs[-lag:] and {f.flushed for f in flushed} == {"end"}
    assert [f.lag for f in flushed] == list(range(lag - 1, -1, -1))  # the newer frames that refined each
    assert all(f.lag == lag for _, f in finals if not f.flushed)
