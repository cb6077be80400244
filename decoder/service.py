"""The decode service: subscribe to a rig's traces, decode continuously, publish `decoded` frames.

One loop, one thread (ZeroMQ sockets are not thread-safe): drain what has arrived, run the streaming
optimiser on each new frame, publish the frames it finalises. It keeps up by shedding optimiser steps:
every arriving frame earns one frame period of compute credit, a step costs its measured time (a
running average), a frame runs min(K, credit / step cost) steps, and none while frames wait behind it.
So the backlog stays bounded whatever the model costs, and a model too slow for K steps per frame
still gets every step the machine can afford; shed steps are counted in the stats on every message.
A new session id resets the optimiser; a stream whose neurons the model does not know (matched by id)
is refused with a message naming the mismatch, and the service waits for the next session.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from decoder.messages import DecodedFrame, encode_decoded_frame
from decoder.reconstruct.offline import DEFAULT_GRAD_BLUR
from streams.protocol import End, Frame, ProtocolError, SessionHeader
from streams.session import Session
from streams.transport import Publisher, Subscriber

MAX_DRAIN = 1000  # messages read from the socket per loop turn (the socket's HWM bounds the rest)


class NeuronMismatch(ValueError):
    """The stream's neurons are not (enough of) the model's."""


@dataclasses.dataclass
class ServiceStats:
    sessions: int = 0
    refused_sessions: int = 0
    frames_in: int = 0
    decoded_out: int = 0
    steps_run: int = 0
    steps_shed: int = 0
    backlog_max: int = 0
    compute_ms_last: float = 0.0
    neurons_matched: int = 0
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
        lag: int = 32,
        steps: int = 2,
        grad_blur: float = 0.0,
        backend: str = "onnx",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        min_fraction: float = 0.5,
        log: Callable[[str, str], None] | None = None,
    ) -> None:
        self.models = list(models or [])
        self.sub, self.pub = sub, pub
        self.lag, self.steps, self.grad_blur = lag, steps, grad_blur
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
        self._loaded: dict[str, Any] = {}
        sub.on_error = self._on_wire_error

    def _on_wire_error(self, e: ProtocolError) -> None:
        self.log(e.kind, f"rejected message: {e}")

    # ------------------------------------------------------------------ sessions
    def _load(self, h: SessionHeader) -> Any:
        """Models with the stream's neurons matched by id (cached: a restarted rig reuses them)."""
        from decoder.reconstruct.models import load_models

        key = (h.mouse_id, h.n_neurons, hash(h.neuron_ids.tobytes()))
        if key not in self._loaded:
            self._loaded.clear()  # one stream at a time: keep only the current models
            self._loaded[key] = load_models(self.models or None, header_session(h), None, backend=self.backend,
                                            providers=self.providers, threads=self.threads)
        return self._loaded[key]

    def start_session(self, h: SessionHeader) -> None:
        """Check the stream's neurons against the model and reset the optimiser, or refuse."""
        from decoder.reconstruct.backends import BackendError
        from decoder.reconstruct.streaming import StreamingConfig, StreamingReconstructor

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
        self.recon = StreamingReconstructor(loaded.ensemble, StreamingConfig(lag=self.lag, steps=self.steps,
                                                                            grad_blur=self.grad_blur),
                                            mask=loaded.opt_mask)
        self.log("session", f"session {h.session_id} mouse {h.mouse_id}: {matched}/{n_model} model neurons "
                            f"matched; lag {self.lag}, {self.steps} steps/frame on {self.provider}")

    # ------------------------------------------------------------------ frames
    def on_frame(self, f: Frame, recv_ns: int, backlog: int) -> None:
        """Decode one frame (shedding steps when `backlog` frames wait) and publish what it finalises."""
        if self.recon is None or f.session_id != self.session_id:
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
        """The rig finished: the frames still inside the lag become final now."""
        if self.recon is None or e.session_id != self.session_id:
            return
        for out in self.recon.flush():
            self._publish(out, None, 0, 0, 0)
        self.recon = None

    def _publish(self, out: Any, trigger: Frame | None, queue_ns: int, compute_ns: int, steps: int) -> None:
        t_acq, t_pub, t_recv = self._timing.pop(out.seq, (0, 0, 0))
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
        msg = self.sub.recv(timeout_s=0.05)
        while msg is not None:
            out.append((msg, self.sub.last_recv_ns))
            if len(out) >= MAX_DRAIN:
                break
            msg = self.sub.recv(timeout_s=0)
        return out

    def status_line(self) -> str:
        s, w = self.stats, self.sub.stats
        return (f"in {s.frames_in} out {s.decoded_out} steps {s.steps_run} shed {s.steps_shed} "
                f"backlog_max {s.backlog_max} compute {s.compute_ms_last} ms gaps {w.gaps} malformed {w.malformed}")


