"""`neurocine bench quality`: how good the reconstructions are, on held-out movies of a synthetic mouse.

Default data: the built-in mouse (seed 0, 1,000 neurons) watching `--movies` held-out test clips (movie seed
1, never used for training) of `--frames` frames, with its noisy deconvolved responses. `--data` takes a
synthetic session (file or Sensorium folder) whose mouse parameters lie beside it (its final_test_main
trials, else its first trials).

Subject: trained encoders (`--model`, repeatable; default: the built-in model and its two sibling seeds
shipped in decoder/models/), neurons matched by id. Reported (pixel correlation as the paper scores it,
mean over movies; per-frame correlation beside it), each with the gradient blur of the command line
(`--grad-blur`, default 2 px) unless said otherwise:
- offline through the first encoder: the paper's exact method (no blur) and with the blur, each with the
  score after 10, 20, 40, 60, 100, 200, 500 iterations up to `--iterations`;
- offline through all K encoders (separate reconstructions averaged, as the paper's ensemble);
- offline through the oracle encoder (the mouse's own noise-free model: the upper bound of any encoder);
- streaming at several lags and steps per frame, and as a fraction of offline (same encoder, same blur);
- the neuron-count ablation (100/50/25/12.5 % of the neurons, a seeded random subset; the rest weigh 0);
- reconstruction from the encoder's own predicted responses to the true movie (the paper's upper bound);
- with vs without the alpha mask shipped beside the first encoder, scored in its eval mask;
- the learned first guess (`inverse`, the inverse.onnx beside the first encoder): the inverse decoder alone;
  offline from it vs from grey at fixed counts and with `--iterations auto` (held-out neurons), with seconds
  per 10-s movie; streaming with it vs without at 0, 1 and 2 steps per frame; and quality against age (the
  estimate of a frame 0, 1, 2, 4, 8, 16, 32 frames after its responses arrived: what a closed loop sees);
- near cuts: the movies played back to back in reverse order, as a replay of shuffled trials plays them (one
  movie: its second half, then its first), streaming at the default lag and steps; the first 32 frames after each cut
  scored with the cut rule (the optimiser restarts, no window spans the cut) and without it (and the 32 before).
Sizing (defaults): 2 movies x 150 frames (120 scored after the 30 skipped), 100 offline iterations instead
of the paper's 1000 (see by_iterations: with noisy single-trial responses the score flattens or falls as the
movie fits the noise). About 15-25 min on 2 shared CPU cores; `--skip` drops groups.
`--frames 300 --iterations 1000 --grad-blur 0` is the paper's setting.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.decoder.reconstruct.offline import DEFAULT_GRAD_BLUR
from neurocine.streams.commandline import add_verb, emit_json, get_logger

log = get_logger("bench.quality")

DEFAULT_LAGS = (8, 16, 32, 48)
DEFAULT_MODELS = ("default", "seed1", "seed2")
DEFAULT_STEPS = (1, 2, 4)


def register(bench_sub: Any) -> None:
    p = add_verb(bench_sub, "quality",
                 "reconstruction quality: offline, ensembles, streaming vs lag, neuron ablation, mask",
                 "neurocine bench quality --json out/quality.json --figure out/quality.png\n"
                 "neurocine bench quality --movies 1 --frames 300 --iterations 1000   # the paper's setting",
                 description="Reconstruction quality on held-out movies of a synthetic mouse (JSON; optional "
                 "figure).")
    p.add_argument(
        "--data", help="synthetic session file/folder with its mouse beside it (default: built-in mouse)"
    )
    p.add_argument("--neurons", type=int, default=1000, help="neurons of the built-in mouse (default 1000)")
    p.add_argument("--model", action="append", default=None, help="encoder (repeat: K for the ensemble; "
                   "default: the built-in model and its sibling seeds)")
    p.add_argument("--backend", choices=["onnx", "torch"], default=None,
                   help="gradient backend (default: onnx when the models have gradient.onnx)")
    p.add_argument("--grad-blur", type=float, default=DEFAULT_GRAD_BLUR, metavar="SIGMA",
                   help=f"gradient blur (px) of every run but the paper-exact one (default {DEFAULT_GRAD_BLUR})")
    p.add_argument("--movies", type=int, default=2, help="held-out movies (default 2)")
    p.add_argument("--frames", type=int, default=150, help="frames per movie (default 150)")
    p.add_argument("--movie-seed", type=int, default=1,
                   help="seed of the held-out movies of the built-in mouse (default 1; training used 0)")
    p.add_argument("--iterations", type=int, default=100, help="offline iterations (default 100; paper 1000)")
    p.add_argument("--lags", default=",".join(map(str, DEFAULT_LAGS)), help="streaming lags (frames)")
    p.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="streaming steps per frame")
    p.add_argument("--default-lag", type=int, default=32)
    p.add_argument("--default-steps", type=int, default=2)
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated groups to skip: paper,ensemble,oracle,streaming,ablation,predicted,mask,inverse,cuts",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--figure", help="write a PNG: stills true vs reconstructed, quality vs lag")
    p.set_defaults(func=run)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


Movie = tuple[np.ndarray, np.ndarray, np.ndarray]  # stimulus (T, 36, 64) uint8, behaviour (T, 4), traces (T, N)


def _load_movies(args: argparse.Namespace) -> tuple[Any, Any, list[Movie]]:
    """(mouse, session (for its neuron ids), [(stimulus, behaviour, traces)])."""
    from neurocine.streams.synthetic import TrialPlan, make_mouse, simulate_session

    if args.data:
        from neurocine.decoder.encoder.oracle import find_mouse_folder
        from neurocine.streams.formats import load_session
        from neurocine.streams.synthetic import load_mouse

        mouse = load_mouse(find_mouse_folder(args.data))
        session = load_session(args.data)
        trials = [t for t in session.trials if t.tier == "final_test_main"] or session.trials
        seen, movies = set(), []
        for tr in trials:
            part = session.select_trials([tr.index])
            if part.stimulus is None:
                raise SystemExit(f"bench quality: {args.data} has no stimulus; cannot score")
            key = part.stimulus[: min(5, part.n_frames)].tobytes()
            if key in seen:  # repeats of one clip: take the first
                continue
            seen.add(key)
            f = min(args.frames, part.n_frames)
            movies.append((part.stimulus[:f], part.behaviour[:f], part.traces[:f]))
            if len(movies) == args.movies:
                break
        return mouse, session, movies
    mouse = make_mouse(0, args.neurons)
    plans = [TrialPlan(k, "final_test_main", "test", k) for k in range(args.movies)]
    session = simulate_session(mouse, plans, movie_seed=args.movie_seed, n_frames=args.frames)
    movies = []
    for tr in session.trials:
        sl = slice(tr.start, tr.stop)
        movies.append((session.stimulus[sl], session.behaviour[sl], session.traces[sl]))
    return mouse, session, movies


def _log(msg: str) -> None:
    log.info(f"{msg}")


def _encoders(args: argparse.Namespace, session: Any) -> tuple[list[Any], np.ndarray, Any, list[str], str]:
    """(one backend per --model, session columns in model neuron order, LoadedModels of the first, notes,
    backend name)."""
    from neurocine.decoder.reconstruct.models import SHIPPED_MODELS_DIR, backend_of, load_models

    specs = args.model or [str(SHIPPED_MODELS_DIR / m) for m in DEFAULT_MODELS if (SHIPPED_MODELS_DIR / m).is_dir()]
    backend = args.backend or backend_of(specs)
    loaded = [load_models([m], session, args.data, backend=backend, threads=args.threads) for m in specs]
    columns = loaded[0].columns
    if any(not np.array_equal(columns, x.columns) for x in loaded[1:]):
        raise SystemExit("bench quality: the --model encoders are not of the same neurons")
    members = [x.ensemble.members[0] for x in loaded]
    notes = [x.description[0] for x in loaded]
    return members, columns, loaded[0], notes, backend


def run(args: argparse.Namespace) -> int:
    import torch

    from neurocine.decoder.analysis.metrics import METRICS, movie_metrics, spread
    from neurocine.decoder.encoder.oracle import OracleEncoder
    from neurocine.decoder.reconstruct.backends import TorchBackend
    from neurocine.decoder.reconstruct.models import in_model_order
    from neurocine.decoder.reconstruct.offline import OfflineConfig, predict_movie, reconstruct_offline
    from neurocine.decoder.reconstruct.streaming import StreamingConfig, reconstruct_streaming

    torch.set_num_threads(max(1, args.threads))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.perf_counter()
    mouse, session, movies = _load_movies(args)
    if not movies:
        raise SystemExit("bench quality: no movies")
    members, columns, first, notes, backend = _encoders(args, session)
    encoder = members[0]
    ok = columns >= 0
    inputs = [(stim, beh, in_model_order(traces, columns)) for stim, beh, traces in movies]
    oracle = TorchBackend.from_oracle(OracleEncoder(mouse))
    blur = args.grad_blur
    paper_cfg = OfflineConfig(iterations=args.iterations)
    cfg = OfflineConfig(iterations=args.iterations, grad_blur=blur)
    result: dict[str, Any] = {
        "data": args.data or "built-in synthetic mouse (seed 0), held-out test clips (movie seed 1)",
        "encoders": notes,
        "backend": backend,
        "provider": getattr(encoder, "provider", "?"),
        "neurons": {"session": int(session.n_neurons), "encoder": int(columns.size), "matched": int(ok.sum())},
        "movies": len(movies),
        "frames": [int(m[0].shape[0]) for m in movies],
        "iterations": args.iterations,
        "grad_blur": blur,
        "scoring": "paper: sigma-0.5 3D smoothing, first 30 frames dropped",
        "paper": {
            "offline_7_encoders": 0.569,
            "neurons_100_50_25_12.5": [0.569, 0.512, 0.427, 0.344],
            "no_mask": 0.510,
            "predicted_responses": 0.766,
            "gpu_minutes_per_movie": 60,
        },
    }
    stills: dict[str, np.ndarray] = {}
    points = tuple(i for i in (10, 20, 40, 60, 100, 200, 500) if i < args.iterations)

    def score(videos: list[np.ndarray], eval_mask: np.ndarray | None = None) -> dict[str, Any]:
        """Means over movies of analysis.metrics (paper smoothing; pixel correlation also unsmoothed), and
        the pixel correlation's per-movie values with its 95 % t-interval over movies."""
        per = [movie_metrics(m[0], v, eval_mask) for m, v in zip(movies, videos, strict=True)]
        out: dict[str, Any] = {k: round(float(np.mean([p[k] for p in per])), 4) for k in METRICS}
        raw = [p["unsmoothed"]["pixel_correlation"] for p in per]
        out["pixel_correlation_unsmoothed"] = round(float(np.mean(raw)), 4)
        out["pixel_correlation_spread"] = spread([p["pixel_correlation"] for p in per])
        return out

    def offline(backends: Any, label: str, config: OfflineConfig = cfg, which: str = "traces",
                weights: np.ndarray | None = None, mask: np.ndarray | None = None,
                eval_mask: np.ndarray | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
        """which: "traces" (recorded, model neuron order), "session" (recorded, the session's own neurons:
        the oracle's) or "predicted" (the backends' own prediction for the true movie)."""
        t0 = time.perf_counter()
        videos, snaps = [], {}
        for (stim, beh, resp), (_, _, traces) in zip(inputs, movies, strict=True):
            if which == "predicted":
                resp = predict_movie(backends, stim.astype(np.float32), beh)
            elif which == "session":
                resp = traces
            rec = reconstruct_offline(backends, resp, beh, mask=mask, weights=weights, config=config,
                                      snapshots=points)  # fmt: skip
            videos.append(rec.video)
            for i, v in rec.snapshots.items():
                snaps.setdefault(i, []).append(v)
        seconds = time.perf_counter() - t0
        out = {**score(videos, eval_mask), "seconds": round(seconds, 1)}
        if snaps:
            out["by_iterations"] = {str(i): score(snaps[i], eval_mask)["pixel_correlation"] for i in sorted(snaps)}
        _log(f"{label}: {out['pixel_correlation']:.3f} ({seconds:.0f} s)")
        return out, videos

    # ---- offline, one trained encoder: the paper's exact method, then with the gradient blur
    n_frames = sum(int(m[0].shape[0]) for m in movies)
    if "paper" not in skip:
        result["offline_1_paper_method"], _ = offline(encoder, "offline, 1 encoder, paper's method (no blur)",
                                                      config=paper_cfg)  # fmt: skip
    main, main_videos = offline(encoder, f"offline, 1 encoder, blur {blur:g}")
    main["seconds_per_iteration_per_100_frames"] = round(main["seconds"] / args.iterations / n_frames * 100, 4)
    result["offline_1"] = main
    stills["offline, 1 encoder"] = main_videos[0]

    if "ensemble" not in skip and len(members) > 1:
        ens, videos = offline(members, f"offline, {len(members)} encoders (videos averaged)")
        result[f"offline_{len(members)}"] = ens
        stills[f"offline, {len(members)} encoders"] = videos[0]

    if "oracle" not in skip:
        result["offline_oracle_paper_method"], _ = offline(oracle, "offline, oracle, no blur", paper_cfg, "session")
        result["offline_oracle"], videos = offline(oracle, f"offline, oracle, blur {blur:g}", cfg, "session")
        stills["offline, oracle"] = videos[0]

    if "streaming" not in skip:
        lags, steps = _ints(args.lags), _ints(args.steps)
        grid = sorted({(lag, args.default_steps) for lag in lags} | {(args.default_lag, s) for s in steps})
        rows = []
        for lag, st in grid:
            t0 = time.perf_counter()
            vids, per_frame = [], []
            for _, beh, resp in inputs:
                v, rec = reconstruct_streaming(encoder, resp, beh, StreamingConfig(lag=lag, steps=st, grad_blur=blur))
                vids.append(v)
                per_frame.append(rec.timing()["mean_s"])
            sc = score(vids)
            rows.append({
                "lag": lag, "steps": st, **sc,
                "fraction_of_offline": round(sc["pixel_correlation"] / main["pixel_correlation"], 3),
                "seconds_per_frame": round(float(np.mean(per_frame)), 4),
            })  # fmt: skip
            _log(f"streaming lag {lag} steps {st}: {sc['pixel_correlation']:.3f} ({time.perf_counter() - t0:.0f} s)")
            if (lag, st) == (args.default_lag, args.default_steps):
                stills[f"streaming, lag {lag}"] = vids[0]
        result["streaming"] = rows

    if "ablation" not in skip:
        rows = []
        order = np.random.default_rng(0).permutation(np.flatnonzero(ok))
        for frac in (1.0, 0.5, 0.25, 0.125):
            n = max(1, round(order.size * frac))
            if frac == 1.0:
                rows.append({"fraction": frac, "neurons": n, "pixel_correlation": main["pixel_correlation"],
                             "frame_correlation": main["frame_correlation"]})  # fmt: skip
                continue
            weights = np.zeros(columns.size, np.float32)
            weights[order[:n]] = 1.0
            res, _ = offline(encoder, f"ablation {frac:g} ({n} neurons)", weights=weights)
            rows.append({"fraction": frac, "neurons": n, "pixel_correlation": res["pixel_correlation"],
                         "frame_correlation": res["frame_correlation"]})  # fmt: skip
        result["neuron_ablation"] = rows

    if "predicted" not in skip:
        result["offline_from_predicted_responses"], _ = offline(
            encoder, "offline from the encoder's predicted responses", which="predicted"
        )

    if "mask" not in skip:
        if first.opt_mask is None:
            result["mask"] = {"skipped": "no alpha_mask.npy beside the first encoder"}
        else:
            ev = first.eval_mask if first.eval_mask is not None and first.eval_mask.any() else first.opt_mask
            with_mask, _ = offline(encoder, "offline with the alpha mask", mask=first.opt_mask, eval_mask=ev)
            result["mask"] = {
                "optimised_pixels": int(first.opt_mask.sum()),
                "eval_pixels": int(ev.sum()),
                "with_mask": with_mask,
                "without_mask": score(main_videos, ev),
            }

    if "inverse" not in skip:
        if first.inverse is None:
            result["inverse"] = {"skipped": "no inverse.onnx beside the first encoder"}
        else:
            result["inverse"] = _first_guess(first.inverse, encoder, inputs, score, args, n_frames, main)
            stills["inverse decoder alone"] = first.inverse.movie(inputs[0][2], inputs[0][1])

    if "cuts" not in skip:
        result["cuts"] = _near_cuts(encoder, movies, inputs, args, first.inverse)

    # rows compared on the same movies: the spread of the per-movie differences from offline_1 (movie difficulty
    # cancels, so this CI is far narrower than each row's own)
    base = result["offline_1"]["pixel_correlation_spread"]["per_movie"]
    for key, row in result.items():
        per = row.get("pixel_correlation_spread", {}).get("per_movie") if isinstance(row, dict) else None
        if key != "offline_1" and per is not None and len(per) == len(base):
            row["paired_vs_offline_1"] = spread(np.subtract(per, base))
    result["seconds"] = round(time.perf_counter() - started, 1)
    emit_json(result, args.json)
    if args.figure:
        _figure(Path(args.figure), movies[0][0], stills, result)
    return 0


AGES = (0, 1, 2, 4, 8, 16, 32)
#: Frames scored after each cut: a window's length, what a window spanning the cut could reach.
CUT_FRAMES = 32


def _near_cuts(encoder: Any, movies: list, inputs: list, args: argparse.Namespace, inverse: Any) -> dict[str, Any]:
    """Quality of the first CUT_FRAMES frames after each cut of a stream of movies played back to back, streaming
    with the cut rule (the optimiser restarts at the cut) and without (its windows span the cut)."""
    from neurocine.decoder.analysis.metrics import movie_correlation
    from neurocine.decoder.reconstruct.streaming import StreamingConfig, reconstruct_streaming

    # Played in an order they were not recorded in (as a replay of the release's shuffled trials plays them): the
    # movies in reverse, so no trial follows the one it followed at the rig (the synthetic mouse watched its clips
    # 1 s apart, and its calcium still carried the previous clip into the next one: that is no cut).
    if len(inputs) > 1:
        parts = [(m[0], beh, resp) for m, (_, beh, resp) in zip(movies, inputs, strict=True)][::-1]
    else:  # one movie: its second half, then its first, so the cut joins two different scenes
        (stim, _, _), (_, beh, resp) = movies[0], inputs[0]
        half = stim.shape[0] // 2
        parts = [(stim[half:], beh[half:], resp[half:]), (stim[:half], beh[:half], resp[:half])]
    truth = np.concatenate([p[0] for p in parts])
    beh = np.concatenate([p[1] for p in parts])
    resp = np.concatenate([p[2] for p in parts])
    starts = np.cumsum([0] + [p[0].shape[0] for p in parts])
    cuts = [int(c) for c in starts[1:-1]]
    cfg = StreamingConfig(lag=args.default_lag, steps=args.default_steps, grad_blur=args.grad_blur)
    out: dict[str, Any] = {"cuts": len(cuts), "frames_scored_after_each": CUT_FRAMES, "lag": cfg.lag,
                           "steps": cfg.steps, "warm_start": cfg.warm_start_with(inverse),
                           "scoring": "pixel correlation of the frames after each cut (paper smoothing, none dropped)"}
    for label, at in (("with_cut_rule", cuts), ("without_cut_rule", [])):
        movie, _ = reconstruct_streaming(encoder, resp, beh, cfg, inverse=inverse, cuts=at)
        after, before = [], []
        for c, first, stop in zip(cuts, starts[:-2], starts[2:], strict=True):
            span = slice(c, min(c + CUT_FRAMES, int(stop)))
            after.append(round(movie_correlation(truth[span], movie[span], skip=0), 4))
            span = slice(max(int(first), c - CUT_FRAMES), c)
            before.append(round(movie_correlation(truth[span], movie[span], skip=0), 4))
        out[label] = {"pixel_correlation": round(float(np.mean(after)), 4), "per_cut": after,
                      "before_the_cut": round(float(np.mean(before)), 4)}
        _log(f"the {CUT_FRAMES} frames after a cut, {label.replace('_', ' ')}: {out[label]['pixel_correlation']:.3f} "
             f"({out[label]['before_the_cut']:.3f} for the {CUT_FRAMES} before it)")
    out["difference"] = round(out["with_cut_rule"]["pixel_correlation"]
                              - out["without_cut_rule"]["pixel_correlation"], 4)
    return out


def _first_guess(inverse: Any, encoder: Any, inputs: list, score: Any, args: argparse.Namespace, n_frames: int,
                 main: dict[str, Any]) -> dict[str, Any]:
    """The inverse decoder alone, as the offline start (fixed counts and auto-stop) and as the streaming warm
    start (with quality against age); seconds per 10-s movie (300 frames) for each offline variant."""
    from neurocine.decoder.reconstruct.inverse import INVERSE_MIX
    from neurocine.decoder.reconstruct.offline import AutoStop, OfflineConfig, reconstruct_offline
    from neurocine.decoder.reconstruct.streaming import StreamingConfig, reconstruct_streaming

    per_movie = 300 / n_frames  # seconds -> seconds per 10-s movie
    out: dict[str, Any] = {"inverse_mix": INVERSE_MIX,
                           "inverse_alone": score([inverse.movie(r, b) for _, b, r in inputs]),
                           "inverse_alone_causal": score([inverse.movie(r, b, "frame_causal") for _, b, r in inputs]),
                           "fit": inverse.fit_report}
    _log(f"inverse decoder alone: {out['inverse_alone']['pixel_correlation']:.3f} (causal head "
         f"{out['inverse_alone_causal']['pixel_correlation']:.3f})")
    points = tuple(sorted({i for i in (10, 20, 40, 60, 100, 200, 500, 1000) if i <= args.iterations}
                          | ({args.iterations} if args.iterations > 0 else set())))
    offline_rows: dict[str, Any] = {}
    for init in ("grey", "inverse_unmixed", "inverse"):
        t0 = time.perf_counter()
        videos, snaps = [], {}
        for _, beh, resp in inputs:
            start = inverse.movie(resp, beh) if init != "grey" else None
            rec = reconstruct_offline(encoder, resp, beh, config=OfflineConfig(iterations=args.iterations,
                                      grad_blur=args.grad_blur), snapshots=points, init_video=start,
                                      prior_mix=INVERSE_MIX if init == "inverse" else 0.0)  # fmt: skip
            videos.append(rec.video)
            for i, v in rec.snapshots.items():
                snaps.setdefault(i, []).append(v)
        secs = time.perf_counter() - t0
        by_it = {str(i): score(snaps[i])["pixel_correlation"] for i in sorted(snaps)} or {"0": score(videos)[
            "pixel_correlation"]}
        best = max(by_it, key=lambda k: by_it[k])
        offline_rows[f"fixed_from_{init}"] = {
            "by_iterations": by_it, "best_in_hindsight": {"iterations": int(best), "pixel_correlation": by_it[best]},
            "seconds_per_movie_per_iteration": round(secs / args.iterations * per_movie, 4)}
        if init == "inverse_unmixed":
            continue
        t0 = time.perf_counter()
        videos, counts = [], []
        for _, beh, resp in inputs:
            start = inverse.movie(resp, beh) if init == "inverse" else None
            rec = reconstruct_offline(encoder, resp, beh, config=OfflineConfig(grad_blur=args.grad_blur),
                                      init_video=start, auto_stop=AutoStop(),
                                      prior_mix=INVERSE_MIX if init == "inverse" else 0.0)
            videos.append(rec.video)
            counts += rec.stopped_at
        secs = time.perf_counter() - t0
        offline_rows[f"auto_from_{init}"] = {**score(videos), "iterations_chosen": counts,
                                             "seconds_per_movie": round(secs * per_movie, 1)}
        _log(f"offline from {init}: auto {offline_rows[f'auto_from_{init}']['pixel_correlation']:.3f} at {counts} "
             f"iterations; best fixed {by_it[best]:.3f} at {best}")
    per_it = offline_rows["fixed_from_grey"]["seconds_per_movie_per_iteration"]
    offline_rows["fixed_1000_seconds_per_movie_extrapolated"] = round(per_it * 1000, 1)
    out["offline"] = offline_rows
    rows, ages = [], {}
    for warm in ("previous", "inverse"):
        for steps in (0, 1, 2):
            cfg = StreamingConfig(lag=args.default_lag, steps=steps, grad_blur=args.grad_blur, warm_start=warm)
            t0 = time.perf_counter()
            vids, by_age = [], {a: [] for a in AGES}
            for _, beh, resp in inputs:
                v, rec = reconstruct_streaming(encoder, resp, beh, cfg, inverse=inverse, provisional_ages=AGES)
                vids.append(v)
                for a in AGES:
                    by_age[a].append(rec.age_movies[a])
            sc = score(vids)
            rows.append({"warm_start": warm, "steps": steps, **sc,
                         "seconds_per_frame": round((time.perf_counter() - t0) / n_frames, 4)})
            _log(f"streaming lag {args.default_lag}, {steps} steps, warm start {warm}: {sc['pixel_correlation']:.3f}")
            if steps == 1:
                ages[warm] = {str(a): score(by_age[a])["pixel_correlation"] for a in AGES}
    out["streaming"] = rows
    out["quality_by_age_1_step"] = ages
    return out


def _figure(path: Path, truth: np.ndarray, stills: dict[str, np.ndarray], result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("true", truth.astype(np.float32))] + [(k, v) for k, v in stills.items()]
    t = truth.shape[0]
    frames = np.linspace(min(30, t - 1), t - 1, 5).astype(int)
    fig = plt.figure(figsize=(12, 2.0 * len(rows) + 3))
    grid = fig.add_gridspec(len(rows) + 1, len(frames), height_ratios=[1] * len(rows) + [1.6])
    for r, (name, movie) in enumerate(rows):
        for c, f in enumerate(frames):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(movie[f], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
            if r == 0:
                ax.set_title(f"frame {f}")
    ax = fig.add_subplot(grid[len(rows), :])
    stream = result.get("streaming", [])
    steps = sorted({row["steps"] for row in stream})
    for st in steps:
        pts = sorted((row["lag"], row["pixel_correlation"]) for row in stream if row["steps"] == st)
        if len(pts) > 1:
            ax.plot(*zip(*pts, strict=True), "o-", label=f"streaming, {st} steps/frame")
    ax.axhline(
        result["offline_1"]["pixel_correlation"],
        color="k",
        ls="--",
        label=f"offline, same encoder ({result['iterations']} iterations)",
    )
    if "offline_oracle" in result:
        ax.axhline(result["offline_oracle"]["pixel_correlation"], color="grey", ls=":", label="offline, oracle")
    ax.set_xlabel("lag (frames)")
    ax.set_ylabel("pixel correlation")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
