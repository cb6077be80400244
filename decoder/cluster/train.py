"""`neurocine train --seeds 0,1,2`: an ensemble of K encoders, one Ray task per seed, each written to
OUT/seed<k>/ (the usual model folder) and exported to OUT/seed<k>/onnx/<mouse>/ (gradient.onnx etc.).

Each task is exactly `neurocine train --seed k --out OUT/seed<k>` followed by `neurocine export`: it calls
their code (decoder/encoder/cli.py), with one torch thread per CPU the task holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from neurocine.streams.commandline import get_logger

log = get_logger("train")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(f"--seeds: comma-separated integers, got {text!r}") from e
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: distinct integers needed, got {text!r}")
    return seeds


def train_seed(args: argparse.Namespace, seed: int, export: bool) -> dict[str, Any]:
    """Train (then export) one member in this process; bad data -> status 'failed' (no retry can help)."""
    import torch

    from neurocine.decoder.encoder.cli import export_model, train_options
    from neurocine.decoder.encoder.data import DataError
    from neurocine.decoder.encoder.train import train

    torch.set_num_threads(args.threads or 1)
    out = Path(args.out) / f"seed{seed}"
    start = time.perf_counter()
    try:
        summary = train(train_options(args, seed=seed, out=str(out)))
    except (DataError, ValueError) as e:
        return {"name": f"seed{seed}", "status": "failed", "error": str(e)}
    summary.pop("history", None)
    row = {"name": f"seed{seed}", "status": "done", "model": str(out), **summary}
    if export:
        graphs = tuple(g.strip() for g in args.export_graphs.split(",") if g.strip())
        row["onnx"] = export_model(out, out / "onnx", graphs=graphs)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def run_seeds(args: argparse.Namespace) -> int:
    from neurocine.decoder.cluster.runner import ClusterError, import_ray, start_ray, summarise

    try:
        seeds = parse_seeds(args.seeds)
        started = start_ray(args.address, args.num_cpus)
    except (ValueError, ClusterError) as e:
        log.error(str(e))
        return 2
    ray = import_ray()
    start = time.perf_counter()
    # absolute paths: tasks run in other processes (other machines), not in this working directory
    args.out = str(Path(args.out).resolve())
    args.data = [str(Path(d).resolve()) for d in args.data]
    args.no_progress = True  # K interleaved bars help nobody; the summary says what finished
    cpus = max(1, args.threads or 1)
    task = ray.remote(num_cpus=cpus, num_gpus=1 if args.device == "cuda" else 0, max_retries=1)(train_seed)
    refs = {task.remote(args, s, not args.no_export): s for s in seeds}
    rows = []
    try:
        for ref, seed in refs.items():
            try:
                with contextlib.redirect_stdout(sys.stderr):  # Ray prints retried tasks' errors on stdout
                    rows.append(ray.get(ref))
            except Exception as e:  # a crash or an error past its retry: report it, keep the others
                rows.append({"name": f"seed{seed}", "status": "failed", "error": f"{type(e).__name__}: {e}"[:500]})
            log.info(f"seed {seed}: {rows[-1]['status']}")
    finally:
        if started:
            ray.shutdown()
    summary = summarise(rows, time.perf_counter() - start)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0
