"""`neurocine bench train-memory`: peak resident memory of training's data side against mice and trials.

For each configuration MICExTRIALS, that many mice in the Sensorium release's layout (float64, N neurons,
300-frame trials, the release's tier proportions) are written into a temporary folder; a fresh process then does
what `neurocine train` does with data before and while it trains, without the model: `load_mice` (one scan of each
mouse's train and oracle tiers: lengths, checks, normalisation statistics), `--batches` batches from
`WindowSampler`, and one validation pass reading every oracle trial's windows as `predict_trials` does. Its peak
RSS (ru_maxrss from wait4) is reported with the data's size on disk. What stays in memory per mouse is the trial
table and statistics (O(trials + neurons)), so memory grows with the number of mice by that, not by their data;
a model, its optimiser and torch's own footprint come on top (`neurocine bench encoder` sizes the models).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Resident memory training on ten release mice may take, model and torch included.
TARGET_GB = 8.0

_CHILD = """
import json, sys, time
import numpy as np
from neurocine.decoder.encoder.data import WindowSampler, load_mice, trial_windows
folders, batches, batch_size = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
mice = load_mice(folders, 32)
loaded = time.perf_counter() - t0
sampler = WindowSampler(mice, 32, batch_size, seed=0)
t0 = time.perf_counter()
for _ in range(batches):
    b = sampler.sample()
sampling = (time.perf_counter() - t0) / max(1, batches)
t0 = time.perf_counter()
windows = 0
for m in mice:
    v = m.valid
    for tr in (v.trials if v is not None else []):
        starts = trial_windows(tr.n_frames, 32)
        rows = tr.start + np.asarray(starts)[:, None] + np.arange(32)[None, :]
        v.stimulus[rows]; v.behaviour[rows]; v.traces[tr.start:tr.stop]
        windows += len(starts)
print(json.dumps({"mice": len(mice), "train_frames": int(sum(m.train.n_frames for m in mice)),
                  "load_seconds": round(loaded, 1), "seconds_per_batch": round(sampling, 4),
                  "validation_windows": windows, "validation_seconds": round(time.perf_counter() - t0, 1)}))
"""


def register(bench_sub: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "train-memory",
                 "peak RSS of training's data side (load, sample, validate) against mice and trials on disk",
                 "neurocine bench train-memory --configs 1x10,1x100,10x30 --neurons 8000 --json out/train_memory.json")
    p.add_argument("--configs", default="1x10,1x100,10x30",
                   help="MICExTRIALS, comma-separated (default 1x10,1x100,10x30)")
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--batches", type=int, default=20, help="batches sampled (default 20)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dir", default=None, help="where the mice are written (default: the system's temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the folders")
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurocine.streams.bench_memory import folder_bytes, peak_rss_mb
    from neurocine.streams.commandline import emit_json, get_logger
    from neurocine.streams.formats.sensorium.release import write_release_like

    log = get_logger("bench")
    base = Path(tempfile.mkdtemp(prefix="neurocine-train-memory-", dir=args.dir))
    idle, _, _, _ = peak_rss_mb([sys.executable, "-c", "import neurocine.decoder.encoder.data"])
    rows = []
    try:
        for config in (c.strip() for c in args.configs.split(",") if c.strip()):
            n_mice, n_trials = (int(x) for x in config.lower().split("x"))
            t0 = time.perf_counter()
            folders = [write_release_like(base / config / f"dynamic{29000 + k}-1-1-Video-bench", n_trials,
                                          args.neurons, seed=k, frames=args.frames, short_fraction=0.05,
                                          statistics=False) for k in range(n_mice)]
            size = sum(folder_bytes(f) for f in folders)
            log.info(f"{config}: {size / 1e9:.2f} GB written in {time.perf_counter() - t0:.0f} s; loading")
            peak, code, out, err = peak_rss_mb([sys.executable, "-c", _CHILD, json.dumps([str(f) for f in folders]),
                                                str(args.batches), str(args.batch_size)])
            if code != 0:
                raise SystemExit(f"bench train-memory: {config} failed ({code}): {err[-2000:]}")
            row = {"config": config, "mice": n_mice, "trials_per_mouse": n_trials, "data_gb": round(size / 1e9, 3),
                   "peak_rss_mb": round(peak, 1), **json.loads(out)}
            log.info(f"{config}: peak RSS {row['peak_rss_mb']} MB")
            rows.append(row)
            if not args.keep:
                shutil.rmtree(base / config)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    emit_json({"train_memory": {
        "neurons": args.neurons, "frames_per_trial": args.frames, "batch_size": args.batch_size,
        "python_and_imports_mb": round(idle, 1), "rows": rows, "target_gb_with_model": TARGET_GB,
        "how": "ru_maxrss (os.wait4) of a process running load_mice, WindowSampler batches and one validation "
               "pass; no model",
        "kept": str(base) if args.keep else None}}, args.json)
    return 0
