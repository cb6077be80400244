"""`neurocine demo`: the whole live pipeline on built-in defaults, one command.

Starts, as separate processes talking ZeroMQ over loopback as they would at a microscope:
the source (a replay of the built-in example session, looped, or the live synthetic rig), the decode
service with the built-in model, and the viewer when there is a display. This process also listens
to both streams and, at the end (after `--seconds`, or on Ctrl-C), writes a side-by-side video
(true | decoded) and a JSON summary (quality, latency) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import emit_json, get_logger
from neurocine.streams.summary import percentiles

log = get_logger("demo")

DEFAULT_PORT = 5555


def register(sub: Any) -> None:
    from neurocine.decoder.reconstruct.models import add_model_args
    from neurocine.decoder.reconstruct.streaming import add_streaming_args
    from neurocine.streams.commandline import add_verb

    p = add_verb(sub, "demo", "the live pipeline on built-in defaults: source -> decoder -> viewer / video",
                 "neurocine demo                 # viewer if there is a display, else a video + summary\n"
                 "neurocine demo --headless --seconds 20\n"
                 "neurocine demo --source rig    # the live synthetic rig instead of the example replay\n"
                 "neurocine demo --model models/synthetic-8000 --source rig --seed 8000 --neurons 8000  # another "
                 "mouse, with its calibrated model")
    p.add_argument("--seconds", type=float, default=30.0, help="stop by itself after this long (default 30)")
    p.add_argument("--headless", action="store_true", help="no viewer window: write a video and a summary")
    p.add_argument("--source", choices=["replay", "rig"], default="replay",
                   help="replay the built-in example session (default) or run the live synthetic rig")
    p.add_argument("--session", default=None, help="--source replay: the recording to replay (default: the example)")
    p.add_argument("--seed", type=int, default=0, help="--source rig: which synthetic mouse (default 0, the built-in)")
    p.add_argument("--neurons", type=int, default=1000, help="--source rig: its neuron count (default 1000)")
    add_model_args(p, threads_default=None, threads_help="the decoder's compute threads (default: decode's own)")
    add_streaming_args(p)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="source port; the decoder uses the next one")
    p.add_argument("--out-dir", default=".", help="where the video and summary go (default: here)")
    p.add_argument("--raw-contrast", action="store_true",
                   help="decoded frames at their raw grey levels in the viewer and the video (default: contrast "
                   "stretched for display, labelled; the summary's scores always use the raw frames)")
    p.set_defaults(func=run)


def viewer_or_reason(headless_asked: bool) -> str | None:
    """None when the viewer window can run here, else why not (the demo then goes headless and says so)."""
    if headless_asked:
        return "--headless"
    from neurocine.decoder.view.cli import has_display, viewer_problem

    if not has_display():
        return "no display (DISPLAY / WAYLAND_DISPLAY unset)"

    return viewer_problem(offscreen=os.environ.get("QT_QPA_PLATFORM") == "offscreen")


def run(args: argparse.Namespace) -> int:
    from neurocine.decoder.live.pipeline import LivePipeline, truth_of
    from neurocine.decoder.reconstruct.backends import BackendError
    from neurocine.decoder.reconstruct.models import check_model_args, model_argv
    from neurocine.decoder.reconstruct.streaming import streaming_argv

    try:
        check_model_args(args)
    except BackendError as err:
        log.error(str(err))
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reason = viewer_or_reason(args.headless)
    headless = reason is not None
    if headless and reason != "--headless":
        log.info(f"no viewer window ({reason}); running headless instead")
    decode_args = [*streaming_argv(args), *model_argv(args)]
    if args.source == "replay":
        source = ["replay", *([args.session] if args.session else []), "--loop"]
    else:
        source = ["rig", "--synthetic", "--seed", str(args.seed), "--neurons", str(args.neurons)]
    truth: dict[int, np.ndarray] = {}
    decoded: dict[int, np.ndarray] = {}
    latencies: list[float] = []
    steps: list[int] = []
    stats: dict[str, Any] = {}
    viewer: subprocess.Popen | None = None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    interrupted = False
    pipe = LivePipeline(source, decode_args, args.port)
    log.info(f"source ({args.source}) on {pipe.source_ep} -> decoder on {pipe.decoded_ep} -> "
             f"{'video + summary' if headless else 'viewer'}; {args.seconds:g} s, Ctrl-C stops")
    try:
        with pipe:
            if not headless:
                # its summary (JSON) is read at the end and goes into ours: stdout carries one JSON object
                viewer = pipe.add("viewer", ["view", "--connect", pipe.decoded_ep, "--truth", pipe.source_ep,
                                             *(["--raw-contrast"] if args.raw_contrast else [])],
                                  stdout=subprocess.PIPE, text=True)
            t_end = time.monotonic() + args.seconds
            while time.monotonic() < t_end:
                frames, d = pipe.poll(timeout_s=0.05)
                truth.update(truth_of(frames))
                if d is not None:
                    decoded[d.seq] = np.array(d.frame)
                    latencies.append((d.t_done_ns - d.trigger_t_pub_ns) / 1e6)
                    steps.append(d.steps)
                    stats = d.stats
                for name, code in pipe.exited():
                    if name != "viewer":
                        raise RuntimeError(f"the {name} exited early (code {code})")
                    if code != 0:
                        log.info(f"the viewer exited (code {code}); the video and summary are still "
                                 "written at the end")
                    pipe.procs.pop("viewer")
    except KeyboardInterrupt:
        interrupted = True
    summary = summarise(truth, decoded, latencies, steps, stats, args)
    summary["interrupted"] = interrupted
    if viewer is not None and viewer.stdout is not None:
        lines = viewer.stdout.read().strip().splitlines()
        try:
            summary["viewer"] = json.loads(lines[-1]) if lines else None
        except ValueError:
            summary["viewer"] = {"unreadable_summary": lines[-1][:200]}
    from neurocine.decoder.view.contrast import StretchConfig

    stretch = None if args.raw_contrast else StretchConfig()
    video = write_side_by_side(truth, decoded, out_dir / "neurocine-demo.mp4", stretch=stretch)
    summary["video"] = str(video.resolve()) if video else None
    summary["video_decoded_display"] = stretch.label() if stretch else "raw grey levels"
    emit_json(summary, out_dir / "neurocine-demo.json")
    log.info(f"wrote {summary['video']} and {(out_dir / 'neurocine-demo.json').resolve()}")
    return 0 if decoded else 1


def summarise(truth: dict[int, np.ndarray], decoded: dict[int, np.ndarray], latencies: list[float],
              steps: list[int], stats: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from neurocine.decoder.analysis.metrics import movie_correlation

    seqs = sorted(set(truth) & set(decoded))
    quality = None
    if len(seqs) > 60:
        quality = round(movie_correlation(np.stack([truth[s] for s in seqs]), np.stack([decoded[s] for s in seqs])), 4)
    lat = np.array(latencies[len(latencies) // 10:] or [np.nan])  # leave out the start-up tenth
    return {
        "source": args.source,
        "seconds": args.seconds,
        "decoded_frames": len(decoded),
        "pixel_correlation_vs_truth": quality,
        "end_to_end_latency_ms": percentiles(lat, 2),
        "lag_frames": args.lag,
        "steps_per_frame_mean": round(float(np.mean(steps)), 3) if steps else None,
        "decoder_stats": stats,
    }


def write_side_by_side(truth: dict[int, np.ndarray], decoded: dict[int, np.ndarray], path: Path,
                       scale: int = 4, fps: int = 30, stretch: Any = None) -> Path | None:
    """true | decoded, upscaled, as H.264 (PyAV) or, without PyAV, a .npy movie beside the summary; the decoded
    half contrast-stretched for display with `stretch` (a view.contrast.StretchConfig; None: raw)."""
    from neurocine.decoder.view.contrast import ContrastStretch

    seqs = sorted(set(truth) & set(decoded))
    if not seqs:
        return None
    gap = np.full((36, 2), 255, np.uint8)
    show = ContrastStretch(stretch) if stretch is not None else (lambda f: f)
    frames = [np.hstack([truth[s], gap, show(decoded[s])]) for s in seqs]
    frames = [np.kron(f, np.ones((scale, scale), np.uint8)) for f in frames]
    from neurocine.decoder.reconstruct.movie_file import MovieFileError, write_movie

    try:
        write_movie(np.stack(frames), path, fps=fps)
    except MovieFileError:
        npy = path.with_suffix(".npy")
        np.save(npy, np.stack(frames))
        return npy
    return path
