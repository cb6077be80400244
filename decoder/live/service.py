"""The decode service: subscribe to a rig's traces, decode continuously, publish `decoded` frames.

One loop, one thread (ZeroMQ sockets are not thread-safe): drain what has arrived, run the streaming
optimiser on each new frame, publish the frames it finalises. It keeps up by shedding optimiser steps:
every arriving frame earns one frame period of compute credit, a step costs its measured time (a
running average), a frame runs min(K, credit / step cost) steps, and none while frames wait behind it.
So the backlog stays bounded whatever the model costs, and a model too slow for K steps per frame
still gets every step the machine can afford; shed steps are counted in the stats on every message.
A new session id resets the optimiser; a stream whose neurons the model does not know (matched by id)
is refused with a message naming the mismatch, and the service waits for the next session.
With `provisional`, each arriving frame's current estimate is also published at once (final=False): what a
closed loop acts on without waiting the lag; the final frame follows `lag` frames later.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from decoder.live.decoded import DecodedFrame, encode_decoded_frame
from decoder.reconstruct.streaming import StreamingConfig
from streams.protocol import RAW_TOPICS, End, Frame, ProtocolError, SessionHeader
from streams.session import Session
from streams.transport import Publisher, Subscriber

MAX_DRAIN = 1000  # messages read from the socket per loop turn (the socket's HWM bounds the rest)
MAX_DRAIN_BYTES = 256 << 20  # ... and at most this many bytes (a few huge messages cannot pile up)
RELOAD_MIN_S = 2.0  # a session needing models not loaded yet waits this long after the previous load
MODEL_CACHE = 4  # loaded model sets kept (a flapping or restarted rig reuses them)


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
    compute_ms_last: float = 0.0
    neurons_matched: int = 0
    dropped_stale: int = 0  # frames not after the last decoded one (late or replayed): dropped, counted
    not_published: int = 0  # gap frames the optimiser filled in: never published (never received)
    deferred_loads: int = 0  # sessions whose model load waited for the rate limit
    wire: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def header_session(h: SessionHeader) -> Session:
    """An empty Session carrying a header's identity (what model loading needs: ids and mouse)."""
    n = h.n_neurons
    return Session(np.zeros((0, n), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                   np.asarray(h.neuron_ids), h.frame_rate, h.mouse_id, session_id=h.session_id, source=h.source)


class RateLimitedLog:
    """Print at most one line per `interval_s` per key, with how many were suppressed."""

    def __init__(self, interval_s: float = 1.0, stream: Any = None) -> None:
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def __call__(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval_s:
            extra = f" (+{self._suppressed[key]} more)" if self._suppressed[key] else ""
            print(f"decode: {message}{extra}", file=self.stream, flush=True)
            self._last[key] = now
            self._suppressed[key] = 0
        else:
            self._suppressed[key] += 1


class DecodeService:
    """Turns one rig stream into a decoded stream (see module docstring)."""

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
        log: Callable[[str, str], None] | None = None,
    ) -> None:
        self.models = list(models or [])
        self.sub, self.pub = sub, pub
        self.config = config or StreamingConfig()
        self.lag, self.steps = self.config.lag, self.config.steps
        self.provisional = provisional
        self._said_no_inverse = False
        self.backend, self.providers, self.threads = backend, providers, threads
        self.min_fraction = min_fraction
        self.log = log or RateLimitedLog()
        self.stats = ServiceStats()
        self.recon: Any = None
        self.columns: np.ndarray | None = None
        self.session_id: str | None = None
        self.refused: str | None = None  # session id of a refused stream
        self.provider = ""
        self._timing: collections.OrderedDict[int, tuple[int, int, int]] = collections.OrderedDict()
        self.period_s = 1 / 30
        self._credit_s = 0.0
        self._last_recv_ns = 0
        self._step_cost_s: float | None = None  # running average of one optimiser step's time
        self._loaded: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._members: dict[str, Any] = {}  # session-independent models (ONNX), loaded once
        self._last_load = -1e9
        self._deferred: SessionHeader | None = None
        sub.on_error = self._on_wire_error

    def preload(self) -> None:
        """Load and check the models before any session arrives (errors name the damaged file)."""
        from decoder.reconstruct.models import preload_models

        preload_models(self.models, self.backend, self.providers, self.threads, cache=self._members)

    def _on_wire_error(self, e: ProtocolError) -> None:
        self.log(e.kind, f"rejected message: {e}")

    # ------------------------------------------------------------------ sessions
    def _load(self, h: SessionHeader) -> Any:
        """Models with the stream's neurons matched by id (cached: a restarted rig reuses them)."""
        from decoder.reconstruct.models import load_models

        key = self._key(h)
        if key not in self._loaded:
            self._last_load = time.monotonic()
            self._loaded[key] = load_models(self.models or None, header_session(h), None, backend=self.backend,
                                            providers=self.providers, threads=self.threads, cache=self._members)
            while len(self._loaded) > MODEL_CACHE:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    @staticmethod
    def _key(h: SessionHeader) -> tuple[str, int, int]:
        return (h.mouse_id, h.n_neurons, hash(h.neuron_ids.tobytes()))

    def start_session(self, h: SessionHeader) -> None:
        """Check the stream's neurons against the model and reset the optimiser, or refuse."""
        from decoder.reconstruct.backends import BackendError
        from decoder.reconstruct.streaming import make_streaming

        if self.recon is not None and self.session_id != h.session_id:
            self._flush()  # the previous session's last `lag` frames are final now
        self._deferred = None
        if self._key(h) not in self._loaded and time.monotonic() - self._last_load < RELOAD_MIN_S:
            self.session_id, self.recon, self._deferred = h.session_id, None, h  # retried by run()
            self.stats.deferred_loads += 1
            return
        self.session_id = h.session_id
        self.recon = None
        self._timing.clear()
        self.period_s = 1.0 / h.frame_rate
        self._credit_s = 0.0
        self._last_recv_ns = 0
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
            self.log("refused", f"REFUSED session {h.session_id}: {e}")
            return
        self.refused = None
        self.columns = loaded.columns
        self.stats.neurons_matched = matched
        self.provider = ",".join(getattr(m, "provider", "torch") for m in loaded.ensemble.members)
        if self.config.warm_start == "inverse" and loaded.inverse is None and not self._said_no_inverse:
            self._said_no_inverse = True
            self.log("inverse", "the model has no inverse decoder (inverse.onnx): new frames start from the previous "
                                "estimate")
        self.recon = make_streaming(loaded.ensemble, self.config, mask=loaded.opt_mask, inverse=loaded.inverse)
        warm = self.config.warm_start_with(loaded.inverse)
        self.log("session", f"session {h.session_id} mouse {h.mouse_id}: {matched}/{n_model} model neurons "
                            f"matched; lag {self.lag}, {self.steps} steps/frame, warm start {warm}, "
                            f"{len(loaded.ensemble)} encoder(s) ({self.config.ensemble}) on {self.provider}"
                            f"{', provisional frames' if self.provisional else ''}")

    # ------------------------------------------------------------------ frames
    def on_frame(self, f: Frame, recv_ns: int, backlog: int) -> None:
        """Decode one frame (shedding steps when `backlog` frames wait) and publish what it finalises."""
        if self.recon is None or f.session_id != self.session_id:
            return
        if f.seq <= getattr(self.recon, "last_seq", -1):
            self.stats.dropped_stale += 1  # the optimiser only moves forward; a late frame cannot crash it
            return
        self.stats.frames_in += 1
        self._timing[f.seq] = (f.t_acq_ns, f.t_pub_ns, recv_ns)
        since = (recv_ns - self._last_recv_ns) / 1e9 if self._last_recv_ns else self.period_s
        self._last_recv_ns = recv_ns
        k = self._affordable_steps(backlog, since)
        self.stats.steps_shed += self.steps - k
        self.stats.steps_run += k
        resp = np.full(self.columns.size, np.nan, np.float32)
        ok = self.columns >= 0
        resp[ok] = f.traces[self.columns[ok]]
        t0 = time.time_ns()
        outs = self.recon.push(resp, f.behaviour, f.seq, f.session_id, steps=k)
        compute = time.time_ns() - t0
        self.stats.compute_ms_last = round(compute / 1e6, 3)
        self._credit_s -= compute / 1e9
        if k:
            cost = compute / 1e9 / k
            self._step_cost_s = cost if self._step_cost_s is None else 0.8 * self._step_cost_s + 0.2 * cost
        for out in outs:
            if out.final:
                self._publish(out, f, queue_ns=t0 - recv_ns, compute_ns=compute, steps=k)
        if self.provisional and (est := self.recon.estimate_at_age(0)) is not None:
            self._publish_provisional(est, f, queue_ns=t0 - recv_ns, compute_ns=compute, steps=k)

    def _affordable_steps(self, backlog: int, since_s: float) -> int:
        """Steps for this frame: none while others wait behind it, else as many as the credit pays for.

        Credit accrues with the time since the previous frame arrived (a slowed replay affords more steps,
        a burst fewer) and is capped at one frame's full work, so an idle pause cannot buy a later backlog.
        """
        earned = min(max(since_s, 0.0), 4 * self.period_s)
        self._credit_s = min(self._credit_s + earned, self.steps * (self._step_cost_s or 0) + self.period_s)
        if self._step_cost_s is None:
            return self.steps  # the first frame measures what a step costs
        if backlog > 1:
            return 0
        return int(min(self.steps, max(0.0, self._credit_s) // max(self._step_cost_s, 1e-9)))

    def end_session(self, e: End) -> None:
        """The rig finished: the frames still inside the lag become final now. The optimiser stays: frames
        after an `end` (a forged one, or a rig resuming) go on being decoded."""
        if self.recon is None or e.session_id != self.session_id:
            return
        self._flush()

    def _flush(self) -> None:
        for out in self.recon.flush():
            self._publish(out, None, 0, 0, 0)

    def _publish(self, out: Any, trigger: Frame | None, queue_ns: int, compute_ns: int, steps: int) -> None:
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
            lag=(trigger.seq - out.seq) if trigger is not None else 0, final=True, frame=out.as_uint8(),
            trigger_seq=trigger.seq if trigger is not None else out.seq,
            trigger_t_pub_ns=trigger.t_pub_ns if trigger is not None else t_pub,
            queue_ns=queue_ns, compute_ns=compute_ns, steps=steps, stats=self._wire_stats(),
        )
        self.pub.send_raw(encode_decoded_frame(d))

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
        self.pub.send_raw(encode_decoded_frame(d))

    def _trigger_recv(self, trigger: Frame) -> int:
        t = self._timing.get(trigger.seq)
        return t[2] if t else 0

    def _wire_stats(self) -> dict[str, Any]:
        w = self.sub.stats
        return {"frames_in": self.stats.frames_in, "steps_shed": self.stats.steps_shed,
                "backlog_max": self.stats.backlog_max, "gaps": w.gaps, "missing": w.missing,
                "malformed": w.malformed, "sessions": self.stats.sessions}

    # ------------------------------------------------------------------ loop
    def run(self, should_stop: Callable[[], bool] = lambda: False, max_decoded: int | None = None,
            status_every_s: float = 5.0) -> ServiceStats:
        """Serve until `should_stop()` (or Ctrl-C / SIGTERM), or until `max_decoded` frames were published."""
        last_status = time.monotonic()
        try:
            while not should_stop():
                batch = self._drain()
                frames = [(m, t) for m, t in batch if isinstance(m, Frame)]
                self.stats.backlog_max = max(self.stats.backlog_max, len(frames))
                waiting = len(frames)
                for m, recv_ns in batch:
                    if isinstance(m, SessionHeader):
                        self.start_session(m)
                    elif isinstance(m, Frame):
                        self.on_frame(m, recv_ns, waiting)
                        waiting -= 1
                    elif isinstance(m, End):
                        self.end_session(m)
                d = self._deferred
                if d is not None and time.monotonic() - self._last_load >= RELOAD_MIN_S:
                    if self.sub.session is not None and self.sub.session.session_id == d.session_id:
                        self.start_session(d)
                    else:
                        self._deferred = None
                self.pub.tick()
                if time.monotonic() - last_status >= status_every_s:
                    last_status = time.monotonic()
                    self.log("status", f"status {self.status_line()}")
                if max_decoded is not None and self.stats.decoded_out >= max_decoded:
                    break
        except KeyboardInterrupt:
            pass
        self.stats.wire = self.sub.stats.as_dict()
        return self.stats

    def _drain(self) -> list[tuple[Any, int]]:
        out = []
        size = 0
        msg = self.sub.recv(timeout_s=0.05)
        while msg is not None:
            out.append((msg, self.sub.last_recv_ns))
            size += sum(len(p) for p in self.sub.last_parts)
            if len(out) >= MAX_DRAIN or size >= MAX_DRAIN_BYTES:
                break
            msg = self.sub.recv(timeout_s=0)
        return out

    def status_line(self) -> str:
        s, w = self.stats, self.sub.stats
        return (f"in {s.frames_in} out {s.decoded_out} steps {s.steps_run} shed {s.steps_shed} "
                f"backlog_max {s.backlog_max} compute {s.compute_ms_last} ms gaps {w.gaps} malformed {w.malformed}")


# ---------------------------------------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    from decoder.reconstruct.streaming import add_streaming_args
    from streams.commandline import add_verb

    p = add_verb(sub, "decode", "decode service: rig traces in, decoded movie frames out (ZeroMQ)",
                 "neurocine decode --connect tcp://127.0.0.1:5555 --bind tcp://127.0.0.1:5556 --lag 32 --steps 2\n"
                 "neurocine decode --model models/m1 --model models/m2 --provider cuda --connect tcp://rig:5555")
    p.add_argument("--model", action="append", help="exported model folder (gradient.onnx), a synthetic "
                   "mouse folder, or 'oracle'; repeat for an ensemble (default: the built-in model)")
    p.add_argument("--connect", default="tcp://127.0.0.1:5555", help="the rig's (or replay's) endpoint")
    p.add_argument("--bind", default="tcp://127.0.0.1:5556", help="where decoded frames are published")
    add_streaming_args(p)
    p.add_argument("--provisional", action="store_true",
                   help="also publish each arriving frame's current estimate at once (final=False), for closed loops")
    p.add_argument("--provider", choices=["cuda", "cpu"], default=None,
                   help="ONNX Runtime provider (default: CUDA when available, else CPU)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--min-fraction", type=float, default=0.5,
                   help="refuse a stream holding fewer than this fraction of the model's neurons")
    p.add_argument("--max-decoded", type=int, default=None, help="stop after publishing this many frames")
    p.add_argument("--json", help="write the final stats here")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from decoder.reconstruct.backends import BackendError
    from decoder.reconstruct.models import backend_of, default_models
    from decoder.reconstruct.offline import ReconstructionError
    from decoder.reconstruct.streaming import streaming_config_from
    from streams.commandline import emit_json, stop_on_sigterm

    models = args.model or default_models()
    try:
        backend = backend_of(models)
    except BackendError as err:
        print(f"neurocine decode: {err}", file=sys.stderr)
        return 2
    providers = {"cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu": ["CPUExecutionProvider"],
                 None: None}[args.provider]
    if backend == "onnx":  # a graph that cannot load, batch or run on --provider: say so now, not per session
        from decoder.reconstruct.backends import BackendError, check_graphs

        try:
            check_graphs(models, providers, args.threads or 0)
        except BackendError as err:
            print(f"neurocine decode: {err}", file=sys.stderr)
            return 2
    stop_on_sigterm()
    with Subscriber(args.connect, topics=RAW_TOPICS, in_order=True) as sub, Publisher(args.bind) as pub:
        service = DecodeService(models, sub, pub, config=streaming_config_from(args), provisional=args.provisional,
                                backend=backend,
                                providers=providers, threads=args.threads, min_fraction=args.min_fraction)
        try:
            service.preload()
        except (BackendError, ReconstructionError) as e:
            print(f"decode: cannot load the models: {e}", file=sys.stderr, flush=True)
            return 2
        print(f"decode: {args.connect} -> {args.bind}, model {models}, waiting for a session (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        stats = service.run(max_decoded=args.max_decoded)
    emit_json({"decode": stats.as_dict(), "provider": service.provider}, args.json)
    return 0
