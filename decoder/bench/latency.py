"""`neurocine bench latency`: replay -> decode -> collector over loopback, per-frame latency breakdown.

Three processes, as at the microscope: `neurocine replay` (the rig), `neurocine decode` (the service)
and this collector, which subscribes to the decoded stream and to the replay (for the true stimulus).
For each decoded frame f, finalised by the arrival of source frame k = f + lag:
- transport: k's publication -> the decoder reading it from its socket (includes time k waited in the
  decoder's socket queue while the decoder was busy);
- queue: read -> the start of k's optimiser steps (time spent behind frames read in the same batch);
- compute: the optimiser steps run for k;
- end_to_end: k's publication -> the publication of decoded frame f. The designed lag (waiting for
  frames f+1..k to be recorded) is not in it: it starts when the last needed data exists.
- delivery: publication of f -> its receipt here.
The first `--warmup` seconds (model loading, first steps) are reported apart from the statistics.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import Progress, get_logger
from neurocine.streams.summary import percentiles

log = get_logger("bench.latency")


def register(bench_sub: Any) -> None:
    from neurocine.decoder.reconstruct.models import add_model_args
    from neurocine.decoder.reconstruct.streaming import add_streaming_args
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "latency", "end-to-end latency of replay -> decode -> collector (JSON, figure)",
                 "neurocine bench latency --frames 600 --json out/latency.json --figure out/latency.png\n"
                 "neurocine bench latency --frames 18000   # a 10-minute replay at 30 Hz")
    p.add_argument("--session", help="session to replay (default: the built-in example, looped)")
    p.add_argument("--frames", type=int, default=600, help="source frames to replay (default 600 = 20 s)")
    add_streaming_args(p)
    p.add_argument("--provisional", action="store_true", help="the decoder also publishes provisional frames")
    add_model_args(p, threads_default=None, threads_help="the decoder's compute threads (default: decode's own)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at the start left out of the statistics")
    p.add_argument("--port", type=int, default=27550, help="first of two loopback ports to use")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--figure", help="write a latency histogram and time course (PNG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurocine.decoder.live.pipeline import LivePipeline, truth_of
    from neurocine.decoder.reconstruct.backends import BackendError
    from neurocine.decoder.reconstruct.models import check_model_args, model_argv
    from neurocine.decoder.reconstruct.streaming import streaming_argv
    from neurocine.streams.commandline import emit_json

    try:
        check_model_args(args)
    except BackendError as err:
        log.error(str(err))
        return 2
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats import load_session

    session_path = args.session or str(example_session_path())
    n_source = load_session(session_path).n_frames
    decode_args = [*streaming_argv(args), *model_argv(args)]
    if args.provisional:
        decode_args.append("--provisional")
    rows: list[tuple[float, ...]] = []
    truth: dict[int, np.ndarray] = {}
    decoded: dict[int, np.ndarray] = {}
    source = ["replay", session_path, "--speed", "1", "--loop"]
    pipe = LivePipeline(source, decode_args, args.port, keep_decoder_log=True)
    with pipe:
        t_start = time.monotonic()
        source_done_at = None
        log.info(f"{args.frames} frames at the session's rate through the decoder ...")
        shown = Progress("bench latency: decoded", args.frames, unit="frame")
        while True:
            frames, d = pipe.poll(timeout_s=0.05)
            now_ns = time.time_ns()
            truth.update(truth_of(frames))
            if any(m.seq + 1 >= args.frames for m in frames) and source_done_at is None:
                pipe.stop_source()
                source_done_at = time.monotonic()
            if pipe.source_ended and source_done_at is None:
                source_done_at = time.monotonic()
            if d is not None and d.seq < args.frames:
                decoded[d.seq] = np.array(d.frame)
                rows.append((time.monotonic() - t_start, d.seq,
                             (d.t_recv_ns - d.trigger_t_pub_ns) / 1e6, d.queue_ns / 1e6, d.compute_ns / 1e6,
                             (d.t_done_ns - d.trigger_t_pub_ns) / 1e6, (now_ns - d.t_done_ns) / 1e6,
                             d.steps))
            shown(len(decoded))
            if len(decoded) >= args.frames - args.lag or (
                    source_done_at is not None and time.monotonic() - source_done_at > 10):
                break
            if pipe.procs["decoder"].poll() is not None:
                raise RuntimeError("the decoder exited: " + "\n".join(list(pipe.decoder_log)[-20:]))
        pipe.close(wait_s=30)
    result = summarise(np.array(rows, dtype=np.float64).reshape(-1, 8), args, truth, decoded, n_source)
    result["decoder_log_tail"] = list(pipe.decoder_log)[-3:]
    emit_json(result, args.json)
    if args.figure:
        figure(np.array(rows, dtype=np.float64).reshape(-1, 8), args, Path(args.figure))
    return 0


def summarise(rows: np.ndarray, args: argparse.Namespace, truth: dict[int, np.ndarray],
              decoded: dict[int, np.ndarray], n_source: int) -> dict[str, Any]:
    from neurocine.decoder.analysis.metrics import movie_correlation

    steady = rows[rows[:, 0] >= args.warmup] if rows.size else rows
    names = ["transport_ms", "queue_ms", "compute_ms", "end_to_end_ms", "delivery_ms"]
    lat = {n: percentiles(steady[:, 2 + i]) for i, n in enumerate(names)}
    span = steady[-1, 0] - steady[0, 0] if len(steady) > 1 else 0.0
    seqs = sorted(set(truth) & set(decoded))
    quality = None
    if len(seqs) > 60:
        t = np.stack([truth[s] for s in seqs])
        r = np.stack([decoded[s] for s in seqs])
        quality = round(movie_correlation(t, r), 4)
    expected = max(0, args.frames - args.lag)
    # backlog growth: queueing in the last third of the run vs the first third (steady part)
    thirds = np.array_split(steady[:, 3], 3) if len(steady) >= 3 else [np.zeros(1)] * 3
    return {
        "benchmark": "latency",
        "frames_requested": args.frames,
        "decoded_frames": len(decoded),
        "missing_decoded": int(max(0, expected - len([s for s in decoded if s < expected]))),
        "throughput_fps": round((len(steady) - 1) / span, 2) if span > 0 else None,
        "lag_frames": args.lag,
        "steps_requested": args.steps,
        "steps_mean": round(float(steady[:, 7].mean()), 3) if len(steady) else None,
        "frames_with_all_steps": round(float((steady[:, 7] >= args.steps).mean()), 3) if len(steady) else None,
        "latency_ms": lat,
        "queue_ms_mean_first_vs_last_third": [round(float(thirds[0].mean()), 3), round(float(thirds[-1].mean()), 3)],
        "pixel_correlation_vs_truth": quality,
        "warmup_s": args.warmup,
        "source_session_frames": n_source,
    }


def figure(rows: np.ndarray, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    steady = rows[rows[:, 0] >= args.warmup]
    a.hist(steady[:, 5], bins=50, color="tab:blue")
    a.set_xlabel("end-to-end latency (ms): frame published -> decoded frame it finalises published")
    a.set_ylabel("frames")
    a.set_title(f"lag {args.lag} frames, {args.steps} steps/frame")
    b.plot(rows[:, 1], rows[:, 5], ".", ms=2, label="end to end")
    b.plot(rows[:, 1], rows[:, 4], ".", ms=2, label="compute")
    b.plot(rows[:, 1], rows[:, 3], ".", ms=2, label="queue")
    b.set_xlabel("decoded frame")
    b.set_ylabel("ms")
    b.legend(loc="upper right")
    b.set_title("time course")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
