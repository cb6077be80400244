"""`neurocine bench batch`: what Ray costs and buys for `neurocine batch`, measured on this machine.

1. serial: each trial's task (load session + encoder, offline reconstruction, metrics, write) run in this
   process, once with --iterations and once with 0, giving the per-iteration time and the fixed cost;
2. Ray, 1 then 2 workers (num_cpus, one thread per task), workers warmed up first (their start-up and
   imports are reported apart): wall time of the same tasks, outputs compared bit for bit with (1);
3. Ray's own cost: a no-op task's round trip, and per task (Ray wall with 1 worker - serial sum) / tasks,
   as a fraction of a 300-frame, 1000-iteration offline reconstruction (fixed cost + 1000 x iteration);
4. extrapolation of a sessions x encoders job per added GPU node: tasks = sessions x trials x encoders
   (one per (trial, encoder), each 1000 iterations) run in waves of nodes x GPUs per node; a wave takes one
   task's time (measured here, or scaled by --gpu-iteration-ms measured on a GPU) plus Ray's per-task cost;
   each trial's merge adds its measured cost in waves of nodes x CPUs per node.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from neurocine.streams.commandline import add_verb, get_logger

log = get_logger("bench.batch")

EXAMPLE = """\
neurocine bench batch --trials 4 --iterations 2 --repeats 2 --json bench_batch.json
neurocine bench batch --from-json bench_batch.json --gpu-iteration-ms 858 --gpus-per-node 8
neurocine bench batch --backend onnx --provider cuda --job-sessions 10 --job-encoders 7 --gpus-per-node 8
"""


def register(bench_sub: Any) -> None:
    p = add_verb(bench_sub, "batch", "Ray batch: 1 vs 2 workers, per-task overhead, cluster-size extrapolation",
                 EXAMPLE, description=__doc__)
    p.add_argument("--session", default=None, help="session (default: the built-in example, 300-frame trials)")
    p.add_argument("--model", default=None, help="encoder (default: the built-in model)")
    p.add_argument("--trials", type=int, default=4, help="trials (tasks) per run (default 4)")
    p.add_argument("--iterations", type=int, default=3, help="offline iterations per task (default 3)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default): the model's ONNX graphs where it has them")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="cpu")
    p.add_argument("--workers", default="1,2", help="Ray CPU counts to compare (default 1,2)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs per worker count, in alternating order (1,2 then 2,1) against drifting load")
    p.add_argument("--job-sessions", type=int, default=10)
    p.add_argument("--job-encoders", type=int, default=7)
    p.add_argument("--job-trials", type=int, default=None, help="trials per session (default: the session's)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-node", type=int, default=32)
    p.add_argument("--gpu-iteration-ms", type=float, default=None,
                   help="one iteration of a 300-frame trial on a GPU node (bench this with --provider cuda "
                   "there); default: this machine's measured time")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="only redo the extrapolation from an earlier run's JSON (e.g. with --gpu-iteration-ms)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the JSON here")
    p.set_defaults(func=run)


def _noop() -> int:
    return 0


def _warm() -> int:
    """Import what a task imports, so the timed runs do not pay a worker's start-up."""
    import torch  # noqa: F401

    import neurocine.decoder.reconstruct.backends  # noqa: F401

    time.sleep(1.0)  # hold the CPU so the next warm-up lands on another worker
    return os.getpid()


def _serial(plan, settings) -> list[float]:
    from neurocine.decoder.cluster.jobs import run_unit

    out = []
    for (unit,) in plan:
        t0 = time.perf_counter()
        row = run_unit(unit, settings)
        if row["status"] != "done":
            raise SystemExit(f"bench batch: {unit.name}: {row.get('error')}")
        out.append(time.perf_counter() - t0)
    return out


def _same(dirs: list[Path], plan) -> bool:
    import numpy as np

    for (unit,) in plan:
        rel = unit.movie_path.relative_to(unit.out)
        movies = [np.load(d / rel) for d in dirs]
        metrics = [json.loads((d / rel).with_suffix(".json").read_text()) for d in dirs]
        if any(not np.array_equal(movies[0], m) for m in movies[1:]) or any(metrics[0] != m for m in metrics[1:]):
            return False
    return True


