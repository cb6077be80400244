"""The steerable synthetic rig: commands on its control socket change what the mouse sees, at a known frame."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from neurocine.streams.control import TARGETS, CommandError, RigControl, parse_command
from neurocine.streams.protocol import Frame
from neurocine.streams.synthetic.stimuli import NaturalMovie
from neurocine.streams.transport import Subscriber
from tests.conftest import free_port, neurocine


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"cmd": "explode"}', "'cmd' must be one of"),
    (b'{"cmd": "movie", "k": -1}', "'k' must be an int"),
    (b'{"cmd": "movie", "k": true}', "'k' must be an int"),
    (b'{"cmd": "target", "name": "cat"}', "'name' must be one of ['bar', 'checker']"),
    (b'{"cmd": "grey", "k": 3}', "unexpected field(s) ['k']"),
    (b'{"cmd": "grey", "id": [1]}', "'id' must be an int or a string"),
])
def test_malformed_commands_are_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=None) as e:
        parse_command(raw)
    assert message in str(e.value)


def frames_until(sub: Subscriber, seq: int, store: dict[int, Frame], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while seq not in store and time.monotonic() < deadline:
        m = sub.recv(timeout_s=0.2)
        if isinstance(m, Frame):
            store[m.seq] = m


def test_rig_shows_commanded_changes_at_the_acknowledged_frame_and_survives_bad_ones() -> None:
    ep, ctl_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    rig = neurocine("rig", "--synthetic", "--neurons", "30", "--bind", ep, "--control", ctl_ep,
                    "--frames", "150", "--wait-subscribers", "1")
    frames: dict[int, Frame] = {}
    try:
        with Subscriber(ep) as sub, RigControl(ctl_ep, timeout_s=5) as ctl:
            frames_until(sub, 3, frames)
            bar = ctl.send("target", name="bar")
            assert bar["ok"] and bar["cmd"] == "target" and bar["shown"] == "target bar", bar
            assert bar["t_recv_ns"] <= bar["t_pub_ns"] and bar["id"] == 1
            # refused at once, nothing changes, the rig keeps publishing
            assert "not UTF-8 JSON" in ctl.send_raw(b"\x00garbage")["error"]
            assert "'k' must be an int" in ctl.send("movie", k="three")["error"]
            sock = zmq.Context.instance().socket(zmq.REQ)
            sock.connect(ctl_ep)
            sock.send_multipart([b'{"cmd": "grey"}', b"extra"])
            assert sock.poll(5000) and "2 message parts" in sock.recv_json()["error"]
            sock.close(0)
            assert ctl.send("status")["showing"] == "target bar"
            grey = ctl.send("grey")
            movie = ctl.send("movie", k=3)
            frames_until(sub, movie["seq"] + 1, frames)
    finally:
        rig.terminate()
        _, err = rig.communicate(timeout=20)
    s_bar, s_grey, s_movie = bar["seq"], grey["seq"], movie["seq"]
    assert s_bar < s_grey < s_movie
    assert not np.array_equal(frames[s_bar - 1].stimulus, TARGETS["bar"])
    assert all(np.array_equal(frames[s].stimulus, TARGETS["bar"]) for s in range(s_bar, s_grey) if s in frames)
    assert (frames[s_grey].stimulus == 128).all()
    assert np.array_equal(frames[s_movie].stimulus, NaturalMovie(3, "test").frames(1)[0])
    assert frames[s_bar].t_acq_ns == bar["t_shown_ns"]
    got = sorted(frames)
    assert got == list(range(got[0], got[-1] + 1))  # no frame lost around the bad commands
    assert "refused a control command" in err and "3 commands shown, 3 refused" in err
