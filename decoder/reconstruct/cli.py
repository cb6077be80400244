"""`neurocine reconstruct`: decode a recorded session (or one trial of it) into a movie file.

Writes (T, 36, 64) uint8, frame t aligned with the session's frame t (stimulus frame t). When the session
carries the true stimulus it prints one JSON line of metrics on stdout (analysis.metrics: pixel correlation (the
paper's score), frame-wise correlation, SSIM, PSNR, RMSE, each after the `--smooth` post-smoothing and again
"unsmoothed"; the response correlation; per-trial values); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.decoder.analysis.metrics import SMOOTH_SIGMA
from neurocine.decoder.reconstruct.movie_file import write_movie
from neurocine.decoder.reconstruct.streaming import add_streaming_args
from neurocine.streams.cli import add_series_option
from neurocine.streams.commandline import Progress, add_verb, get_logger

log = get_logger("reconstruct")

OUT_SUFFIXES = (".npy", ".gif", ".mp4")


def register(subparsers: Any) -> None:
    p = add_verb(subparsers, "reconstruct", "reconstruct the movie a mouse saw from its recorded activity",
                 "neurocine reconstruct --session streams/data/example.ncr --trial 0 --iterations 200 "
                 "--out trial0.mp4\n"
                 "neurocine reconstruct --model models/m0 --session s.ncr --mode streaming --lag 32 --out s.npy",
                 description="Reconstruct the movie from recorded activity by gradient descent through an encoder: "
                 "the published offline method or the streaming optimiser.")
    add_reconstruct_options(p)
    p.add_argument("--out", required=True, help="output movie: .npy (uint8 (T, 36, 64)), .gif or .mp4")
    p.set_defaults(func=run)


def add_reconstruct_options(p: argparse.ArgumentParser) -> None:
    """Every option of a reconstruction but --out (shared with `neurocine batch`)."""
    from neurocine.decoder.reconstruct.models import add_model_args

    add_model_args(p)  # --model, --backend, --provider, --threads, --allow-other-mouse
    p.add_argument("--session", default=None, help="session file/folder (default: the built-in example)")
    add_series_option(p)
    p.add_argument(
        "--trial",
        type=int,
        action="append",
        default=None,
        help="source trial index to reconstruct (repeatable; default: all, back to back)",
    )
    p.add_argument("--mode", choices=("offline", "streaming"), default="offline")
    p.add_argument(
        "--iterations", type=_iterations, default="auto",
        help="offline iterations: a count (1000 is the paper's) or 'auto' (default): stop when a held-out tenth "
        "of the neurons stops improving, then refit with all of them for that count")
    p.add_argument("--init", choices=("inverse", "grey"), default="inverse",
                   help="offline start: the inverse decoder's estimate beside the model (default; grey when the "
                   "model has none) or grey (the paper's)")
    add_streaming_args(p)  # --lag, --steps, --grad-blur (offline too), --warm-start, --ensemble
    p.add_argument("--no-mask", action="store_true", help="ignore the alpha mask beside the model")
    p.add_argument("--smooth", type=float, default=SMOOTH_SIGMA, metavar="SIGMA",
                   help=f"3-D Gaussian post-smoothing of the reconstruction before scoring (default {SMOOTH_SIGMA}, "
                   "the paper's; the metrics without it are reported too, under 'unsmoothed')")


def _iterations(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--iterations {text!r}: a count or 'auto'") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"--iterations must be >= 0, got {n}")
    return n


def _progress(prefix: str) -> Callable[[int, int, float], None]:
    """The optimiser's progress callback (iteration i of n, loss) as one progress line."""
    bar: list[Progress] = []

    def report(i: int, n: int, loss: float) -> None:
        if not bar or i == 1:
            bar[:] = [Progress(prefix, n, unit="it")]
        bar[0](i, loss=loss)

    return report


def load_inputs(args: argparse.Namespace, models: list[str] | None = None):  # -> (Session, LoadedModels)
    """The session (args.session, args.trial; default: the built-in example) and its encoders (`models`,
    default args.model, else the built-in model). Raises FormatError/BackendError/OSError/ValueError."""
    from neurocine.decoder.reconstruct.models import default_models, load_models, providers_for
    from neurocine.streams.formats import load_session

    if args.session is None:
        from neurocine.streams.example import example_session_path

        args.session = str(example_session_path())
    session = load_session(args.session, trials=args.trial, series=getattr(args, "series", None))
    specs = models or args.model or default_models()
    streaming = getattr(args, "mode", "offline") == "streaming"
    ensemble = getattr(args, "ensemble", None) or ("gradients" if streaming else "videos")  # each mode's default
    loaded = load_models(specs, session, args.session, args.backend, providers_for(args.provider), args.threads,
                         fuse=ensemble == "gradients", allow_other_mouse=args.allow_other_mouse)
    return session, loaded


