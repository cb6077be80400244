"""ZeroMQ publisher and subscriber for wire protocol v1, with explicit queue limits and timeouts.

High-water marks (HWM) bound memory: a PUB queue holds at most `sndhwm` messages per subscriber, a
SUB queue `rcvhwm`. A live rig must never stall, so by default a full queue drops messages (the
subscriber sees the gap). A replay must lose nothing, so it publishes with ``nodrop=True``
(ZMQ_XPUB_NODROP): a full queue makes `send` wait for the slowest subscriber instead.
The publisher is an XPUB socket so it can see subscriptions: each Subscriber also subscribes to a
unique hello topic that never matches a message, which lets a publisher count who is listening.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import zmq

from streams.protocol import (
    MAX_NEURONS,
    MAX_STIMULUS_SIDE,
    TOPICS,
    End,
    Heartbeat,
    Message,
    ProtocolError,
    SessionHeader,
    encode_decoded,
    encode_end,
    encode_frame,
    encode_heartbeat,
    encode_session,
)
from streams.security import Keys, default_keys, insecure_allowed, is_loopback, secure_client, secure_server
from streams.tracker import StreamStats, StreamTracker

#: ~100 s of 30 Hz frames per subscriber (about 100 MB at 8,000 neurons).
DEFAULT_SNDHWM = 3000
DEFAULT_RCVHWM = 3000
DEFAULT_LINGER_MS = 1000
HEADER_INTERVAL_S = 0.5
HEARTBEAT_INTERVAL_S = 0.5
HELLO_PREFIX = b"\x00hello:"
#: Largest message part a socket accepts (ZMQ_MAXMSGSIZE): the largest valid part is a stimulus frame of
#: MAX_STIMULUS_SIDE^2 bytes (16 MiB); a 8,000-neuron frame is 32 KB. Lower it with --max-message-mb.
MAX_MESSAGE_BYTES = max(MAX_STIMULUS_SIDE**2, 8 * MAX_NEURONS) + (1 << 20)


class TransportError(RuntimeError):
    """A socket could not be set up (address in use, bad endpoint) or the publisher was closed."""


def _now_ns() -> int:
    return time.time_ns()


class Publisher:
    """Publishes one session at a time; re-sends its header every 0.5 s and heartbeats when idle."""

    def __init__(
        self,
        bind: str,
        *,
        sndhwm: int = DEFAULT_SNDHWM,
        sndbuf: int | None = None,
        nodrop: bool = False,
        linger_ms: int = DEFAULT_LINGER_MS,
        header_interval_s: float = HEADER_INTERVAL_S,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        keys: Keys | None = None,
        insecure: bool | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        keys = keys or default_keys()
        if keys is None and not is_loopback(bind) and not (insecure_allowed() if insecure is None else insecure):
            raise TransportError(
                f"refusing to bind {bind} in plaintext: anyone who can reach it could read the stream and take "
                "over its subscribers; pass --keys DIR (make one with `neurocine keys --out DIR`) or --insecure")
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB)
        if keys is not None:
            secure_server(self._sock, keys)
        self.secure = keys is not None
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        if sndbuf is not None:  # the kernel's send buffer (SO_SNDBUF); unset, Linux autotunes it up to 4 MB
            self._sock.setsockopt(zmq.SNDBUF, sndbuf)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.setsockopt(zmq.XPUB_NODROP, int(nodrop))
        self._sock.setsockopt(zmq.SNDTIMEO, 100)
        self._sock.setsockopt(zmq.MAXMSGSIZE, 1 << 16)  # it only receives (tiny) subscriptions
        try:
            self._sock.bind(bind)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise TransportError(f"cannot bind publisher to {bind}: {e}") from e
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.nodrop = nodrop
        self.header_interval_ns = int(header_interval_s * 1e9)
        self.heartbeat_interval_ns = int(heartbeat_interval_s * 1e9)
        self.header: SessionHeader | None = None
        self.last_seq = -1
        self.sent = 0
        self.dropped = 0  # sends refused by a full queue (only when nodrop=False and all subscribers are full)
        self._last_header_ns = 0
        self._last_send_ns = 0
        self._subscribers: set[bytes] = set()
        self._closed = False

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ subscribers
    def _poll_subscriptions(self) -> None:
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) > 1 and msg[1:].startswith(HELLO_PREFIX):
                if msg[0] == 1:
                    self._subscribers.add(msg[1:])
                else:
                    self._subscribers.discard(msg[1:])

    @property
    def n_subscribers(self) -> int:
        self._poll_subscriptions()
        return len(self._subscribers)

    def wait_subscribers(self, n: int, timeout_s: float | None = None) -> bool:
        """Block until at least `n` neurocine subscribers are connected (True) or the timeout passes."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.n_subscribers < n:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._sock.poll(50, zmq.POLLIN)
        return True

    # ------------------------------------------------------------------ sending
    def _send(self, parts: Sequence[Any]) -> bool:
        if self._closed:
            raise TransportError("publisher is closed")
        while True:
            try:
                self._sock.send_multipart(parts, copy=False)
                break
            except zmq.Again:
                if not self.nodrop:
                    self.dropped += 1
                    return False
                # nodrop: a subscriber's queue is full; wait for it (the replay slows down, nothing is lost).
                self._poll_subscriptions()
        self.sent += 1
        self._last_send_ns = _now_ns()
        return True

    def begin(self, header: SessionHeader) -> None:
        """Start a session: every frame until `end` belongs to it."""
        self.header = header
        self.last_seq = -1
        self._send_header()

    def resend_header(self) -> None:
        """Send the current header now (e.g. once new subscribers are in, so they can read frame 0)."""
        if self.header is not None:
            self._send_header()

    def _send_header(self) -> None:
        assert self.header is not None
        last_send = self._last_send_ns
        self._send(encode_session(self.header))
        self._last_header_ns = _now_ns()
        # A header re-send is not news: keep the heartbeat timer, so an idle session still gets heartbeats
        # (their last_seq is how a subscriber notices frames lost at the end of a burst).
        self._last_send_ns = last_send

    def _maybe_resend_header(self, now: int) -> None:
        if self.header is not None and now - self._last_header_ns >= self.header_interval_ns:
            self._send_header()

    def send_frame(
        self,
        seq: int,
        t_acq_ns: int,
        traces: np.ndarray,
        behaviour: np.ndarray,
        stimulus: np.ndarray | None = None,
        trial: int | None = None,
    ) -> int:
        """Publish one frame of the current session; returns its publish timestamp (ns)."""
        if self.header is None:
            raise TransportError("send_frame before begin(): publish a session header first")
        now = _now_ns()
        self._maybe_resend_header(now)
        t_pub = _now_ns()
        self._send(encode_frame(self.header.session_id, seq, t_acq_ns, t_pub, traces, behaviour, stimulus, trial))
        self.last_seq = max(self.last_seq, seq)
        return t_pub

    def send_decoded(self, session_id: str, fields: dict[str, Any], arrays: Sequence[tuple[str, np.ndarray]]) -> bool:
        """Publish a `decoded` message (the decoder's output)."""
        now = _now_ns()
        self._maybe_resend_header(now)
        return self._send(encode_decoded(session_id, fields, arrays))

    def send_raw(self, parts: Sequence[Any]) -> bool:
        """Forward already-encoded parts unchanged (bit-identical relays and recordings)."""
        return self._send(parts)

    def tick(self) -> None:
        """Call while idle: re-sends the header and sends a heartbeat when they are due."""
        now = _now_ns()
        self._poll_subscriptions()
        self._maybe_resend_header(now)
        if now - self._last_send_ns >= self.heartbeat_interval_ns:
            sid = None if self.header is None else self.header.session_id
            self._send(encode_heartbeat(Heartbeat(sid, _now_ns(), self.last_seq)))

    def end(self, reason: str = "complete") -> None:
        """Finish the current session (subscribers learn how many frames there were)."""
        if self.header is None:
            return
        self._send(encode_end(End(self.header.session_id, self.last_seq + 1, reason, _now_ns())))
        self.header = None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()


