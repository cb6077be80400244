"""`neurocine bench transport`: messages/s and publish-to-receive latency over loopback TCP.

The publisher runs in its own process (as a rig would), the subscriber in this one; latency is
receive time minus the frame's publish timestamp (same machine, same clock).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from typing import Any

import numpy as np

from neurocine.streams.summary import percentiles


def register(bench_sub: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "transport",
                 "ZeroMQ transport: messages/s and latency for N-neuron frames at 30 Hz and flat out",
                 "neurocine bench transport --neurons 8000 --seconds 10 --flat-frames 18000 --json out/transport.json")
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the 30 Hz run")
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--flat-frames", type=int, default=18000, help="frames in the flat-out run (10 min at 30 Hz)")
    p.add_argument("--stimulus", action="store_true", help="attach a 36x64 stimulus frame to each message")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free one)")
    p.add_argument("--curve", action="store_true",
                   help="measure plaintext and CURVE (encrypted, authenticated) back to back and report the cost; "
                   "uses --keys / $NEUROCINE_KEYS, or throwaway keys")
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(func=run)


def _publish(endpoint_q: Any, n_neurons: int, n_frames: int, rate: float, stimulus: bool, port: int) -> None:
    from neurocine.streams.protocol import SessionHeader
    from neurocine.streams.session import new_session_id
    from neurocine.streams.transport import Publisher

    rng = np.random.default_rng(0)
    traces = rng.random((64, n_neurons), dtype=np.float32)
    stim = np.zeros((36, 64), np.uint8) if stimulus else None
    with Publisher(f"tcp://127.0.0.1:{port}", nodrop=True) as pub:
        endpoint_q.put(pub.endpoint)
        pub.wait_subscribers(1, timeout_s=30)
        ids = np.arange(n_neurons, dtype=np.int64)
        shape = None if stim is None else (36, 64)
        pub.begin(SessionHeader(new_session_id(), "synthetic", "bench", rate or 30.0, ids, stimulus_shape=shape))
        t0 = time.perf_counter_ns()
        period = 0 if not rate else int(1e9 / rate)
        for i in range(n_frames):
            if period:
                deadline = t0 + i * period
                while (left := deadline - time.perf_counter_ns()) > 0:
                    time.sleep(left / 1e9 if left > 1_000_000 else 0)
            pub.send_frame(i, i * (period or 33_333_333), traces[i % 64], np.zeros(4, np.float32), stim)
        pub.end()
        time.sleep(0.5)


def measure(n_neurons: int, n_frames: int, rate: float, stimulus: bool = False, port: int = 0) -> dict:
    """One run: frames published at `rate` Hz (0 = flat out), received here; returns stats."""
    from neurocine.streams.protocol import End, Frame
    from neurocine.streams.transport import Subscriber

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_publish, args=(q, n_neurons, n_frames, rate, stimulus, port), daemon=True)
    proc.start()
    endpoint = q.get(timeout=60)
    lat = np.empty(n_frames, np.int64)
    got = 0
    t_first = t_last = 0
    with Subscriber(endpoint) as sub:
        while True:
            msg = sub.recv(timeout_s=10)
            if msg is None:
                break
            if isinstance(msg, Frame):
                if got == 0:
                    t_first = sub.last_recv_ns
                t_last = sub.last_recv_ns
                lat[got] = sub.last_recv_ns - msg.t_pub_ns
                got += 1
            elif isinstance(msg, End):
                break
        stats = sub.stats
    proc.join(timeout=10)
    lat_ms = lat[:got] / 1e6
    span = (t_last - t_first) / 1e9
    frame_bytes = n_neurons * 4 + 16 + (36 * 64 if stimulus else 0)
    return {
        "rate_hz_target": rate or "flat out",
        "frames_sent": n_frames,
        "frames_received": got,
        "gaps": stats.gaps,
        "missing": stats.missing,
        "messages_per_s": round((got - 1) / span, 1) if span > 0 else None,
        "megabytes_per_s": round((got - 1) * frame_bytes / span / 1e6, 1) if span > 0 else None,
        "latency_ms": percentiles(lat_ms),
    }


def _with_keys(folder: str | None, fn: Any) -> dict:
    """Run `fn` with NEUROCINE_KEYS set to `folder` (None: plaintext) for this and the spawned process."""
    from neurocine.streams.security import ENV_KEYS

    old = os.environ.pop(ENV_KEYS, None)
    try:
        if folder:
            os.environ[ENV_KEYS] = folder
        return fn()
    finally:
        os.environ.pop(ENV_KEYS, None)
        if old is not None:
            os.environ[ENV_KEYS] = old


def _curve_cost(args: argparse.Namespace, n_live: int) -> dict:
    from neurocine.streams.security import ENV_KEYS, make_keys

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.environ.get(ENV_KEYS)
        if not folder:
            make_keys(tmp)
            folder = tmp
        out: dict[str, Any] = {}
        for name, keys in (("plaintext", None), ("curve", folder)):
            out[name] = _with_keys(keys, lambda: {
                "realtime": measure(args.neurons, n_live, args.rate, args.stimulus, args.port),
                "flat_out": measure(args.neurons, args.flat_frames, 0.0, args.stimulus, args.port)})
    p, c = out["plaintext"]["flat_out"], out["curve"]["flat_out"]
    pr, cr = out["plaintext"]["realtime"], out["curve"]["realtime"]
    out["curve_over_plaintext"] = {
        "flat_out_messages_per_s": round(c["messages_per_s"] / p["messages_per_s"], 3)
        if c["messages_per_s"] and p["messages_per_s"] else None,
        "realtime_latency_p50": round(cr["latency_ms"]["p50"] / pr["latency_ms"]["p50"], 3)
        if cr["latency_ms"]["p50"] and pr["latency_ms"]["p50"] else None,
    }
    return out


def run(args: argparse.Namespace) -> int:
    from neurocine.streams.commandline import emit_json

    n_live = max(1, int(args.seconds * args.rate))
    if args.curve:
        result = {"benchmark": "transport", "neurons": args.neurons,
                  "payload_bytes_per_frame": args.neurons * 4 + 16 + (36 * 64 if args.stimulus else 0),
                  "transport": "tcp loopback, XPUB(nodrop)->SUB, publisher in a separate process",
                  **_curve_cost(args, n_live)}
        emit_json(result, args.json)
        return 0
    result = {
        "benchmark": "transport",
        "neurons": args.neurons,
        "payload_bytes_per_frame": args.neurons * 4 + 16 + (36 * 64 if args.stimulus else 0),
        "transport": "tcp loopback, XPUB(nodrop)->SUB, publisher in a separate process",
        "realtime": measure(args.neurons, n_live, args.rate, args.stimulus, args.port),
        "flat_out": measure(args.neurons, args.flat_frames, 0.0, args.stimulus, args.port),
    }
    emit_json(result, args.json)
    return 0
