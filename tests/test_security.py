"""ZeroMQ CURVE on loopback: allow-listed peers get the stream; a stranger reads nothing and injects nothing."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from neurocine.streams.protocol import Frame, SessionHeader
from neurocine.streams.security import Keys, KeysError, is_loopback, make_keys
from neurocine.streams.transport import Publisher, Subscriber, TransportError
from tests.conftest import free_port, wait_for

N = 8


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keys, Keys]:
    """Ours, and a stranger's (another `neurocine keys` folder)."""
    ours, theirs = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("theirs")
    make_keys(ours)
    make_keys(theirs)
    return Keys.load(ours), Keys.load(theirs)


def _stream(pub: Publisher, subs: list[Subscriber], seconds: float = 1.5) -> list[list]:
    """Publish frames while polling every subscriber; what each one received."""
    got: list[list] = [[] for _ in subs]
    h = SessionHeader("s", "rig", "m", 30.0, np.arange(N, dtype=np.int64))
    pub.begin(h)
    seq, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        pub.send_frame(seq, seq, np.zeros(N, np.float32), np.zeros(4, np.float32))
        seq += 1
        for k, sub in enumerate(subs):
            m = sub.recv(timeout_s=0.01)
            while m is not None:
                got[k].append(m)
                m = sub.recv(timeout_s=0)
    return got


class HandshakeFailures:
    """The failed ZMTP handshakes a socket sees (its ZeroMQ monitor): the evidence that a refused peer did try."""

    KINDS: ClassVar[dict[int, str]] = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
                                       zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
                                       zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail"}

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock, self.kinds = sock, []
        self.monitor = sock.get_monitor_socket(sum(self.KINDS))

    def seen(self) -> list[str]:
        while self.monitor.poll(0):
            self.kinds.append(self.KINDS[recv_monitor_message(self.monitor)["event"]])
        return self.kinds

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)


def test_a_client_with_an_unknown_key_receives_nothing_and_is_not_counted(keys, caplog) -> None:
    ours, theirs = keys
    stranger = dataclasses.replace(ours, client_public=theirs.client_public, client_secret=theirs.client_secret)
    ep = f"tcp://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="neurocine.auth"), Publisher(ep, keys=ours) as pub:
        failures = HandshakeFailures(pub._sock)
        with Subscriber(ep, keys=ours) as friend, Subscriber(ep, keys=stranger) as foe, Subscriber(ep) as plain:
            assert pub.wait_subscribers(1, timeout_s=10)
            # both other peers have tried and been refused: the stranger by the allow-list, the plaintext peer by
            # the CURVE handshake (ZeroMQ retries them, so the count below could still grow if they got in)
            assert wait_for(lambda: "auth" in failures.seen() and {"protocol", "no_detail"} & set(failures.seen()))
            assert pub.n_subscribers == 1  # only the authenticated peer counts for --wait-subscribers
            got_friend, got_foe, got_plain = _stream(pub, [friend, foe, plain])
        failures.close()
    assert sum(isinstance(m, Frame) for m in got_friend) > 10
    assert got_foe == [] and got_plain == []
    assert any("refused a peer with an unknown CURVE key" in r.getMessage() for r in caplog.records)


def test_a_stranger_binding_the_rig_port_cannot_inject(keys) -> None:
    ours, theirs = keys
    ep = f"tcp://127.0.0.1:{free_port()}"
    impostor = dataclasses.replace(theirs, authorized=ours.authorized)  # accepts us, but holds the wrong server key
    with Publisher(ep, keys=impostor) as fake:
        failures = HandshakeFailures(fake._sock)
        with Subscriber(ep, keys=ours) as decoder_input:
            assert wait_for(failures.seen)  # the decoder's input did connect, and the handshake failed
            (got,) = _stream(fake, [decoder_input], seconds=1.0)
            assert fake.n_subscribers == 0
        failures.close()
    assert got == []


def test_plaintext_non_loopback_bind_is_refused_without_insecure(keys) -> None:
    with pytest.raises(TransportError, match=r"refusing to bind tcp://0\.0\.0\.0:.* in plaintext.*--insecure"):
        Publisher(f"tcp://0.0.0.0:{free_port()}", insecure=False)
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://localhost:1") and is_loopback("ipc:///x")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555")
    assert not is_loopback("tcp://10.0.0.2:5555")


def test_damaged_or_missing_keys_are_named(tmp_path: Path) -> None:
    make_keys(tmp_path / "k")
    (tmp_path / "k" / "client.key_secret").write_text("garbage")
    with pytest.raises(KeysError, match=r"client\.key_secret"):
        Keys.load(tmp_path / "k")
    with pytest.raises(KeysError, match=r"server\.key: missing"):
        Keys.load(tmp_path / "nowhere")
    with pytest.raises(KeysError, match="refusing to overwrite"):
        make_keys(tmp_path / "k")


def test_replay_and_record_verbs_with_keys(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from neurocine.streams.formats import save_session
    from tests.conftest import REPO, make_session

    make_keys(tmp_path / "keys")
    save_session(make_session(n_frames=40), tmp_path / "s.ncr")
    ep = f"tcp://127.0.0.1:{free_port()}"

    def cli(*a: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "neurocine", *a], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    rec = cli("record", "--keys", str(tmp_path / "keys"), "--connect", ep, "--out", str(tmp_path / "o.ncr"),
              "--until-end")
    plain = cli("record", "--connect", ep, "--out", str(tmp_path / "p.ncr"), "--seconds", "8")
    rep = cli("replay", str(tmp_path / "s.ncr"), "--keys", str(tmp_path / "keys"), "--bind", ep, "--speed", "0",
              "--wait-subscribers", "1")
    _, rep_err = rep.communicate(timeout=60)
    out, err = rec.communicate(timeout=60)
    plain_out, _ = plain.communicate(timeout=60)
    assert rep.returncode == 0 and rec.returncode == 0, (rep_err, err)
    assert json.loads(out)["record"]["frames"] == 40
    assert json.loads(plain_out)["record"]["frames"] == 0  # a peer without keys got nothing