class Subscriber:
    """Receives, validates and tracks a stream; malformed input is counted, never fatal.

    `recv()` returns the next message worth delivering (a new session header, a frame, an end,
    a heartbeat or a decoded message) or None when `timeout_s` passes. Malformed messages are
    counted in `stats`, kept in `errors`, passed to `on_error`, and raised only if `strict`.
    Each delivered message's raw parts are in `last_parts` (for bit-identical recording).
    """

    def __init__(
        self,
        connect: str | Iterable[str],
        *,
        topics: Iterable[bytes] = TOPICS,
        rcvhwm: int = DEFAULT_RCVHWM,
        linger_ms: int = 0,
        keys: Keys | None = None,
        late_after_s: float = 0.1,
        strict: bool = False,
        on_error: Any = None,
        in_order: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        rcvbuf: int | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        if rcvbuf is not None:  # the kernel's receive buffer (SO_RCVBUF); unset, Linux autotunes it (MBs)
            self._sock.setsockopt(zmq.RCVBUF, rcvbuf)
        keys = keys or default_keys()
        if keys is not None:
            secure_client(self._sock, keys)
        self.secure = keys is not None
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        # A peer sending a larger message part is disconnected by ZeroMQ before it is buffered.
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.hello = HELLO_PREFIX + uuid.uuid4().hex.encode()
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._sock.setsockopt(zmq.SUBSCRIBE, self.hello)
        endpoints = [connect] if isinstance(connect, str) else list(connect)
        for ep in endpoints:
            try:
                self._sock.connect(ep)
            except zmq.ZMQError as e:
                self._sock.close(0)
                raise TransportError(f"cannot connect subscriber to {ep}: {e}") from e
        self.endpoints = endpoints
        self.tracker = StreamTracker(late_after_s=late_after_s, in_order=in_order)
        self.strict = strict
        self.on_error = on_error
        self.last_parts: list[Any] = []
        self.last_recv_ns = 0
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> StreamStats:
        return self.tracker.stats.snapshot()

    @property
    def session(self) -> SessionHeader | None:
        return self.tracker.session

    @property
    def errors(self) -> list[ProtocolError]:
        return list(self.tracker.errors)

    def recv(self, timeout_s: float | None = 1.0) -> Message | None:
        """Next deliverable message, or None if nothing valid arrived within `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            poll_ms = None if remaining is None else int(remaining * 1000)
            if not self._poller.poll(poll_ms):
                return None
            parts = self._sock.recv_multipart(copy=False)
            recv_ns = _now_ns()
            try:
                msg = self.tracker.accept_parts(parts, recv_ns)
            except ProtocolError as e:
                if self.on_error is not None:
                    self.on_error(e)
                if self.strict:
                    raise
                continue
            if msg is not None:
                self.last_parts = parts
                self.last_recv_ns = recv_ns
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[Message]:
        """Messages until closed (skips timeouts)."""
        while not self._sock.closed:
            msg = self.recv(timeout_s=0.5)
            if msg is not None:
                yield msg

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close()
