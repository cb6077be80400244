"""`neurocine bench calibrate`: how many minutes of calibration a new mouse needs, and what calibration on the
shared core buys against training an encoder from scratch.

For each mouse (`--data`: Sensorium folders of synthetic mice the core never saw, as `neurocine simulate --seed S
--movie-seed 11` writes them) and each count of minutes (`--minutes`, from the start of its train tier):
`neurocine calibrate` (library call) -> model folder, then the streaming decoder at its defaults on `--movies`
fresh held-out clips of that mouse (simulated from its saved parameters with movie seed `--eval-movie-seed`,
never shown in any training or calibration data), scored as the paper scores (pixel correlation, 3-D smoothing
sigma 0.5, first 30 frames dropped), mean over clips. With `--scratch-minutes`, the same minutes also train a
`tiny` encoder from scratch (`neurocine train`, `--scratch-epochs`), export it and fit its inverse decoder: the
baseline calibration must beat. Seconds of every stage are reported; JSON, and a figure with `--figure`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import add_verb, emit_json, get_logger

log = get_logger("bench.calibrate")

DEFAULT_MINUTES = (2, 5, 10, 20, 40)
EVAL_MOVIE_SEED = 13


def register(bench_sub: Any) -> None:
    p = add_verb(bench_sub, "calibrate", "quality of a new mouse against minutes of calibration, vs from scratch",
                 "neurocine simulate --out data/synthetic-31337 --seed 31337 --movie-seed 11 --minutes 50\n"
                 "neurocine bench calibrate --data data/synthetic-31337 --json out/calibrate.json "
                 "--figure out/calibrate.png\n"
                 "neurocine bench calibrate --data data/synthetic-31337 --minutes 10 --scratch-minutes 10,40",
                 description=__doc__)
    p.add_argument("--data", nargs="+", required=True, metavar="DIR",
                   help="Sensorium folders of synthetic mice the core never saw (their parameters in meta/mouse)")
    p.add_argument("--minutes", default=",".join(map(str, DEFAULT_MINUTES)), help="calibration minutes to try")
    p.add_argument("--scratch-minutes", default="", help="minutes also trained from scratch (e.g. 10,40)")
    p.add_argument("--scratch-epochs", type=int, default=15, help="epochs of the from-scratch encoders (default 15)")
    p.add_argument("--movies", type=int, default=4, help="held-out clips decoded per model (default 4)")
    p.add_argument("--eval-movie-seed", type=int, default=EVAL_MOVIE_SEED)
    p.add_argument("--core", default=None, help="shared core (default: the shipped one)")
    p.add_argument("--work", default="out/bench-calibrate", help="where the model folders go (kept)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the JSON here")
    p.add_argument("--figure", default=None, metavar="PNG", help="quality against minutes (matplotlib)")
    p.set_defaults(func=run)


def _counts(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def held_out_clips(mouse_dir: Path, movies: int, movie_seed: int):  # -> Session
    """`movies` fresh 300-frame clips of the mouse's held-out (test) split, simulated from its parameters, under
    the mouse id its folder gives it (the name calibration and every model of it use: the same animal)."""
    from neurocine.decoder.encoder.oracle import find_mouse_folder
    from neurocine.streams.formats import open_session
    from neurocine.streams.synthetic import TrialPlan, simulate_session
    from neurocine.streams.synthetic.mouse import load_mouse

    mouse = load_mouse(find_mouse_folder(mouse_dir))
    plans = [TrialPlan(k, "final_test_main", "test", k) for k in range(movies)]
    clips = simulate_session(mouse, plans, movie_seed=movie_seed)
    return dataclasses.replace(clips, mouse_id=open_session(mouse_dir).mouse_id)


def decode_quality(model_dir: Path, clips: Any) -> dict[str, Any]:
    """The streaming decoder at its defaults (as `decode` runs it) on every clip: pixel correlation (paper's
    scoring) per clip and their mean."""
    from neurocine.decoder.analysis.metrics import movie_metrics
    from neurocine.decoder.reconstruct.models import load_models, session_arrays
    from neurocine.decoder.reconstruct.streaming import StreamingConfig, reconstruct_streaming

    per = []
    for trial in clips.trials:
        part = clips.select_trials([trial.index])
        loaded = load_models([str(model_dir)], part, None, allow_other_mouse=False)
        responses, behaviour = session_arrays(part, loaded.columns)
        movie, _ = reconstruct_streaming(loaded.ensemble, responses, behaviour, StreamingConfig(),
                                         loaded.opt_mask, inverse=loaded.inverse)
        per.append(movie_metrics(part.stimulus, movie)["pixel_correlation"])
    return {"pixel_correlation": round(float(np.mean(per)), 4), "per_clip": [round(float(p), 4) for p in per]}


def calibrated(mouse_dir: Path, minutes: float, work: Path, core: str | None) -> tuple[Path, dict[str, Any]]:
    from neurocine.decoder.encoder.calibrate import CORE_DIR, CalibrateOptions, calibrate

    out = work / f"calibrated-{minutes:g}min"
    summary = calibrate(CalibrateOptions(recordings=[str(mouse_dir)], out=str(out), core=core or str(CORE_DIR),
                                         minutes=minutes, overwrite=True))
    return out, summary


def from_scratch(mouse_dir: Path, minutes: float, epochs: int, work: Path) -> tuple[Path, dict[str, float]]:
    """A tiny encoder trained on the first `minutes` of the mouse's train tier, exported, with its inverse
    decoder fitted on the same minutes: the same model folder as calibrate writes."""
    from neurocine.decoder.encoder.cli import export_model
    from neurocine.decoder.encoder.data import first_minutes
    from neurocine.decoder.encoder.train import TrainOptions, train
    from neurocine.decoder.reconstruct.inverse import export_inverse
    from neurocine.decoder.reconstruct.inverse_fit import fit_inverse
    from neurocine.streams.formats import load_session

    run_dir, out = work / f"scratch-{minutes:g}min-run", work / f"scratch-{minutes:g}min"
    for folder in (run_dir, out):
        shutil.rmtree(folder, ignore_errors=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    train(TrainOptions(data=[str(mouse_dir)], preset="tiny", out=str(run_dir), epochs=epochs, batch_size=16,
                       minutes=minutes, progress=False))
    seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    written = export_model(run_dir, work / "export")
    (mouse,) = written
    shutil.move(str(work / "export" / mouse), str(out))
    shutil.copytree(run_dir, out / "checkpoint", ignore=shutil.ignore_patterns("train_state.pt"))
    seconds["export"] = time.perf_counter() - t
    t = time.perf_counter()
    session = first_minutes(load_session(mouse_dir, tier="train"), minutes)
    export_inverse(fit_inverse(session), out)
    seconds["inverse"] = time.perf_counter() - t
    seconds["total"] = sum(seconds.values())
    return out, {k: round(v, 1) for k, v in seconds.items()}


def run(args: argparse.Namespace) -> int:
    minutes, scratch = _counts(args.minutes), _counts(args.scratch_minutes)
    work = Path(args.work)
    report: dict[str, Any] = {"bench": "calibrate", "minutes": minutes, "scratch_minutes": scratch,
                              "movies": args.movies, "eval_movie_seed": args.eval_movie_seed, "mice": {}}
    for data in args.data:
        mouse_dir = Path(data)
        clips = held_out_clips(mouse_dir, args.movies, args.eval_movie_seed)
        entry: dict[str, Any] = {"mouse": clips.mouse_id, "neurons": clips.n_neurons, "calibrated": {},
                                 "scratch": {}}
        report["mice"][clips.mouse_id] = entry
        for m in minutes:
            log.info(f"{clips.mouse_id}: calibrate on {m:g} min")
            model, summary = calibrated(mouse_dir, m, work / clips.mouse_id, args.core)
            entry["calibrated"][f"{m:g}"] = {**decode_quality(model, clips), "seconds": summary["seconds"],
                                             "heldout_response_correlation": summary["heldout_response_correlation"]}
        for m in scratch:
            log.info(f"{clips.mouse_id}: train from scratch on {m:g} min ({args.scratch_epochs} epochs)")
            model, seconds = from_scratch(mouse_dir, m, args.scratch_epochs, work / clips.mouse_id)
            entry["scratch"][f"{m:g}"] = {**decode_quality(model, clips), "seconds": seconds}
    report["mean"] = {kind: {k: round(float(np.mean([e[kind][k]["pixel_correlation"]
                                                     for e in report["mice"].values()])), 4)
                             for k in next(iter(report["mice"].values()))[kind]}
                      for kind in ("calibrated", "scratch")}
    emit_json(report, args.json)
    if args.figure:
        figure(report, Path(args.figure))
    return 0


def figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mouse, e in report["mice"].items():
        xs = [float(k) for k in e["calibrated"]]
        ax.plot(xs, [v["pixel_correlation"] for v in e["calibrated"].values()], "o-", label=f"{mouse} calibrated")
        if e["scratch"]:
            ax.plot([float(k) for k in e["scratch"]], [v["pixel_correlation"] for v in e["scratch"].values()], "s--",
                    label=f"{mouse} from scratch")
    ax.set_xscale("log")
    ticks = sorted({float(k) for e in report["mice"].values() for kind in ("calibrated", "scratch") for k in e[kind]})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("minutes of calibration recording")
    ax.set_ylabel("pixel correlation, held-out clips (streaming)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
