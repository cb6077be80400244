"""Steering a rig: the control socket's commands, their validation, the built-in target images, a client.

A closed-loop client asks the rig to change what the mouse sees; the rig answers when the change is on
screen. One ZeroMQ REQ/REP exchange per command, each message one UTF-8 JSON object (JSON rather than
msgpack so that a MATLAB or LabVIEW stimulus program can speak it too):

    request   {"cmd": "movie", "k": 2, "id": 17}      switch to movie K (from its first frame)
              {"cmd": "target", "name": "bar"}        show a built-in target image (TARGETS)
              {"cmd": "grey"}                         mid-grey screen
              {"cmd": "status"}                       what is shown now (answered at once)
    reply     {"ok": true, "id": 17, "cmd": "movie", "seq": 1234, "t_shown_ns": ..., "t_pub_ns": ...,
               "t_recv_ns": ...}                      seq = the first frame that shows the change
              {"ok": false, "error": "..."}           malformed command: nothing changes

`id` is optional and echoed back. A change is applied at the next frame boundary; the reply goes out
right after that frame is published, so `t_shown_ns - t_recv_ns` is the wait for the rig's frame clock.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import numpy as np
import zmq

from neurocine.streams.commandline import get_logger

log = get_logger("rig")

FRAME_SHAPE = (36, 64)
GREY = 128
COMMANDS = ("movie", "target", "grey", "status")
MAX_MOVIE = 1_000_000
MAX_REQUEST_BYTES = 4096


def _bar() -> np.ndarray:
    """A bright vertical bar (12 px wide) on a dark field, centred where the built-in mouse's neurons look."""
    img = np.full(FRAME_SHAPE, 40, np.uint8)
    img[:, 26:38] = 230
    return img


