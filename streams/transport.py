"""ZeroMQ publisher and subscriber for wire protocol v1, with explicit queue limits and timeouts.

High-water marks (HWM) bound memory: a PUB queue holds at most `sndhwm` messages per subscriber, a
SUB queue `rcvhwm`. A live rig must never stall, so by default a full queue drops messages (the
subscriber sees the gap). A replay must lose nothing, so it publishes with ``nodrop=True``
(ZMQ_XPUB_NODROP): a full queue makes `send` wait for the slowest subscriber instead.
The publisher is an XPUB socket so it can see subscriptions: each Subscriber also subscribes to a
unique hello topic that never matches a message, which lets a publisher count who is listening.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import zmq

from neurocine.streams.protocol import (
    MAX_NEURONS,
    MAX_STIMULUS_SIDE,
    TOPIC_END,
    TOPIC_FRAME,
    TOPIC_HEARTBEAT,
    TOPICS,
    End,
    Frame,
    Heartbeat,
    Message,
    ProtocolError,
    SessionHeader,
    encode_end,
    encode_frame,
    encode_heartbeat,
    encode_session,
)
from neurocine.streams.security import Keys, default_keys, insecure_allowed, is_loopback, secure_client, secure_server
from neurocine.streams.stall import DEFAULT_STALL, StallConfig, StallWatch
from neurocine.streams.tracker import StreamStats, StreamTracker

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
#: Room for a frame's msgpack header (its session id may be up to 64 KiB) beside its largest array.
SESSION_PART_MARGIN = 128 * 1024
#: Topics whose every part is bounded by the current session (a `session` message may start a larger one,
#: `decoded` follows the decoder's model: both keep the socket's ceiling).
SESSION_BOUND_TOPICS = frozenset({TOPIC_FRAME, TOPIC_END, TOPIC_HEARTBEAT})
#: A publisher that cut us off (ZeroMQ drops a peer over MAXMSGSIZE for good) is connected to again after this.
CUTOFF_RECONNECT_S = 0.1
#: ZeroMQ's own reconnect to a publisher that went away: first after 100 ms, backing off to this. Why 0.5 s, not
#: ZeroMQ's 1 s: with the header sent on a join (JOIN_HEADER_MIN_S), a restarted publisher is heard again within a
#: second (tests/test_stall.py); a connect attempt to a dead port twice a second costs nothing.
RECONNECT_IVL_MAX_MS = 500
#: A subscriber that joins gets the session header at once (not up to HEADER_INTERVAL_S later); joins this close
#: together share one header (a peer flapping its connection cannot make the publisher send only headers).
JOIN_HEADER_MIN_S = 0.05

log = logging.getLogger("neurocine.transport")


class TransportError(RuntimeError):
    """A socket could not be set up (address in use, bad endpoint) or the publisher was closed."""


class OversizedMessage(ProtocolError):
    """A message part larger than anything valid in the current session (the socket's ceiling is looser)."""

    kind = "oversized"


def session_part_limit(header: SessionHeader, ceiling: int = MAX_MESSAGE_BYTES) -> int:
    """Largest part a valid frame, heartbeat or end of this session can have (+ margin), capped by `ceiling`.

    Why: the socket's ceiling must admit any session (16 MiB stimulus frames); a session of 1,000 neurons never
    sends a part over ~0.2 MB, so anything larger is dropped before it is decoded."""
    stim = 0 if header.stimulus_shape is None else header.stimulus_shape[0] * header.stimulus_shape[1]
    largest = max(4 * header.n_neurons, 4 * len(header.behaviour_channels), stim)
    return min(ceiling, largest + SESSION_PART_MARGIN)


#: A caller away from recv() longer than this, with messages waiting, was busy (not the stream silent).
AWAY_NOTICED_NS = 20_000_000
#: While a session is live, recv() wakes at least this often to notice a stall (streams/stall.py).
STALL_CHECK_S = 0.25


def _now_ns() -> int:
    return time.time_ns()


def _drop_traceback(e: BaseException) -> None:
    """Forget where a swallowed error was raised: its traceback's frames hold the message's parts and the
    error itself (a cycle only the cyclic GC frees), so the errors a tracker keeps would keep each message
    alive; under a flood of large invalid messages that held hundreds of MB until a full collection."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cur.__traceback__ = None
        cur = cur.__cause__ or cur.__context__


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
        self.joins = 0  # subscriptions seen, reconnections included
        self._header_wanted = False  # a subscriber joined since the last header: send it now, not at the interval
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
                    self.joins += 1
                    self._header_wanted = True
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
        self._header_wanted = False
        # A header re-send is not news: keep the heartbeat timer, so an idle session still gets heartbeats
        # (their last_seq is how a subscriber notices frames lost at the end of a burst).
        self._last_send_ns = last_send

    def _maybe_resend_header(self, now: int) -> None:
        if self.header is None:
            return
        since = now - self._last_header_ns
        if since >= self.header_interval_ns or (self._header_wanted and since >= JOIN_HEADER_MIN_S * 1e9):
            self._send_header()

    def send_frame(
        self,
        seq: int,
        t_acq_ns: int,
        traces: np.ndarray,
        behaviour: np.ndarray,
        stimulus: np.ndarray | None = None,
        trial: int | None = None,
        segment: int | None = None,
    ) -> int:
        """Publish one frame of the current session; returns its publish timestamp (ns)."""
        if self.header is None:
            raise TransportError("send_frame before begin(): publish a session header first")
        now = _now_ns()
        self._poll_subscriptions()  # a subscriber that (re)joined gets the header before this frame
        self._maybe_resend_header(now)
        t_pub = _now_ns()
        self._send(encode_frame(self.header.session_id, seq, t_acq_ns, t_pub, traces, behaviour, stimulus, trial,
                                segment))
        self.last_seq = max(self.last_seq, seq)
        return t_pub

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
    A caller that waits on its own poller registers every socket of `sockets` and calls `maintain()` every
    turn: the reconnect after a cut-off and the stall warning happen there, whether or not anything arrives.
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
        stall: StallConfig | None = DEFAULT_STALL,
        log_name: str | None = None,
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
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
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
        self._left_ns: int | None = None  # when recv() last returned (the caller's time away starts)
        self.strict = strict
        self.on_error = on_error
        self.last_parts: list[Any] = []
        self.last_recv_ns = 0
        self.max_message_bytes = max_message_bytes
        self.oversized = 0  # parts over the current session's limit, dropped before decoding
        self.cutoffs = 0  # times a publisher cut us off (over MAXMSGSIZE) and we connected again
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        # ZeroMQ never reconnects to a peer it dropped for a protocol error (a part over MAXMSGSIZE): a monitor
        # sees the disconnect that is not followed by a reconnect attempt, and we connect again ourselves.
        self._monitor: zmq.Socket | None = self._sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._cut: dict[str, float] = {}  # endpoint -> when it was disconnected without a reconnect attempt
        self._last_cut_log = -1e9
        self._log = log if log_name is None else logging.getLogger(f"neurocine.{log_name}")
        #: a session's stream that goes silent is logged (None: never, e.g. a decoded stream, which has no sessions)
        self.stall = None if stall is None else StallWatch(stall, self._log, ", ".join(endpoints))
        self._quiet = {"heartbeats": 0, "rejected": 0, "cutoffs": 0}  # what came instead of frames

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> StreamStats:
        st = self.tracker.stats.snapshot()
        st.cutoffs = self.cutoffs
        if self.stall is not None:
            now = time.monotonic()
            st.stalled, st.stalls = self.stall.stalled, self.stall.stalls
            st.stalled_s = round(self.stall.stalled_s(now), 2)
            st.stalled_for_s = round(self.stall.stalled_for(now), 2)
        return st

    @property
    def session(self) -> SessionHeader | None:
        return self.tracker.session

    @property
    def errors(self) -> list[ProtocolError]:
        return list(self.tracker.errors)

    @property
    def sockets(self) -> tuple[zmq.Socket, ...]:
        """Every socket an outside poller must wait on: the data socket first, then the connection monitor.

        Why the monitor too: a cut-off (a part over MAXMSGSIZE, a broken ZMTP stream) is only seen there, and a
        caller that polled the data socket alone never woke to reconnect (`decode` stayed deaf for good)."""
        return (self._sock,) if self._monitor is None else (self._sock, self._monitor)

    def maintain(self) -> None:
        """Upkeep that must happen even when nothing arrives: connect again to a publisher that cut us off, and
        say when an expected stream has gone silent. `recv` does it; a caller with its own poller calls it on
        every turn (at least every ~0.1 s), whatever woke it."""
        if self._monitor is not None and (self._cut or self._monitor.poll(0)):
            self._watch_connections()
        if self.stall is not None and self.stall.expecting and not self._sock.poll(0):  # nothing waits: silence
            self.stall.check(time.monotonic(), self._quiet_hint())

    def _quiet_hint(self) -> str:
        q = self._quiet
        said = []
        if q["cutoffs"]:
            said.append(f"the publisher cut this subscriber off {q['cutoffs']} time(s) (reconnected)")
        if q["rejected"]:
            said.append(f"{q['rejected']} message(s) rejected (stats.errors_by_kind)")
        said.append(f"{q['heartbeats']} heartbeat(s): the publisher is up but sends no frame" if q["heartbeats"]
                    else "no heartbeat either: the publisher is gone or unreachable")
        return "; ".join(said)

    def _upkeep_due_s(self) -> float | None:
        """How long recv may block before maintain() is due (None: nothing pending)."""
        due = None
        if self._cut:  # wake up in time to reconnect
            due = max(0.0, min(self._cut.values()) + CUTOFF_RECONNECT_S - time.monotonic())
        if self.stall is not None and self.stall.expecting:
            due = STALL_CHECK_S if due is None else min(due, STALL_CHECK_S)
        return due

    def _delivered(self, msg: Message) -> None:
        """Feed the stall watch what the tracker let through."""
        if self.stall is None:
            return
        now = time.monotonic()
        if isinstance(msg, Frame):
            self.stall.frame(msg.seq, now)
            self._quiet = dict.fromkeys(self._quiet, 0)
        elif isinstance(msg, SessionHeader):
            self.stall.session(msg.session_id, now)
        elif isinstance(msg, End):
            self.stall.ended(now)
        elif isinstance(msg, Heartbeat):
            self._quiet["heartbeats"] += 1

    def recv(self, timeout_s: float | None = 1.0) -> Message | None:
        """Next deliverable message, or None if nothing valid arrived within `timeout_s`."""
        nxt = self.tracker.take_next()
        if nxt is not None:  # the frame that switched to a new session, right after that session's header
            msg, parts, recv_ns = nxt
            self.last_parts, self.last_recv_ns = parts, recv_ns
            self._delivered(msg)
            return msg
        entered = _now_ns()
        left = self._left_ns
        # messages waited while the caller was busy elsewhere (only long absences matter: no poll per message)
        if left is not None and entered - left > AWAY_NOTICED_NS and self._sock.poll(0):
            self.tracker.note_away(entered - left)
        try:
            return self._recv(timeout_s)
        finally:
            self._left_ns = _now_ns()

    def _recv(self, timeout_s: float | None) -> Message | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            due = self._upkeep_due_s()
            if due is not None:
                remaining = due if remaining is None else min(remaining, due)
            poll_ms = None if remaining is None else int(remaining * 1000)
            ready = dict(self._poller.poll(poll_ms))
            if self._monitor is not None and (self._monitor in ready or self._cut):
                self._watch_connections()
            if self._sock not in ready:
                self.maintain()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            parts = self._sock.recv_multipart(copy=False)
            recv_ns = _now_ns()
            try:
                self._check_size(parts)
                msg = self.tracker.accept_parts(parts, recv_ns)
            except ProtocolError as e:
                self._quiet["rejected"] += 1
                if self.on_error is not None:
                    self.on_error(e)
                if self.strict:
                    raise
                _drop_traceback(e)
                continue
            if msg is not None:
                delivered = self.tracker.delivered_parts
                self.last_parts = parts if delivered is None else delivered
                self.last_recv_ns = recv_ns
                self._delivered(msg)
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _check_size(self, parts: Sequence[Any]) -> None:
        """Drop (typed, counted) a frame, heartbeat or end with a part no message of its session can have."""
        headers = self.tracker.headers
        if not headers or len(parts) < 2 or len(parts[0]) > 16 or bytes(parts[0]) not in SESSION_BOUND_TOPICS:
            return
        limit = max(session_part_limit(h, self.max_message_bytes) for h in headers)
        largest = max(len(p) for p in parts)
        if largest > limit:
            self.oversized += 1
            e = OversizedMessage(f"a part of {largest} bytes; the session's parts are at most {limit} bytes "
                                 f"({headers[0].n_neurons} neurons)", bytes(parts[0]))
            self.tracker.count_error(e)
            raise e

    def _watch_connections(self) -> None:
        """Read the socket monitor; connect again to a publisher that cut us off and will not be retried."""
        from zmq.utils.monitor import recv_monitor_message

        assert self._monitor is not None
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            ep = self._endpoint_of(ev.get("endpoint", b""))
            if ep is None:
                continue
            if ev["event"] == zmq.EVENT_DISCONNECTED:
                self._cut[ep] = time.monotonic()
            else:  # ZeroMQ is retrying (an ordinary disconnect) or connected: nothing for us to do
                self._cut.pop(ep, None)
        now = time.monotonic()
        for ep, t in list(self._cut.items()):
            if now - t < CUTOFF_RECONNECT_S:
                continue
            del self._cut[ep]
            self.cutoffs += 1
            self._quiet["cutoffs"] += 1
            if now - self._last_cut_log >= 1.0:  # a peer that keeps doing it gets one line a second
                self._last_cut_log = now
                self._log.warning("%s cut this subscriber off (a message part over %d bytes, or a protocol error) and "
                            "ZeroMQ does not retry such a peer: connecting again (%d times so far)", ep,
                            self.max_message_bytes, self.cutoffs)
            with contextlib.suppress(zmq.ZMQError):  # already gone from the socket's endpoints
                self._sock.disconnect(ep)
            self._sock.connect(ep)

    def _endpoint_of(self, raw: bytes) -> str | None:
        """Which of our endpoints a monitor event is about (events name the resolved address)."""
        name = raw.decode("utf-8", "replace")
        if name in self.endpoints:
            return name
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        for ep in self.endpoints:
            scheme, _, rest = ep.partition("://")
            host, _, port = rest.rpartition(":")
            try:
                if name == f"{scheme}://{socket.gethostbyname(host.strip('[]'))}:{port}":
                    return ep
            except OSError:
                continue
        return None

    def __iter__(self) -> Iterator[Message]:
        """Messages until closed (skips timeouts)."""
        while not self._sock.closed:
            msg = self.recv(timeout_s=0.5)
            if msg is not None:
                yield msg

    def close(self) -> None:
        if not self._sock.closed:
            if self._monitor is not None:
                self._sock.disable_monitor()
                self._monitor.close(0)
                self._monitor = None
            self._sock.close()