def extrapolate(task_s: float, merge_s: float, overhead_s: float, sessions: int, trials: int, encoders: int,
                gpus_per_node: int, cpus_per_node: int, nodes=(1, 2, 4, 8, 16),
                startup_s: float = 0.0) -> list[dict[str, Any]]:
    """Hours of a job on n GPU nodes: Ray's start-up (once, nodes in parallel), then waves of member tasks,
    one per GPU, each its task time plus Ray's per-task cost, then the merges in waves of the CPUs."""
    members, merges = sessions * trials * encoders, sessions * trials
    rows = []
    for n in nodes:
        member_waves = math.ceil(members / (n * gpus_per_node))
        merge_waves = math.ceil(merges / (n * cpus_per_node))
        seconds = startup_s + member_waves * (task_s + overhead_s) + merge_waves * (merge_s + overhead_s)
        rows.append({"nodes": n, "gpus": n * gpus_per_node, "hours": round(seconds / 3600, 3)})
    return rows


def extrapolation(result: dict[str, Any], args: argparse.Namespace, session_trials: int) -> dict[str, Any]:
    """The job's hours per node count from a run's measured costs (see the module docstring, item 4)."""
    frames = result["frames_per_trial"]
    it_s = result["iteration_s"] * 300 / frames if args.gpu_iteration_ms is None else args.gpu_iteration_ms / 1e3
    task_s = result["task_fixed_s"] + 1000 * it_s
    one = result["ray"].get("1", {})
    noop_s = statistics.median(one.get("noop_task_ms", [0.0])) / 1e3
    overhead_s = max(result.get("ray_overhead_per_task_s", 0.0), noop_s)  # the wall difference is noisy here
    startup_s = max(one.get("start_s", [0.0])) + max(one.get("worker_warmup_s", [0.0]))
    trials = args.job_trials or session_trials
    return {
        "job": f"{args.job_sessions} sessions x {trials} trials x {args.job_encoders} encoders, 1000 iterations",
        "task_s": round(task_s, 1),
        "iteration_source": "this machine" if args.gpu_iteration_ms is None else "--gpu-iteration-ms",
        "overhead_per_task_s": round(overhead_s, 4),
        "startup_s": round(startup_s, 2),
        "per_nodes": extrapolate(task_s, result["task_fixed_s"], overhead_s, args.job_sessions, trials,
                                 args.job_encoders, args.gpus_per_node, args.cpus_per_node, startup_s=startup_s),
    }


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        result["extrapolation"] = extrapolation(result, args, args.job_trials or result["trials"])
        print(json.dumps(result["extrapolation"]))
        return 0
    from neurocine.decoder.cluster.jobs import plan_units
    from neurocine.decoder.cluster.runner import gpus_per_task, import_ray, run_plan, start_ray
    from neurocine.decoder.reconstruct.models import default_models
    from neurocine.decoder.reconstruct.offline import DEFAULT_GRAD_BLUR
    from neurocine.streams.formats import load_session

    ray = import_ray()
    if ray.is_initialized():
        raise SystemExit("bench batch: starts its own Ray clusters; run it outside one")
    if args.session is None:
        from neurocine.streams.example import example_session_path

        args.session = str(example_session_path())
    model = args.model or default_models()[0]
    session = load_session(args.session)
    trials = [t.index for t in session.trials][: args.trials]
    frames = session.select_trials(trials[:1]).n_frames
    settings = dict(mode="offline", iterations=args.iterations, init="grey", lag=None, steps=None, warm_start=None,
                    ensemble=None, backend=args.backend, provider=args.provider, no_mask=False,
                    grad_blur=DEFAULT_GRAD_BLUR, threads=1, allow_other_mouse=False)
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))

    def plan(tag: str):
        return plan_units(args.session, "s", trials, [model], str(work / tag), "trial")

    log.info(f"{len(trials)} trials of {frames} frames, {args.iterations} iterations, in {work}")
    _serial(plan("warm"), {**settings, "iterations": 0})  # imports, caches
    zero = _serial(plan("zero"), {**settings, "iterations": 0})
    serial = _serial(plan("serial"), settings)
    iteration_s = statistics.median((s - z) / max(args.iterations, 1) for s, z in zip(serial, zero, strict=True))
    fixed_s = statistics.median(zero)
    recon_1000_s = fixed_s + 1000 * iteration_s * 300 / frames
    result: dict[str, Any] = {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "trials": len(trials),
        "frames_per_trial": frames,
        "iterations": args.iterations,
        "backend": args.backend,
        "serial_task_s": [round(s, 3) for s in serial],
        "task_fixed_s": round(fixed_s, 3),
        "iteration_s": round(iteration_s, 4),
        "reconstruction_300f_1000it_s": round(recon_1000_s, 1),
        "ray": {},
    }
    dirs = [work / "serial"]
    counts = [int(x) for x in args.workers.split(",")]
    order = [w for r in range(args.repeats) for w in (counts if r % 2 == 0 else counts[::-1])]
    for k, w in enumerate(order):
        t0 = time.perf_counter()
        start_ray(None, w)
        started = time.perf_counter() - t0
        warm = ray.remote(num_cpus=1)(_warm)
        ray.get([warm.remote() for _ in range(w)])
        warmed = time.perf_counter() - t0 - started
        noop = ray.remote(num_cpus=1)(_noop)
        trips = []
        for _ in range(20):
            t1 = time.perf_counter()
            ray.get(noop.remote())
            trips.append(time.perf_counter() - t1)
        gpus = gpus_per_task(args.backend, args.provider)
        t1 = time.perf_counter()
        rows = run_plan(plan(f"ray{w}-{k}"), settings, num_gpus=gpus, progress=False)
        wall = time.perf_counter() - t1
        ray.shutdown()
        failed = [r for r in rows if r["status"] != "done"]
        if failed:
            raise SystemExit(f"bench batch: {failed}")
        dirs.append(work / f"ray{w}-{k}")
        log.info(f"{w} worker(s): {wall:.1f} s, load {os.getloadavg()[0]:.1f}")
        run_ = result["ray"].setdefault(str(w), {"start_s": [], "worker_warmup_s": [], "noop_task_ms": [],
                                                 "wall_s": [], "cpu_share": []})
        run_["start_s"].append(round(started, 2))
        run_["worker_warmup_s"].append(round(warmed, 2))
        run_["noop_task_ms"].append(round(1e3 * statistics.median(trips), 2))
        run_["wall_s"].append(round(wall, 2))
        # CPU the tasks got / (wall x workers): 1 on a quiet machine, less when others take the cores
        run_.setdefault("task_cpu_s", []).append(round(sum(r["cpu_seconds"] for r in rows), 2))
        run_["cpu_share"].append(round(run_["task_cpu_s"][-1] / (wall * w), 3))
    runs = result["ray"]
    if "1" in runs and "2" in runs:
        result["speedup_2_vs_1_median"] = round(statistics.median(runs["1"]["wall_s"]) /
                                                statistics.median(runs["2"]["wall_s"]), 3)
        result["speedup_2_vs_1_best"] = round(min(runs["1"]["wall_s"]) / min(runs["2"]["wall_s"]), 3)
        # what an idle machine would show: the same tasks' CPU seconds with 1 and with 2 workers, each
        # worker given a whole core (cpu_share 1); it drops to < 2 when parallel tasks slow each other down
        cpu1, cpu2 = (statistics.median(runs[k]["task_cpu_s"]) for k in ("1", "2"))
        result["speedup_2_vs_1_idle_projection"] = round(2 * cpu1 / cpu2, 3)
    if "1" in runs:
        overhead = (min(runs["1"]["wall_s"]) - sum(serial)) / len(trials)
        result["ray_overhead_per_task_s"] = round(overhead, 3)
        result["ray_overhead_fraction_of_300f_1000it"] = round(max(overhead, 0) / recon_1000_s, 5)
        noop_s = statistics.median(runs["1"]["noop_task_ms"]) / 1e3
        result["noop_fraction_of_300f_1000it"] = round(noop_s / recon_1000_s, 9)
        result["worker_start_fraction_of_300f_1000it"] = round(max(runs["1"]["worker_warmup_s"]) / recon_1000_s, 6)
    result["same_outputs_bit_for_bit"] = _same(dirs, plan("serial"))
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["extrapolation"] = extrapolation(result, args, len(session.trials))
    from neurocine.streams.commandline import emit_json

    emit_json(result, args.json)
    return 0
