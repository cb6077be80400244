"""`neurocine batch`: reconstruct many sessions and trials, with one or more encoders, as Ray tasks.

Same options and code as `neurocine reconstruct` (decoder/reconstruct/cli.py), per trial. Grain: offline
ensembles run one task per (trial, encoder), their float movies averaged by a merge task once all members
finish (the paper's video ensembling; bit for bit what `reconstruct` computes); streaming mode and single
encoders run one task per trial (the streaming ensemble averages gradients, it cannot be split).
`neurocine bench batch` measures the per-task overhead behind this choice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from neurocine.streams.commandline import add_verb, get_logger

log = get_logger("batch")

EXAMPLE = """\
neurocine batch --sessions s1.ncr s2.ncr --model m0 --model m1 --model m2 --iterations 1000 --out runs/b1
neurocine batch --session streams/data/example.ncr --trial 0 --trial 1 --iterations 20 --num-cpus 2 --out /tmp/b
neurocine batch --address ray://head:10001 --session /shared/s1.ncr --backend onnx --provider cuda --out /shared/b
"""


def register(subparsers: Any) -> None:
    from neurocine.decoder.reconstruct.cli import add_reconstruct_options

    p = add_verb(subparsers, "batch",
                 "reconstruct many sessions/trials with one or more encoders as Ray tasks (resumable)", EXAMPLE,
                 description="Reconstruct every trial of many sessions as Ray tasks on an embedded local cluster or "
                 "an existing one (--address): one output per trial, a summary table, resumable, failed tasks "
                 "retried then reported by name. Needs the cluster extra: pip install 'neurocine[cluster]'.\n"
                 "Writes OUT/<session>/trial<k>.npy (uint8 movie) and trial<k>.json (metrics), OUT/summary.json; "
                 "prints the summary. Rerun the same command to resume: finished trials are skipped.")
    add_reconstruct_options(p)
    p.add_argument("--sessions", nargs="+", default=[], metavar="PATH", help="more sessions (with --session)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumes what it holds)")
    p.add_argument("--grain", choices=("auto", "trial", "member"), default="auto",
                   help="one task per trial, or per (trial, encoder) for offline ensembles (auto: member "
                   "when offline with several encoders)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="local cluster: CPUs (= parallel tasks)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per task (default: 1 with --provider cuda, or auto + onnx on a GPU cluster)")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a crashed task (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _trials_of(session: str, trials: list[int] | None, series: str | None = None) -> list[int]:
    """The trials to reconstruct: those named, else every trial the session replays (a Sensorium mouse's are
    listed without reading their frames)."""
    if trials:
        return list(trials)
    from neurocine.streams.formats import open_session

    return [t.index for t in open_session(session, series=series).trials]


def run(args: argparse.Namespace) -> int:
    from neurocine.decoder.cluster.jobs import (
        UnitError,
        atomic_write_text,
        check_batch_file,
        plan_units,
        session_names,
        settings_of,
    )
    from neurocine.decoder.cluster.runner import ClusterError, gpus_per_task, run_plan, start_ray, summarise
    from neurocine.decoder.reconstruct.backends import BackendError
    from neurocine.decoder.reconstruct.models import default_models

    if args.max_retries < 0:
        log.error("--max-retries must be >= 0")
        return 2
    grain = args.grain if args.grain != "auto" else ("member" if args.mode == "offline" else "trial")
    if grain == "member" and args.mode == "streaming":
        log.error("--grain member is for offline mode (streaming ensembles average gradients)")
        return 2
    sessions = ([args.session] if args.session else []) + list(args.sessions)
    if not sessions:
        from neurocine.streams.example import example_session_path

        sessions = [str(example_session_path())]
    # absolute paths: tasks run in other processes (other machines), not in this working directory
    sessions = [str(Path(s).resolve()) for s in sessions]
    models = [str(Path(m).resolve()) if Path(m).exists() else m for m in args.model or default_models()]
    out = Path(args.out).resolve()
    settings = settings_of(args)
    try:
        check_batch_file(out, settings, models)
        if args.address is None:  # tasks run here: a model that cannot run (--provider cuda without CUDA) fails now
            from neurocine.decoder.reconstruct.models import check_model_args

            check_model_args(args)
    except (UnitError, BackendError) as e:
        log.error(str(e))
        return 2
    start = time.perf_counter()
    names, plan, rows = session_names(sessions), [], []
    for s in sessions:
        try:
            trials = _trials_of(s, args.trial, getattr(args, "series", None))
        except Exception as e:  # an unreadable session fails its own row, not the batch
            rows.append({"name": names[s], "status": "failed", "error": f"{names[s]}: cannot read {s}: {e}"})
            continue
        plan += plan_units(s, names[s], trials, models, str(out), grain)
    try:
        started = start_ray(args.address, args.num_cpus)
    except ClusterError as e:
        log.error(str(e))
        return 2
    from neurocine.streams.commandline import stop_on_sigterm

    stop_on_sigterm()  # after ray.init, which installs its own: scancel / systemctl stop act like Ctrl-C
    try:
        # Ray prints retried tasks' tracebacks on stdout: keep stdout for the summary JSON alone
        with contextlib.redirect_stdout(sys.stderr):
            gpus = gpus_per_task(args.backend, args.provider, args.num_gpus)
            rows += run_plan(plan, settings, max_retries=args.max_retries, num_gpus=gpus,
                             progress=not args.no_progress)
    except KeyboardInterrupt:
        log.warning(f"interrupted; finished trials are kept in {out}, rerun the same command to resume")
        return 130
    finally:
        if started:
            import ray

            ray.shutdown()
    summary = summarise(rows, time.perf_counter() - start)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print_table(rows)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


def print_table(rows: list[dict[str, Any]]) -> None:
    """The summary as a table on stderr: one line per task; failures with their reason."""
    width = max([len(r["name"]) for r in rows] + [4])
    log.info(f"{'task':<{width}}  status   seconds  pixel_r")
    for r in rows:
        secs = f"{r['seconds']:8.1f}" if "seconds" in r else " " * 8
        corr = f"{r['pixel_correlation']:8.4f}" if "pixel_correlation" in r else ""
        log.info(f"{r['name']:<{width}}  {r['status']:<7} {secs} {corr}")
        if r["status"] == "failed":
            log.info(f"  -> {r.get('error')}")