def reconstruct_part(models, part, args: argparse.Namespace, progress=None, info: dict | None = None,
                     mix: bool = True) -> np.ndarray:
    """Float32 movie (T, 36, 64) of one trial `part` (a Session) with `models` (LoadedModels), offline or
    streaming as args say. One definition, used by `reconstruct` and by `batch`'s tasks. `info` (a dict)
    receives what was chosen on the way: the start, and the iteration count per encoder with --iterations auto.
    mix False: offline, leave the inverse decoder's estimate out of the result (an ensemble member of `batch`,
    mixed in once the members are merged: `merge_with_prior`)."""
    from neurocine.decoder.reconstruct.inverse import INVERSE_MIX
    from neurocine.decoder.reconstruct.models import session_arrays
    from neurocine.decoder.reconstruct.offline import AutoStop, OfflineConfig, reconstruct_offline
    from neurocine.decoder.reconstruct.streaming import reconstruct_streaming, streaming_config_from

    info = {} if info is None else info
    opt_mask = None if args.no_mask else models.opt_mask
    responses, behaviour = session_arrays(part, models.columns)
    inverse = models.inverse
    if args.mode == "offline":
        auto = getattr(args, "iterations", "auto") == "auto"
        use_inverse = inverse is not None and getattr(args, "init", "inverse") == "inverse"
        cfg = OfflineConfig(iterations=0 if auto else args.iterations, grad_blur=args.grad_blur,
                            ensemble=getattr(args, "ensemble", None) or "videos")
        rec = reconstruct_offline(models.ensemble, responses, behaviour, opt_mask, config=cfg, progress=progress,
                                  init_video=inverse.movie(responses, behaviour) if use_inverse else None,
                                  auto_stop=AutoStop() if auto else None,
                                  prior_mix=INVERSE_MIX if use_inverse and mix else 0.0)
        info.update(init="inverse" if use_inverse else "grey",
                    iterations=rec.stopped_at if auto else args.iterations)
        return rec.video
    cfg = streaming_config_from(args)
    info["warm_start"] = cfg.warm_start_with(inverse)
    movie, _ = reconstruct_streaming(models.ensemble, responses, behaviour, cfg, opt_mask, inverse=inverse)
    return movie


def merge_with_prior(models, part, args: argparse.Namespace, movie: np.ndarray) -> np.ndarray:
    """An offline ensemble's averaged members, with the inverse decoder's estimate mixed in as
    `reconstruct_part` does for a whole ensemble (the same arithmetic, so the same bits)."""
    from neurocine.decoder.reconstruct.inverse import INVERSE_MIX
    from neurocine.decoder.reconstruct.models import session_arrays
    from neurocine.decoder.reconstruct.offline import mix_prior

    if args.mode != "offline" or models.inverse is None or getattr(args, "init", "inverse") != "inverse":
        return movie
    responses, behaviour = session_arrays(part, models.columns)
    return mix_prior(movie, models.inverse.movie(responses, behaviour), INVERSE_MIX)


def as_uint8(movie: np.ndarray) -> np.ndarray:
    """The written movie: rounded, clipped to 0..255."""
    return np.clip(np.rint(movie), 0, 255).astype(np.uint8)


def run(args: argparse.Namespace) -> int:
    from neurocine.decoder.analysis.metrics import mean_metrics, movie_metrics, response_correlation
    from neurocine.decoder.reconstruct.backends import BackendError
    from neurocine.decoder.reconstruct.models import session_arrays
    from neurocine.decoder.reconstruct.offline import ReconstructionError, predict_movie
    from neurocine.streams.formats import FormatError

    out = Path(args.out)
    if out.suffix not in OUT_SUFFIXES:
        log.error(f"--out {out}: suffix must be one of {OUT_SUFFIXES}")
        return 2
    try:
        session, models = load_inputs(args)
    except (FormatError, BackendError, FileNotFoundError, ValueError) as e:
        log.error(str(e))
        return 2
    eval_mask = None if args.no_mask else models.eval_mask
    log.info(f"{session.n_frames} frames, {len(session.trials)} trial(s), models: "
             f"{'; '.join(models.description)}")
    if models.inverse is None and ((args.mode == "offline" and args.init == "inverse")
                                   or (args.mode == "streaming" and args.warm_start == "inverse")):
        log.info("the model has no inverse decoder (inverse.onnx); starting from "
                 f"{'grey' if args.mode == 'offline' else 'the previous frame'}")
    start = time.perf_counter()
    movies, truths, preds, recs, infos = [], [], [], [], []
    try:
        for k, trial in enumerate(session.trials):
            part = session.select_trials([trial.index]) if len(session.trials) > 1 else session
            progress = _progress(f"trial {trial.index} ({k + 1}/{len(session.trials)})")
            info: dict[str, Any] = {}
            movie = reconstruct_part(models, part, args, progress, info)
            infos.append(info)
            if args.mode == "offline" and args.iterations == "auto":
                log.info(f"trial {trial.index}: stopped at {info['iterations']} iterations (the held-out "
                         "neurons' best)")
            responses, behaviour = session_arrays(part, models.columns)
            movies.append(movie)
            recs.append(responses)
            if part.stimulus is not None:
                truths.append(part.stimulus)
                preds.append(predict_movie(models.ensemble, movie, behaviour))
    except (ReconstructionError, BackendError) as e:
        log.error(str(e))
        return 2
    seconds = time.perf_counter() - start
    movie_u8 = as_uint8(np.concatenate(movies))
    write_movie(movie_u8, out, session.frame_rate)
    log.info(f"wrote {out} ({movie_u8.shape[0]} frames) in {seconds:.1f} s")
    if truths:
        per = [movie_metrics(t, m, eval_mask, sigma=args.smooth) for t, m in zip(truths, movies, strict=True)]
        result: dict[str, Any] = {
            "mode": args.mode,
            "trials": [tr.index for tr in session.trials],
            "frames": int(movie_u8.shape[0]),
            "seconds": round(seconds, 2),
            **mean_metrics(per),
            "response_correlation": float(
                np.mean([response_correlation(p, r) for p, r in zip(preds, recs, strict=True)])
            ),
            "per_trial_pixel_correlation": [p["pixel_correlation"] for p in per],
        }
        if args.mode == "offline":
            result["iterations"] = [i["iterations"] for i in infos] if args.iterations == "auto" else args.iterations
            result["init"] = infos[0]["init"]
        else:
            result["warm_start"] = infos[0]["warm_start"]
        print(json.dumps(result))
    return 0