# ---------------------------------------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    from streams.cli import add_verb

    p = add_verb(sub, "decode", "decode service: rig traces in, decoded movie frames out (ZeroMQ)",
                 "neurocine decode --connect tcp://127.0.0.1:5555 --bind tcp://127.0.0.1:5556 --lag 32 --steps 2\n"
                 "neurocine decode --model models/m1 --model models/m2 --provider cuda --connect tcp://rig:5555")
    p.add_argument("--model", action="append", help="exported model folder (gradient.onnx), a synthetic "
                   "mouse folder, or 'oracle'; repeat for an ensemble (default: the built-in model)")
    p.add_argument("--connect", default="tcp://127.0.0.1:5555", help="the rig's (or replay's) endpoint")
    p.add_argument("--bind", default="tcp://127.0.0.1:5556", help="where decoded frames are published")
    p.add_argument("--lag", type=int, default=32, help="frames between a frame's arrival and its final decode")
    p.add_argument("--steps", type=int, default=2, help="optimiser steps per arriving frame (shed when behind)")
    p.add_argument("--grad-blur", type=float, default=DEFAULT_GRAD_BLUR, metavar="SIGMA",
                   help=f"spatial Gaussian blur (px) of each step's gradient (default {DEFAULT_GRAD_BLUR}; "
                   "0 = none, as the paper)")
    p.add_argument("--provider", choices=["cuda", "cpu"], default=None,
                   help="ONNX Runtime provider (default: CUDA when available, else CPU)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--min-fraction", type=float, default=0.5,
                   help="refuse a stream holding fewer than this fraction of the model's neurons")
    p.add_argument("--max-decoded", type=int, default=None, help="stop after publishing this many frames")
    p.add_argument("--json", help="write the final stats here")
    p.set_defaults(func=run)


def default_models() -> list[str]:
    """The built-in model shipped in the package, or the synthetic mouse's oracle when there is none."""
    from pathlib import Path

    builtin = Path(__file__).parent / "models" / "default"
    return [str(builtin)] if (builtin / "gradient.onnx").is_file() else ["oracle"]


def backend_for(models: Sequence[str]) -> str:
    from pathlib import Path

    kinds = {"onnx" if (m.endswith(".onnx") or (Path(m) / "gradient.onnx").is_file()) else "torch" for m in models}
    if len(kinds) > 1:
        raise ValueError(f"--model mixes ONNX graphs and torch models: {list(models)}")
    return kinds.pop()


def run(args: Any) -> int:
    from streams.cli import emit_json, stop_on_sigterm

    models = args.model or default_models()
    providers = {"cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu": ["CPUExecutionProvider"],
                 None: None}[args.provider]
    backend = backend_for(models)
    if backend == "onnx":  # a graph that cannot load, batch or run on --provider: say so now, not per session
        from decoder.reconstruct.backends import BackendError, check_graphs

        try:
            check_graphs(models, providers, args.threads or 0)
        except BackendError as err:
            print(f"neurocine decode: {err}", file=sys.stderr)
            return 2
    stop_on_sigterm()
    with Subscriber(args.connect) as sub, Publisher(args.bind) as pub:
        service = DecodeService(models, sub, pub, lag=args.lag, steps=args.steps, grad_blur=args.grad_blur,
                                backend=backend,
                                providers=providers, threads=args.threads, min_fraction=args.min_fraction)
        print(f"decode: {args.connect} -> {args.bind}, model {models}, waiting for a session (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        stats = service.run(max_decoded=args.max_decoded)
    emit_json({"decode": stats.as_dict(), "provider": service.provider}, args.json)
    return 0
