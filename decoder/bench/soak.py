"""`neurocine bench soak`: a real `neurocine decode` fed a valid 30 Hz stream for M minutes; its RSS, latency and
optimiser steps sampled over time (JSON), to show that nothing grows or drifts in a long session. The decoder is
started by the pipeline declaration (decoder/live/pipeline.py) with this process as the source."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from neurocine.streams.summary import percentiles


def register(bench_sub: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "soak", "a real decoder under a valid 30 Hz stream for M minutes: RSS, latency and "
                 "steps over time", "neurocine bench soak --minutes 60 --json out/soak.json")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--lag", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="decoder compute threads (default: decode's own)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds per sample")
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurocine.streams.commandline import emit_json

    emit_json(soak(args.minutes, args.lag, args.steps, args.threads, args.sample_s), args.json)
    return 0


def soak(minutes: float, lag: int, steps: int, threads: int | None, sample_s: float) -> dict[str, Any]:
    from neurocine.decoder.bench.fuzz import _rss_mb
    from neurocine.decoder.live.pipeline import LivePipeline, free_port_pair
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats import load_session
    from neurocine.streams.protocol import Decoded, Heartbeat
    from neurocine.streams.session import header_of
    from neurocine.streams.transport import Publisher

    session = load_session(example_session_path())
    h = header_of(session)
    n_frames = max(1, int(minutes * 60 * 30))
    samples: list[dict[str, Any]] = []
    got: set[int] = set()
    with Publisher("tcp://127.0.0.1:0", nodrop=True) as pub:
        extra = [] if threads is None else ["--threads", str(threads)]
        pipe = LivePipeline(pub.endpoint, ["--lag", str(lag), "--steps", str(steps), *extra], free_port_pair(),
                            keep_decoder_log=True, watch_source=False, log_lines=50)
        with pipe:
            dec, sub = pipe.procs["decoder"], pipe.decoded_sub
            heard, deadline = False, time.monotonic() + 120
            while not (heard and pub.n_subscribers >= 1) and time.monotonic() < deadline:
                heard |= isinstance(sub.recv(timeout_s=0.05), Heartbeat)
            pub.begin(h)
            lat: list[float] = []
            stp: list[int] = []
            t0 = time.monotonic()
            next_sample = t0 + sample_s

            def take(m: Any) -> None:
                if isinstance(m, Decoded) and m.session_id == h.session_id:
                    got.add(int(m.fields["seq"]))
                    lat.append((time.time_ns() - int(m.fields["trigger_t_pub_ns"])) / 1e6)
                    stp.append(int(m.fields["steps"]))

            for i in range(n_frames):
                j = i % session.n_frames
                pub.send_frame(i, time.time_ns(), session.traces[j], session.behaviour[j])
                while time.monotonic() < t0 + (i + 1) / 30:
                    take(sub.recv(timeout_s=0.005))
                if time.monotonic() >= next_sample:
                    samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": _rss_mb(dec.pid),
                                    "decoded": len(got), "latency_ms": percentiles(lat, 2),
                                    "steps_mean": round(float(np.mean(stp)), 3) if stp else None})
                    lat, stp = [], []
                    next_sample += sample_s
            pub.end()
            end = time.monotonic() + 30
            while len(got) < n_frames and time.monotonic() < end:
                take(sub.recv(timeout_s=0.1))
            crashed = dec.poll() is not None
    rss = [s["rss_mb"] for s in samples if s["rss_mb"] is not None]
    return {"benchmark": "soak", "minutes": minutes, "lag": lag, "steps": steps, "frames_sent": n_frames,
            "frames_decoded": len(got & set(range(n_frames))), "crashed": crashed,
            "rss_mb_first": rss[0] if rss else None, "rss_mb_last": rss[-1] if rss else None,
            "rss_mb_max": max(rss) if rss else None, "samples": samples}