def _checker() -> np.ndarray:
    """A 3 x 4 checkerboard of 12 x 16 px squares, full contrast."""
    y, x = np.indices(FRAME_SHAPE)
    return np.where((y // 12 + x // 16) % 2 == 0, 230, 25).astype(np.uint8)


#: Built-in target images (36 x 64 uint8); low spatial frequencies, which the decoder recovers best.
TARGETS: dict[str, np.ndarray] = {"bar": _bar(), "checker": _checker()}


class CommandError(ValueError):
    """A control request that is not a valid command; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Command:
    cmd: str
    k: int = 0  # movie index (cmd == "movie")
    name: str = ""  # target name (cmd == "target")
    id: Any = None  # echoed back

    def describe(self) -> str:
        return {"movie": f"movie {self.k}", "target": f"target {self.name}"}.get(self.cmd, self.cmd)


def parse_command(raw: bytes) -> Command:
    """Validate one request; raises CommandError naming the problem (the rig replies with it)."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise CommandError(f"request of {len(raw)} bytes, at most {MAX_REQUEST_BYTES}")
    try:
        req = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CommandError(f"request is not UTF-8 JSON: {e}") from e
    if not isinstance(req, dict):
        raise CommandError(f"request must be a JSON object, got {type(req).__name__}")
    cmd = req.get("cmd")
    if cmd not in COMMANDS:
        raise CommandError(f"'cmd' must be one of {list(COMMANDS)}, got {cmd!r}")
    ident = req.get("id")
    if ident is not None and not isinstance(ident, (int, str)):
        raise CommandError("'id' must be an int or a string")
    allowed = {"cmd", "id"} | ({"k"} if cmd == "movie" else {"name"} if cmd == "target" else set())
    extra = sorted(set(req) - allowed)
    if extra:
        raise CommandError(f"{cmd}: unexpected field(s) {extra}")
    if cmd == "movie":
        k = req.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_MOVIE:
            raise CommandError(f"movie: 'k' must be an int in 0..{MAX_MOVIE}, got {k!r}")
        return Command("movie", k=k, id=ident)
    if cmd == "target":
        name = req.get("name")
        if name not in TARGETS:
            raise CommandError(f"target: 'name' must be one of {sorted(TARGETS)}, got {name!r}")
        return Command("target", name=name, id=ident)
    return Command(cmd, id=ident)


class RigControl:
    """Client of a rig's control socket: `send("target", name="bar")` returns the rig's reply.

    REQ with ZMQ_REQ_RELAXED/REQ_CORRELATE, so a request that timed out does not wedge the socket."""

    def __init__(self, connect: str, timeout_s: float = 2.0, context: zmq.Context | None = None) -> None:
        self._sock = (context or zmq.Context.instance()).socket(zmq.REQ)
        self._sock.setsockopt(zmq.REQ_RELAXED, 1)
        self._sock.setsockopt(zmq.REQ_CORRELATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(connect)
        self.timeout_ms = int(timeout_s * 1000)
        self._next_id = 0

    def send(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """One command; returns the reply, or {"ok": False, "error": "timeout ..."} if none came in time."""
        self._next_id += 1
        req = {"cmd": cmd, "id": self._next_id, **fields}
        return self.send_raw(json.dumps(req).encode())

    def send_raw(self, raw: bytes) -> dict[str, Any]:
        t0 = time.time_ns()
        self._sock.send(raw)
        if not self._sock.poll(self.timeout_ms):
            return {"ok": False, "error": f"timeout: no reply in {self.timeout_ms} ms", "t_sent_ns": t0}
        reply = json.loads(self._sock.recv())
        reply["t_sent_ns"] = t0
        reply["t_reply_ns"] = time.time_ns()
        return reply

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> RigControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlServer:
    """The rig's end of the control socket (REP): validates requests, holds one pending change at a time.

    Malformed requests are answered at once with {"ok": false, "error": ...} and change nothing; a valid
    change waits in `pending` until the rig shows it and calls `shown()`, which sends the acknowledgement.
    Nothing here blocks the rig for longer than the poll timeout it passes."""

    def __init__(self, bind: str, status: Any = None, context: zmq.Context | None = None) -> None:
        self._sock = (context or zmq.Context.instance()).socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(bind)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise ValueError(f"cannot bind the control socket to {bind}: {e}") from e
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.status = status or (lambda: {})
        self.pending: tuple[Command, int] | None = None
        self.accepted = 0
        self.refused = 0
        self.last_error = ""

    def poll(self, timeout_s: float) -> None:
        """Wait up to timeout_s for a request (sleeps instead while a change is pending)."""
        if self.pending is not None:
            time.sleep(max(timeout_s, 0.0))
            return
        if not self._sock.poll(max(int(timeout_s * 1000), 0)):
            return
        parts = self._sock.recv_multipart()
        t_recv = time.time_ns()
        try:
            if len(parts) != 1:
                raise CommandError(f"request has {len(parts)} message parts, expected 1 (a JSON object)")
            cmd = parse_command(parts[0])
        except CommandError as e:
            self.refused += 1
            self.last_error = str(e)
            log.warning(f"refused a control command: {e}")
            self._reply({"ok": False, "error": str(e)})
            return
        if cmd.cmd == "status":
            self._reply({"ok": True, "id": cmd.id, "cmd": "status", "t_recv_ns": t_recv, **self.status()})
            return
        self.pending = (cmd, t_recv)

    def take(self) -> Command | None:
        """The pending change, if any (apply it to the next frame, then call `shown`)."""
        return None if self.pending is None else self.pending[0]

    def shown(self, seq: int, t_shown_ns: int, t_pub_ns: int) -> None:
        """Acknowledge the pending change: frame `seq` (shown at t_shown_ns, published at t_pub_ns) shows it."""
        assert self.pending is not None
        cmd, t_recv = self.pending
        self.pending = None
        self.accepted += 1
        self._reply({"ok": True, "id": cmd.id, "cmd": cmd.cmd, "shown": cmd.describe(), "seq": seq,
                     "t_recv_ns": t_recv, "t_shown_ns": t_shown_ns, "t_pub_ns": t_pub_ns})

    def _reply(self, obj: dict[str, Any]) -> None:
        self._sock.send(json.dumps(obj).encode())

    def close(self) -> None:
        self._sock.close(0)


class AsyncRigControl:
    """Non-blocking client (DEALER): `send` returns at once, `replies()` collects acknowledgements as they
    come, so a closed-loop program never stops reading the decoded stream while the rig waits for its frame."""

    def __init__(self, connect: str, context: zmq.Context | None = None) -> None:
        self._sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(connect)
        self._next_id = 0
        self.sent_ns: dict[int, int] = {}

    def send(self, cmd: str, **fields: Any) -> int:
        """Queue one command; returns its id (echoed in the reply)."""
        self._next_id += 1
        self.sent_ns[self._next_id] = time.time_ns()
        self._sock.send_multipart([b"", json.dumps({"cmd": cmd, "id": self._next_id, **fields}).encode()])
        return self._next_id

    def replies(self, timeout_s: float = 0.0) -> list[dict[str, Any]]:
        """Replies that have arrived (waiting up to timeout_s for the first), each with t_reply_ns added."""
        out: list[dict[str, Any]] = []
        timeout_ms = int(timeout_s * 1000)
        while self._sock.poll(timeout_ms if not out else 0):
            parts = self._sock.recv_multipart()
            reply = json.loads(parts[-1])
            reply["t_reply_ns"] = time.time_ns()
            reply["t_sent_ns"] = self.sent_ns.pop(reply.get("id"), 0)
            out.append(reply)
        return out

    def close(self) -> None:
        self._sock.close(0)
