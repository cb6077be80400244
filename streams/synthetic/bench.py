"""`neurocine bench rig`: time to generate one frame of the synthetic rig on ONE core.

The measurement runs in a child process started with OMP/OPENBLAS/MKL threads = 1 (BLAS reads them at
import), generating frames as fast as it can: stimulus, behaviour, model, spikes, calcium, deconvolution.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from neurocine.streams.commandline import get_logger
from neurocine.streams.summary import percentiles

EXAMPLE = "neurocine bench rig --neurons 8000 --seconds 10 --json out/bench-rig.json"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def register(bench_subparsers: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_subparsers, "rig", "synthetic rig: per-frame generation time on one core", EXAMPLE,
                 "Generate --seconds worth of 30 Hz frames of the synthetic mouse on one core and report "
                 "p50/p95/p99/max milliseconds per frame and whether it keeps up with 30 Hz (JSON).")
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--seconds", type=float, default=10.0, help="simulated seconds to generate (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the JSON here")
    p.set_defaults(func=run)


def measure(n_neurons: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    """Time every frame of the rig's generator (no publishing); this process's threads as they are."""
    import numpy as np

    from neurocine.streams.synthetic.mouse import make_mouse
    from neurocine.streams.synthetic.rig import live_frames

    t0 = time.perf_counter()
    mouse = make_mouse(seed, n_neurons)
    mouse.spatial_filters()
    build_s = time.perf_counter() - t0
    frames = live_frames(mouse)
    for _ in range(10):  # warm-up
        next(frames)
    n = max(1, round(seconds * mouse.fps))
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        next(frames)
        times[i] = time.perf_counter() - t
    ms = times * 1e3
    budget = 1e3 / mouse.fps
    per_frame = {"mean": round(float(ms.mean()), 3), **percentiles(ms)}
    return {
        "bench": "rig", "neurons": n_neurons, "frames": n, "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "build_mouse_s": round(build_s, 3),
        "ms_per_frame": per_frame,
        "budget_ms": round(budget, 3),
        "keeps_30hz": per_frame["p99"] < budget,
        "frames_over_budget": int((ms > budget).sum()),
    }


def run(args: argparse.Namespace) -> int:
    from neurocine.streams.commandline import emit_json

    if args.neurons < 1 or args.seconds <= 0:
        raise ValueError(f"--neurons must be >= 1 and --seconds > 0, got {args.neurons}, {args.seconds}")
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    cmd = [sys.executable, "-m", "neurocine.streams.synthetic.bench", str(args.neurons), str(args.seconds),
           str(args.seed)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        get_logger("bench.rig").error(proc.stderr.strip())
        return proc.returncode
    emit_json(json.loads(proc.stdout), args.json)
    return 0


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))))
