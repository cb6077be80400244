"""`neurocine bench resolution`: what the decoder can resolve in space and time (Bauer et al., eLife 2026).

Stimuli (neurocine.streams.synthetic.resolution): Gaussian-noise clips over a grid of spatial (px) x temporal (frames)
length constants, each draw with its phase-inverted copy; drifting gratings over spatial frequency (cycles
per pixel) x temporal frequency (Hz), 4 directions. All clips of one run are laid back to back with grey
between them and reconstructed in one go (the offline method, neurocine.decoder.reconstruct.offline) by the chosen
model or ensemble (default: the built-in model), from three sources of activity (default: the first two):
- `predicted`: the model's own predicted responses to the true clips with the mouse's mean behaviour
  (the paper's analysis: what the encoder + inversion can resolve at best);
- `single`: the built-in synthetic mouse's noisy deconvolved responses, one presentation (a real trial);
- `average`: the mean of `--trials` presentations (noise down by sqrt(trials)).
Scored per clip with the paper's pixel correlation in the model's eval mask (decoder/analysis/resolution.py: per cell,
the shuffle test, the inverted-copy analysis). Out: JSON (every cell), heat maps as a figure.

Sizing: a clip costs 60 + `--gap` frames, and every frame costs an encoder pass per covering window per
iteration (`neurocine bench quality`'s seconds_per_iteration_per_100_frames: 0.17 s on a quiet CPU core).
The defaults (a 4x3 noise grid with 2 draws + inverted copies, a 4x4 grating grid in 2 directions: 80 clips,
5,470 frames; window stride 16; 20 iterations; predicted and single-trial sources) took 41 min (predicted) and
12 min (single) on the shared 2-core machine at load 12-14 and 4-12; the grating half alone (2,206 frames, one
source) took 214 s at load 3. Shrink the grid or the iterations for a quick look.
The paper's grids: `--spatial 0,1,2,4,8,16,32 --temporal 0,1,2,4,8,16,32 --tf 15,7.5,3.75,1.88,0.94,0.47,0
--directions 0,90,180,270 --draws 5 --stride 8` (a GPU job). The JSON is rewritten after every source.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.decoder.analysis.metrics import SMOOTH_SIGMA
from neurocine.decoder.reconstruct.offline import DEFAULT_GRAD_BLUR
from neurocine.streams.commandline import add_verb, emit_json, get_logger, write_json
from neurocine.streams.synthetic.resolution import CLIP_FRAMES, GRATING_SF_CPP

log = get_logger("bench.resolution")

SOURCES = ("predicted", "single", "average")
DEFAULT_SPATIAL = (0, 1, 4, 16)
DEFAULT_TEMPORAL = (0, 4, 16)
DEFAULT_TF = (15, 7.5, 1.88, 0)
#: The paper's numbers (eLife 2026, predicted activity of a 7-encoder ensemble, 1000 iterations).
PAPER = {
    "noise_best": "0.87-0.91 at 2-8 px and 4-16 frames",
    "noise_1px": "0.27-0.70",
    "noise_0px": "0.08-0.21",
    "noise_inverted": "anti-correlated with the original",
    "gratings": "0.5 cycles/px fails (<= 0.12); 7.5 Hz fails; coarse 0.61-0.85; 15 Hz high by aliasing",
}


def register(bench_sub: Any) -> None:
    p = add_verb(bench_sub, "resolution",
                 "spatial/temporal resolution: noise and grating heat maps (the paper's analyses)",
                 "neurocine bench resolution --json out/resolution.json --figure out/resolution.png\n"
                 "neurocine bench resolution --spatial 0,1,2,4,8,16,32 --temporal 0,1,2,4,8,16,32 --draws 5 "
                 "--iterations 200   # the paper's noise grid", description=__doc__)
    p.add_argument("--model", action="append", default=None,
                   help="encoder folder (repeat for an ensemble; default: the built-in model)")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    p.add_argument("--neurons", type=int, default=1000, help="neurons of the built-in mouse (default 1000)")
    p.add_argument("--spatial", default=",".join(map(str, DEFAULT_SPATIAL)), help="noise spatial lengths (px)")
    p.add_argument("--temporal", default=",".join(map(str, DEFAULT_TEMPORAL)), help="noise temporal lengths (frames)")
    p.add_argument("--sf", default=",".join(map(str, GRATING_SF_CPP)), help="grating spatial freq. (cycles/px)")
    p.add_argument("--tf", default=",".join(map(str, DEFAULT_TF)), help="grating temporal freq. (Hz)")
    p.add_argument("--directions", default="0,90", help="grating directions (deg; the paper's: 0,90,180,270)")
    p.add_argument("--draws", type=int, default=2, help="noise draws per cell, each with its inverted copy")
    p.add_argument("--families", default="noise,gratings", help="noise, gratings or both")
    p.add_argument("--sources", default="predicted,single", help=f"activity reconstructed from: {SOURCES}")
    p.add_argument("--trials", type=int, default=4, help="presentations averaged by the 'average' source")
    p.add_argument("--iterations", type=int, default=20, help="offline iterations (default 20; paper 1000)")
    p.add_argument("--grad-blur", type=float, default=DEFAULT_GRAD_BLUR, metavar="SIGMA",
                   help=f"gradient blur (px; default {DEFAULT_GRAD_BLUR}, 0 = the paper's method)")
    p.add_argument("--smooth", type=float, default=SMOOTH_SIGMA, help="post-smoothing sigma (default 0.5)")
    p.add_argument("--stride", type=int, default=16,
                   help="window stride (default 16: half the paper's cost; the paper's 8 = --stride 8)")
    p.add_argument("--gap", type=int, default=8, help="grey frames after each clip (default 8)")
    p.add_argument("--no-mask", action="store_true", help="optimise and score every pixel")
    p.add_argument("--seed", type=int, default=0, help="stimulus seed (default 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--figure", help="write a PNG of the heat maps")
    p.set_defaults(func=run)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _log(msg: str) -> None:
    log.info(f"{msg}")


def run(args: argparse.Namespace) -> int:
    from neurocine.decoder.analysis.resolution import cut, grid, score_cells
    from neurocine.decoder.reconstruct.models import default_models, in_model_order, load_models
    from neurocine.decoder.reconstruct.offline import OfflineConfig, predict_movie, reconstruct_offline
    from neurocine.streams.session import Session
    from neurocine.streams.synthetic import make_mouse
    from neurocine.streams.synthetic.resolution import grating_clips, mean_behaviour, noise_clips, programme, watch

    started = time.perf_counter()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    families = {s.strip() for s in args.families.split(",") if s.strip()}
    bad = [s for s in sources if s not in SOURCES] + [f for f in families if f not in ("noise", "gratings")]
    if bad or not sources or not families:
        log.error(f"unknown or empty --sources/--families: {bad}")
        return 2
    spatial, temporal = _floats(args.spatial), _floats(args.temporal)
    sfs, tfs, dirs = _floats(args.sf), _floats(args.tf), _floats(args.directions)
    clips = []
    if "noise" in families:
        clips += noise_clips(spatial, temporal, args.draws, CLIP_FRAMES, args.seed)
    if "gratings" in families:
        clips += grating_clips(sfs, tfs, dirs, CLIP_FRAMES, args.seed)
    movie, starts = programme(clips, gap=args.gap)
    mouse = make_mouse(0, args.neurons)
    t_len = movie.shape[0]
    stub = Session(np.zeros((t_len, mouse.n_neurons), np.float32), np.zeros((t_len, 4), np.float32),
                   np.arange(t_len, dtype=np.int64), mouse.neuron_ids, mouse_id=mouse.mouse_id)  # fmt: skip
    models = load_models(args.model or default_models(), stub, None, args.backend, threads=args.threads)
    ens, cols = models.ensemble, models.columns
    opt_mask = None if args.no_mask else models.opt_mask
    eval_mask = None if args.no_mask else (models.eval_mask if models.eval_mask is not None and models.eval_mask.any()
                                           else models.opt_mask)  # fmt: skip
    _log(f"{len(clips)} clips, {t_len} frames; models: {'; '.join(models.description)}")

    def to_model(traces: np.ndarray) -> np.ndarray:
        return in_model_order(traces, cols)

    needs_trials = {"single": 1, "average": args.trials}
    n_trials = max([needs_trials[s] for s in sources if s in needs_trials] or [0])
    t0 = time.perf_counter()
    trials = watch(mouse, movie, [1000 + k for k in range(n_trials)]) if n_trials else []
    if trials:
        _log(f"synthetic mouse watched it {n_trials}x ({time.perf_counter() - t0:.0f} s)")
    mean_beh = mean_behaviour(mouse)
    cfg = OfflineConfig(iterations=args.iterations, grad_blur=args.grad_blur, stride=args.stride)
    result: dict[str, Any] = {
        "models": models.description, "mouse": f"built-in synthetic mouse (seed 0, {mouse.n_neurons} neurons)",
        "iterations": args.iterations, "stride": args.stride, "grad_blur": args.grad_blur,
        "smoothing_sigma": args.smooth,
        "mask": None if eval_mask is None else {"optimised": int(opt_mask.sum()), "scored": int(eval_mask.sum())},
        "clip_frames": CLIP_FRAMES, "gap": args.gap, "frames": int(t_len), "draws": args.draws,
        "trials_averaged": args.trials,
        "axes": {"noise": {"spatial_px": spatial, "temporal_frames": temporal},
                 "gratings": {"sf_cycles_per_px": sfs, "tf_hz": tfs, "directions": dirs}},
        "paper": PAPER, "sources": {},
    }  # fmt: skip
    for source in sources:
        t0 = time.perf_counter()
        if source == "predicted":
            beh = np.repeat(mean_beh[None].astype(np.float32), t_len, axis=0)
            resp = predict_movie(ens, movie.astype(np.float32), beh, stride=args.stride)
        elif source == "single":
            resp, beh = to_model(trials[0][0]), trials[0][1]
        else:
            use = trials[: args.trials]
            resp = to_model(np.mean([r for r, _ in use], axis=0))
            beh = np.mean([b for _, b in use], axis=0)
        rec = reconstruct_offline(ens, resp, beh, mask=opt_mask, config=cfg)
        cells = score_cells(clips, cut(rec.video, starts, CLIP_FRAMES, args.smooth), eval_mask)
        out: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1)}
        if "noise" in families:
            out["noise"] = {
                "r": grid(cells, "noise", spatial, temporal),
                "inverted_vs_original": grid(cells, "noise", spatial, temporal, "inverted_vs_original"),
                "beats_shuffle": grid(cells, "noise", spatial, temporal, "beats_shuffle"),
                "cells": [{"spatial_px": k[1], "temporal_frames": k[2], **v}
                          for k, v in cells.items() if k[0] == "noise"],
            }
        if "gratings" in families:
            out["gratings"] = {
                "r": grid(cells, "grating", sfs, tfs),
                "beats_shuffle": grid(cells, "grating", sfs, tfs, "beats_shuffle"),
                "cells": [{"sf_cycles_per_px": k[1], "tf_hz": k[2], **v}
                          for k, v in cells.items() if k[0] == "grating"],
            }
        result["sources"][source] = out
        _log(f"{source}: reconstructed and scored in {out['seconds']:.0f} s")
        if args.json:  # a long run keeps what it has
            write_json(result, args.json)
    result["seconds"] = round(time.perf_counter() - started, 1)
    emit_json(result, args.json)
    if args.figure:
        figure(Path(args.figure), result)
    return 0


def figure(path: Path, result: dict[str, Any]) -> None:
    """One row per source: the noise map (spatial x temporal) and the grating map (sf x tf), r in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(result["sources"])
    fams = [f for f in ("noise", "gratings") if f in result["sources"][sources[0]]]
    fig, axes = plt.subplots(len(sources), len(fams), figsize=(5.2 * len(fams), 3.6 * len(sources)), squeeze=False)
    ax_names = {"noise": ("spatial_px", "temporal_frames", "spatial length (px)", "temporal length (frames)"),
                "gratings": ("sf_cycles_per_px", "tf_hz", "spatial frequency (cycles/px)", "temporal frequency (Hz)")}
    for r, src in enumerate(sources):
        for c, fam in enumerate(fams):
            ax = axes[r, c]
            xk, yk, xl, yl = ax_names[fam]
            xs, ys = result["axes"][fam][xk], result["axes"][fam][yk]
            table = np.array([[np.nan if v is None else v for v in row] for row in result["sources"][src][fam]["r"]])
            im = ax.imshow(table, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            beats = result["sources"][src][fam]["beats_shuffle"]
            for i in range(len(xs)):
                for j in range(len(ys)):
                    if np.isfinite(table[i, j]):
                        star = "*" if beats[i][j] is not None and beats[i][j] >= 0.99 else ""
                        ax.text(j, i, f"{table[i, j]:.2f}{star}", ha="center", va="center", fontsize=8)
            ax.set_yticks(range(len(xs)), [f"{x:g}" for x in xs])
            ax.set_xticks(range(len(ys)), [f"{y:g}" for y in ys])
            ax.set_ylabel(xl)
            ax.set_xlabel(yl)
            ax.set_title(f"{fam}, from {src} activity")
            fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(f"pixel correlation in the eval mask ({result['iterations']} iterations; * = beats every shuffle)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
