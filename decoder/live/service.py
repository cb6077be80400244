"""The decode service: subscribe to a rig's traces, decode continuously, publish `decoded` frames.

Two threads, so that I/O never waits on compute. The I/O thread (the caller's, which created the sockets
and gets Ctrl-C / SIGTERM) owns the ZeroMQ Subscriber and Publisher: it reads every message as it comes
into a bounded inbox and publishes what the compute thread hands back over an inproc PAIR socket (the
same poll wakes it for both). The compute thread runs the streaming optimiser on each frame in order and
publishes the frames it finalises. It keeps up by shedding optimiser steps (`StepBudget`): every arriving
frame earns one frame period of compute credit, a step costs its measured running-average time, a frame
runs min(K, credit / step cost) steps, and none while frames wait behind it in the inbox. So the backlog
stays bounded whatever the model costs; should the inbox still fill (compute stalled for seconds), the
frames it cannot hold are counted (`backlog_overflow`) and logged, never silently lost.
A new session id resets the optimiser; a stream whose neurons the model does not know (matched by id)
is refused with a message naming the mismatch, and the service waits for the next session. A frame whose
`segment` differs from the previous frame's follows a cut (a replay of trials not recorded back to back): the
optimiser starts afresh at it while the frames before the cut finish beside it (streaming.py), so no window
spans the cut.
With `provisional`, each arriving frame's current estimate is also published at once (final=False): what a
closed loop acts on without waiting the lag; the final frame follows `lag` frames later.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zmq

from neurocine.decoder.live.decoded import DecodedFrame, encode_decoded_frame
from neurocine.decoder.live.step_budget import StepBudget
from neurocine.decoder.reconstruct.models import in_model_order
from neurocine.decoder.reconstruct.streaming import StreamingConfig
from neurocine.streams.commandline import get_logger
from neurocine.streams.protocol import RAW_TOPICS, End, Frame, ProtocolError, SessionHeader
from neurocine.streams.session import Session
from neurocine.streams.stall import add_stall_option, stall_config
from neurocine.streams.tracker import StreamStats
from neurocine.streams.transport import Publisher, Subscriber

MAX_DRAIN = 1000  # messages read from the socket per I/O turn before publishing what is ready
MAX_BACKLOG = 2048  # frames the inbox holds for the compute thread (~70 s at 30 Hz: a model load fits)
MAX_BACKLOG_BYTES = 256 << 20  # ... and at most this many bytes (a few huge messages cannot pile up)
RELOAD_MIN_S = 2.0  # a session needing models not loaded yet waits this long after the previous load
MODEL_CACHE = 4  # loaded model sets kept (a flapping or restarted rig reuses them)
JOIN_S = 10.0  # how long a stopping service waits for the compute thread's current frame (or model load)
# ONNX Runtime intra-op threads of `neurocine decode`. Measured with `bench latency --frames 1800` on the
# 2-core development machine (shared, load 6-10), alternating runs: 1 thread afforded 0.41-0.72 of 2 steps
# per frame (end-to-end p99 424-706 ms), 2 threads 0.10-0.26 (p99 522-1105 ms): the second ORT thread spins
# on the core that the I/O thread, the rig and the viewer also need. On more cores, try --threads 2 or 0.
DEFAULT_THREADS = 1

log = get_logger("decode", rate_limit_s=1.0)


class NeuronMismatch(ValueError):
    """The stream's neurons are not (enough of) the model's."""


@dataclasses.dataclass
class ServiceStats:
    sessions: int = 0
    refused_sessions: int = 0
    frames_in: int = 0
    decoded_out: int = 0
    provisional_out: int = 0
    steps_run: int = 0
    steps_shed: int = 0
    backlog_max: int = 0
    backlog_overflow: int = 0  # frames the full inbox could not take: dropped, counted, logged
    compute_ms_last: float = 0.0
    neurons_matched: int = 0
    dropped_stale: int = 0  # frames not after the last decoded one (late or replayed): dropped, counted
    not_published: int = 0  # gap frames the optimiser filled in: never published (never received)
    deferred_loads: int = 0  # sessions whose model load waited for the rate limit
    cuts: int = 0  # frames that began a new segment (not recorded right after the previous): the optimiser restarted
    wire: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def header_session(h: SessionHeader) -> Session:
    """An empty Session carrying a header's identity (what model loading needs: ids and mouse)."""
    n = h.n_neurons
    return Session(np.zeros((0, n), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                   np.asarray(h.neuron_ids), h.frame_rate, h.mouse_id, session_id=h.session_id, source=h.source)


class Inbox:
    """The bounded FIFO from the I/O thread to the compute thread; `get` says how many frames wait.

    Frames beyond `max_frames` (or `max_bytes`) are refused, for the caller to count; session headers and
    ends always fit unless the inbox holds 2 x `max_frames` items of any kind (a header flood)."""

    def __init__(self, max_frames: int = MAX_BACKLOG, max_bytes: int = MAX_BACKLOG_BYTES) -> None:
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._items: collections.deque[tuple[Any, int, int]] = collections.deque()
        self._cond = threading.Condition()
        self.frames = 0
        self.bytes = 0

    def put(self, msg: Any, recv_ns: int, nbytes: int) -> bool:
        is_frame = isinstance(msg, Frame)
        with self._cond:
            full = is_frame and (self.frames >= self.max_frames or self.bytes + nbytes > self.max_bytes)
            if full or len(self._items) >= 2 * self.max_frames:
                return False
            self._items.append((msg, recv_ns, nbytes))
            self.frames += is_frame
            self.bytes += nbytes
            self._cond.notify()
            return True

    def get(self, timeout_s: float) -> tuple[Any, int, int] | None:
        """(message, receive time ns, frames waiting including this one) or None after `timeout_s`."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            msg, recv_ns, nbytes = self._items.popleft()
            waiting = self.frames
            self.frames -= isinstance(msg, Frame)
            self.bytes -= nbytes
            return msg, recv_ns, waiting


class DecodeService:
    """Turns one rig stream into a decoded stream (see module docstring).

    `start_session`, `on_frame` and `end_session` are the compute side; called directly (tests) they
    publish on `pub` at once, under `run()` they hand their messages to the I/O thread."""

    def __init__(
        self,
        models: Sequence[str] | None,
        sub: Subscriber,
        pub: Publisher,
        *,
        config: StreamingConfig | None = None,
        provisional: bool = False,
        backend: str = "onnx",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        min_fraction: float = 0.5,
        max_backlog: int = MAX_BACKLOG,
        every_step: bool = False,
        allow_other_mouse: bool = False,
    ) -> None:
        self.models = list(models or [])
        self.sub, self.pub = sub, pub
        self.config = config or StreamingConfig()
        self.lag, self.steps = self.config.lag, self.config.steps
        self.provisional = provisional
        self._said_no_inverse = False
        self.backend, self.providers, self.threads = backend, providers, threads
        self.min_fraction = min_fraction
        self.allow_other_mouse = allow_other_mouse
        self.stats = ServiceStats()
        self.recon: Any = None
        self.columns: np.ndarray | None = None
        self.session_id: str | None = None
        self.refused: str | None = None  # session id of a refused stream
        self._segment: int | None = None  # the last frame's `segment`: a change is a cut (the optimiser restarts)
        self.provider = ""
        self._timing: collections.OrderedDict[int, tuple[int, int, int]] = collections.OrderedDict()
        self.budget = StepBudget(self.steps, 1 / 30, shed=not every_step)
        self._loaded: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._members: dict[str, Any] = {}  # session-independent models (ONNX), loaded once
        self._last_load = -1e9
        self._deferred: SessionHeader | None = None
        # the thread split: compute -> I/O messages go through `_emit`; I/O -> compute through `inbox`
        self.inbox = Inbox(max_backlog)
        self._emit: Callable[[Sequence[Any]], Any] = pub.send_raw
        self._wire: StreamStats | None = None  # the I/O thread's latest snapshot of the subscriber's stats
        self._wire_session_id: str | None = None  # the subscriber's current session, as the I/O thread saw it
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._out_sock: Any = None
        sub.on_error = self._on_wire_error

    def preload(self) -> None:
        """Load and check the models before any session arrives (errors name the damaged file)."""
        from neurocine.decoder.reconstruct.models import preload_models

        preload_models(self.models, self.backend, self.providers, self.threads, cache=self._members)

    def _on_wire_error(self, e: ProtocolError) -> None:
        log.warning(f"rejected message: {e}", extra={"key": e.kind})

    # ------------------------------------------------------------------ sessions
    def _load(self, h: SessionHeader) -> Any:
        """Models with the stream's neurons matched by id (cached: a restarted rig reuses them)."""
        from neurocine.decoder.reconstruct.models import load_models

        key = self._key(h)
        if key not in self._loaded:
            self._last_load = time.monotonic()
            self._loaded[key] = load_models(self.models or None, header_session(h), None, backend=self.backend,
                                            providers=self.providers, threads=self.threads, cache=self._members,
                                            fuse=self.config.ensemble == "gradients",
                                            allow_other_mouse=self.allow_other_mouse)
            while len(self._loaded) > MODEL_CACHE:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    @staticmethod
    def _key(h: SessionHeader) -> tuple[str, int, int]:
        return (h.mouse_id, h.n_neurons, hash(h.neuron_ids.tobytes()))

    def start_session(self, h: SessionHeader) -> None:
        """Check the stream's neurons against the model and reset the optimiser, or refuse."""
        from neurocine.decoder.reconstruct.backends import BackendError
        from neurocine.decoder.reconstruct.streaming import make_streaming

        if self.recon is not None and self.session_id != h.session_id:
            self._flush("switch")  # the previous session's last `lag` frames are final now
        self._deferred = None
        if self._key(h) not in self._loaded and time.monotonic() - self._last_load < RELOAD_MIN_S:
            self.session_id, self.recon, self._deferred = h.session_id, None, h  # retried by the compute loop
            self.stats.deferred_loads += 1
            return
        self.session_id = h.session_id
        self.recon = None
        self._segment = None
        self._timing.clear()
        self.budget.reset(1.0 / h.frame_rate)
        self.stats.sessions += 1
        try:
            loaded = self._load(h)
            n_model = loaded.ensemble.n_neurons
            matched = int((loaded.columns >= 0).sum())
            if matched < self.min_fraction * n_model:
                raise NeuronMismatch(
                    f"session {h.session_id} (mouse {h.mouse_id!r}, {h.n_neurons} neurons) has only {matched} of "
                    f"the model's {n_model} neuron ids (at least {self.min_fraction:.0%} needed)")
        except (NeuronMismatch, BackendError) as e:
            self.refused = h.session_id
            self.stats.refused_sessions += 1
            log.warning(f"REFUSED session {h.session_id}: {e}", extra={"key": "refused"})
            return
        self.refused = None
        self.columns = loaded.columns
        self.stats.neurons_matched = matched
        self.provider = ",".join(getattr(m, "provider", "torch") for m in loaded.ensemble.members)
        if self.config.warm_start == "inverse" and loaded.inverse is None and not self._said_no_inverse:
            self._said_no_inverse = True
            log.info("the model has no inverse decoder (inverse.onnx): new frames start from the previous estimate",
                     extra={"key": "inverse"})
        self.recon = make_streaming(loaded.ensemble, self.config, mask=loaded.opt_mask, inverse=loaded.inverse)
        warm = self.config.warm_start_with(loaded.inverse)
        threads = f"{self.threads} compute thread(s)" if self.threads else "all cores"
        log.info(f"session {h.session_id} mouse {h.mouse_id}: {matched}/{n_model} model neurons "
                 f"matched; lag {self.lag}, {self.steps} steps/frame, warm start {warm}, "
                 f"{len(loaded.ensemble)} encoder(s) ({self.config.ensemble}) on {self.provider}, {threads}"
                 f"{', provisional frames' if self.provisional else ''}", extra={"key": "session"})

    # ------------------------------------------------------------------ frames
    def on_frame(self, f: Frame, recv_ns: int, backlog: int) -> None:
        """Decode one frame (shedding steps when `backlog` frames wait, itself included) and publish what it
        finalises."""
        if self.recon is None or f.session_id != self.session_id:
            return
        if f.seq <= getattr(self.recon, "last_seq", -1):
            self.stats.dropped_stale += 1  # the optimiser only moves forward; a late frame cannot crash it
            return
        self.stats.frames_in += 1
        self._timing[f.seq] = (f.t_acq_ns, f.t_pub_ns, recv_ns)
        k = self.budget.grant(backlog, arrived_s=recv_ns / 1e9)
        self.stats.steps_shed += self.steps - k
        self.stats.steps_run += k
        resp = in_model_order(f.traces, self.columns)
        cut = f.segment is not None and self._segment is not None and f.segment != self._segment
        self._segment = f.segment if f.segment is not None else self._segment
        self.stats.cuts += cut
        t0 = time.time_ns()
        outs = self.recon.push(resp, f.behaviour, f.seq, f.session_id, steps=k, cut=cut)
        compute = time.time_ns() - t0
        self.stats.compute_ms_last = round(compute / 1e6, 3)
        self.budget.charge(k, compute / 1e9)
        for out in outs:
            if out.final:
                self._publish(out, f, queue_ns=t0 - recv_ns, compute_ns=compute, steps=k)
        if self.provisional and (est := self.recon.estimate_at_age(0)) is not None:
            self._publish_provisional(est, f, queue_ns=t0 - recv_ns, compute_ns=compute, steps=k)

    def end_session(self, e: End) -> None:
        """The rig finished: the frames still inside the lag become final now. The optimiser stays: frames
        after an `end` (a forged one, or a rig resuming) go on being decoded."""
        if self.recon is None or e.session_id != self.session_id:
            return
        self._flush("end")

    def _flush(self, cause: str) -> None:
        """The frames still inside the lag, final now, each marked `flushed` with the cause ("end" or "switch")
        and its true lag (the newer frames that refined it): a consumer can tell them from lag-old frames."""
        newest = int(getattr(self.recon, "last_seq", -1))
        for out in self.recon.flush():
            self._publish(out, None, 0, 0, 0, flushed=cause, newest=newest)

    def _publish(self, out: Any, trigger: Frame | None, queue_ns: int, compute_ns: int, steps: int,
                 flushed: str = "", newest: int = -1) -> None:
        if out.seq not in self._timing:
            self.stats.not_published += 1  # a gap frame: nothing is published for a seq never received
            return
        t_acq, t_pub, t_recv = self._timing.pop(out.seq)
        while len(self._timing) > 4 * (self.lag + 64):
            self._timing.popitem(last=False)
        self.stats.decoded_out += 1
        d = DecodedFrame(
            session_id=self.session_id or "", seq=out.seq, t_acq_ns=t_acq, t_pub_ns=t_pub,
            t_recv_ns=t_recv if trigger is None else self._trigger_recv(trigger), t_done_ns=time.time_ns(),
            lag=(trigger.seq if trigger is not None else max(newest, out.seq)) - out.seq, final=True,
            frame=out.as_uint8(), flushed=flushed,
            trigger_seq=trigger.seq if trigger is not None else out.seq,
            trigger_t_pub_ns=trigger.t_pub_ns if trigger is not None else t_pub,
            queue_ns=queue_ns, compute_ns=compute_ns, steps=steps, stats=self._wire_stats(),
        )
        self._emit(encode_decoded_frame(d))

    def _publish_provisional(self, frame: np.ndarray, f: Frame, queue_ns: int, compute_ns: int, steps: int) -> None:
        """The newest frame's estimate right after its own steps (final=False, lag 0)."""
        t_acq, t_pub, t_recv = self._timing.get(f.seq, (f.t_acq_ns, f.t_pub_ns, 0))
        d = DecodedFrame(
            session_id=self.session_id or "", seq=f.seq, t_acq_ns=t_acq, t_pub_ns=t_pub, t_recv_ns=t_recv,
            t_done_ns=time.time_ns(), lag=0, final=False,
            frame=np.clip(np.rint(frame), 0, 255).astype(np.uint8), trigger_seq=f.seq, trigger_t_pub_ns=f.t_pub_ns,
            queue_ns=queue_ns, compute_ns=compute_ns, steps=steps, stats=self._wire_stats(),
        )
        self.stats.provisional_out += 1
        self._emit(encode_decoded_frame(d))

    def _trigger_recv(self, trigger: Frame) -> int:
        t = self._timing.get(trigger.seq)
        return t[2] if t else 0

    def _wire_stats(self) -> dict[str, Any]:
        w = self._wire if self._wire is not None else self.sub.stats  # compute never touches the socket's object
        return {"frames_in": self.stats.frames_in, "steps_shed": self.stats.steps_shed,
                "backlog_max": self.stats.backlog_max, "gaps": w.gaps, "missing": w.missing,
                "malformed": w.malformed, "sessions": self.stats.sessions}

    # ------------------------------------------------------------------ compute thread
    def _handle(self, msg: Any, recv_ns: int, waiting: int) -> None:
        if isinstance(msg, SessionHeader):
            self.start_session(msg)
        elif isinstance(msg, Frame):
            self.stats.backlog_max = max(self.stats.backlog_max, waiting)
            self.on_frame(msg, recv_ns, waiting)
        elif isinstance(msg, End):
            self.end_session(msg)

    def _compute_loop(self, out_address: str, max_decoded: int | None) -> None:
        """Frames from the inbox through the optimiser, in order; results to the I/O thread over inproc."""
        sock = zmq.Context.instance().socket(zmq.PAIR)
        sock.connect(out_address)
        self._out_sock = sock  # closed by the I/O thread once it has read everything (after join)
        self._emit = lambda parts: sock.send_multipart(parts, copy=False)
        try:
            while not self._stop.is_set():
                item = self.inbox.get(timeout_s=0.05)
                if item is not None:
                    self._handle(*item)
                d = self._deferred
                if d is not None and time.monotonic() - self._last_load >= RELOAD_MIN_S:
                    if self._wire_session_id == d.session_id:
                        self.start_session(d)
                    else:
                        self._deferred = None
                if max_decoded is not None and self.stats.decoded_out >= max_decoded:
                    break
        except BaseException as e:  # re-raised by run() on the I/O thread: a bug must not leave a deaf service
            self._failure = e
        finally:
            self._stop.set()
            with contextlib.suppress(zmq.Again):  # a full pipe: the I/O thread is awake anyway
                sock.send(b"", zmq.NOBLOCK)  # wakes the I/O thread's poll (an empty part: nothing to publish)

    # ------------------------------------------------------------------ I/O thread
    def _receive(self) -> None:
        """Everything the subscriber has (up to MAX_DRAIN) into the inbox, each with its receive time."""
        for _ in range(MAX_DRAIN):
            msg = self.sub.recv(timeout_s=0)
            if msg is None:
                break
            nbytes = sum(len(p) for p in self.sub.last_parts)
            if not self.inbox.put(msg, self.sub.last_recv_ns, nbytes):
                self.stats.backlog_overflow += 1
                what = f"frame {msg.seq}" if isinstance(msg, Frame) else type(msg).__name__
                log.warning(f"decode backlog full ({self.inbox.frames} frames waiting): dropped {what} of session "
                            f"{msg.session_id} ({self.stats.backlog_overflow} so far)", extra={"key": "overflow"})
        self._wire = self.sub.stats
        session = self.sub.session
        self._wire_session_id = session.session_id if session is not None else None

    def _forward(self, sock: Any) -> None:
        """Publish what the compute thread has handed over."""
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(parts) > 1 or len(parts[0]) > 0:
                self.pub.send_raw(parts)

    def run(self, should_stop: Callable[[], bool] = lambda: False, max_decoded: int | None = None,
            status_every_s: float = 5.0) -> ServiceStats:
        """Serve until `should_stop()` (or Ctrl-C / SIGTERM), or until `max_decoded` frames were published.

        Call it on the thread that created `sub` and `pub`: it becomes the I/O thread."""
        address = f"inproc://decode-{uuid.uuid4().hex}"
        back = zmq.Context.instance().socket(zmq.PAIR)
        back.bind(address)
        self._stop.clear()
        self._wire = self.sub.stats
        compute = threading.Thread(target=self._compute_loop, args=(address, max_decoded), name="decode-compute",
                                   daemon=True)
        poller = zmq.Poller()
        for sock in self.sub.sockets:  # the data socket and its connection monitor (a cut-off shows only there)
            poller.register(sock, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        last_status = time.monotonic()
        compute.start()
        try:
            while not self._stop.is_set() and not should_stop():
                ready = dict(poller.poll(50))
                if back in ready:
                    self._forward(back)
                if self.sub.sockets[0] in ready:
                    self._receive()
                # every turn, whatever woke it: reconnect after a cut-off, warn when the rig's stream goes silent
                # (polling the data socket alone, the service never woke to reconnect: a 25-s stall was measured)
                self.sub.maintain()
                self.pub.tick()
                if time.monotonic() - last_status >= status_every_s:
                    last_status = time.monotonic()
                    log.info(f"status {self.status_line()}", extra={"key": "status"})
        except KeyboardInterrupt:
            pass
        finally:
            self._stop.set()
            compute.join(JOIN_S)  # the compute thread ends after its current frame
            self._forward(back)  # what it finished is published
            if self._out_sock is not None and not compute.is_alive():
                self._out_sock.close(0)
            back.close(0)
            self._emit = self.pub.send_raw
        self.stats.wire = self.sub.stats.as_dict()
        if self._failure is not None:
            raise self._failure
        return self.stats

    def status_line(self) -> str:
        s, w = self.stats, self.sub.stats
        return (f"in {s.frames_in} out {s.decoded_out} steps {s.steps_run} shed {s.steps_shed} "
                f"backlog_max {s.backlog_max} compute {s.compute_ms_last} ms gaps {w.gaps} malformed {w.malformed}"
                f"{f' overflow {s.backlog_overflow}' if s.backlog_overflow else ''}"
                f"{f' cutoffs {w.cutoffs}' if w.cutoffs else ''}{f' stalls {w.stalls}' if w.stalls else ''}"
                f"{f' STALLED: no valid frame for {w.stalled_for_s:.1f} s' if w.stalled else ''}")


# ---------------------------------------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    from neurocine.decoder.reconstruct.models import add_model_args
    from neurocine.decoder.reconstruct.streaming import add_streaming_args
    from neurocine.streams.commandline import add_verb

    p = add_verb(sub, "decode", "decode service: rig traces in, decoded movie frames out (ZeroMQ)",
                 "neurocine decode --connect tcp://127.0.0.1:5555 --bind tcp://127.0.0.1:5556 --lag 32 --steps 2\n"
                 "neurocine decode --model models/m1 --model models/m2 --provider cuda --connect tcp://rig:5555")
    p.add_argument("--connect", default="tcp://127.0.0.1:5555", help="the rig's (or replay's) endpoint")
    p.add_argument("--bind", default="tcp://127.0.0.1:5556", help="where decoded frames are published")
    add_streaming_args(p)
    p.add_argument("--provisional", action="store_true",
                   help="also publish each arriving frame's current estimate at once (final=False), for closed loops")
    add_model_args(p, threads_default=DEFAULT_THREADS,
                   threads_help=f"ONNX Runtime intra-op (or torch) threads; 0 = all cores (default {DEFAULT_THREADS}: "
                   "measured best on a 2-core machine, where a second thread competes with the I/O thread)")
    p.add_argument("--every-step", action="store_true",
                   help="never shed steps: every frame gets --steps however far behind the decoder falls (replays "
                        "where real time does not matter; frames then wait in the inbox, up to its bound)")
    p.add_argument("--min-fraction", type=float, default=0.5,
                   help="refuse a stream holding fewer than this fraction of the model's neurons")
    add_stall_option(p, "when a live session sends no valid frame", "the status line and the JSON say so too")
    p.add_argument("--max-decoded", type=int, default=None, help="stop after publishing this many frames")
    p.add_argument("--json", help="write the final stats here")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from neurocine.decoder.reconstruct.backends import BackendError
    from neurocine.decoder.reconstruct.models import default_models, providers_for, resolve_backend
    from neurocine.decoder.reconstruct.offline import ReconstructionError
    from neurocine.decoder.reconstruct.streaming import streaming_config_from
    from neurocine.streams.commandline import emit_json, stop_on_sigterm

    models = args.model or default_models()
    try:
        backend = resolve_backend(models, args.backend)
        providers = providers_for(args.provider)
    except BackendError as err:
        log.error(str(err))
        return 2
    if backend == "onnx":  # a graph that cannot load, batch or run on --provider: say so now, not per session
        from neurocine.decoder.reconstruct.backends import BackendError, check_graphs

        try:
            check_graphs(models, providers, args.threads or 0)
        except BackendError as err:
            log.error(str(err))
            return 2
    stop_on_sigterm()
    stall = stall_config(args)
    with Subscriber(args.connect, topics=RAW_TOPICS, in_order=True, stall=stall, log_name="decode") as sub, \
            Publisher(args.bind) as pub:
        service = DecodeService(models, sub, pub, config=streaming_config_from(args), provisional=args.provisional,
                                backend=backend,
                                providers=providers, threads=args.threads, min_fraction=args.min_fraction,
                                every_step=args.every_step, allow_other_mouse=args.allow_other_mouse)
        try:
            service.preload()
        except (BackendError, ReconstructionError) as e:
            log.error(f"cannot load the models: {e}")
            return 2
        log.info(f"{args.connect} -> {args.bind}, model {models}, waiting for a session (Ctrl-C stops)")
        stats = service.run(max_decoded=args.max_decoded)
    emit_json({"decode": stats.as_dict(), "provider": service.provider, "threads": args.threads}, args.json)
    return 0
