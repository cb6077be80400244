"""`neurocine bench replay-memory`: peak resident memory of `neurocine replay` against the size of the folder.

For each trial count, a mouse in the Sensorium release's layout (float64 fields, N neurons, 300-frame trials,
the release's tier proportions, so about half the trials are placeholder test tiers the replay skips) is written
into a temporary folder by `formats.sensorium.release`; `neurocine replay FOLDER --speed 0` then runs in its own
process into a subscriber in this one, and its peak RSS (ru_maxrss from wait4, the kernel's own count) is
reported with the folder's size. The folder is deleted after each row unless --keep. A replay that reads one
trial at a time stays flat in the folder's size; one that loads the folder grows with it (a release mouse:
~13 GB of float64). Numbers depend on the machine only through the Python and library footprint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: What a replay may hold resident, whatever the folder (the target for a 700-trial 8,000-neuron mouse).
TARGET_MB = 500


def register(bench_sub: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "replay-memory",
                 "peak RSS of `neurocine replay` of release-layout folders of growing size (flat = streamed)",
                 "neurocine bench replay-memory --trials 10,100,700 --neurons 8000 --json out/replay_memory.json\n"
                 "neurocine bench replay-memory --trials 10,40 --neurons 2000 --dir /scratch   # a quick look")
    p.add_argument("--trials", default="10,100,700", help="trial counts, one folder each (default 10,100,700)")
    p.add_argument("--neurons", type=int, default=8000, help="neurons (default 8000, a release mouse)")
    p.add_argument("--frames", type=int, default=300, help="frames each trial is stored at (default 300)")
    p.add_argument("--dir", default=None, help="where the folders are written (default: the system's temp dir; "
                   "a 700-trial 8,000-neuron folder takes ~17 GB)")
    p.add_argument("--keep", action="store_true", help="keep the folders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(func=run)


def peak_rss_mb(cmd: list[str]) -> tuple[float, int, str, str]:
    """Run `cmd`, return (its peak RSS in MB, exit status, stdout, stderr); the peak is the kernel's ru_maxrss of
    that one child (wait4), not of this process or of other children."""
    env = {k: v for k, v in os.environ.items() if k != "NEUROCINE_KEYS"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return usage.ru_maxrss / 1024, proc.returncode, out.read(), err.read()


def _replay_peak(folder: Path) -> dict[str, Any]:
    """Replay `folder` flat out into a subscriber here; the replay's peak RSS and what arrived."""
    import json
    import socket

    from neurocine.streams.protocol import End, Frame
    from neurocine.streams.transport import Subscriber

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "NEUROCINE_KEYS"}
    cmd = [sys.executable, "-m", "neurocine", "replay", str(folder), "--speed", "0", "--bind", endpoint,
           "--wait-subscribers", "1", "--log-level", "warning"]
    frames = 0
    t0 = time.perf_counter()
    with Subscriber(endpoint) as sub, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        ended, exited, quiet_since = False, None, None
        while not (exited and (ended or time.monotonic() - quiet_since > 2.0)):
            if exited is None:  # wait4 reaps the replay itself, so its rusage is its own (Popen.poll would reap it)
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                exited = (status, usage) if pid else None
                quiet_since = time.monotonic()
            msg = sub.recv(timeout_s=0.2)
            if isinstance(msg, Frame):
                frames += 1
                quiet_since = time.monotonic()
            elif isinstance(msg, End):
                ended = True
        status, usage = exited
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise SystemExit(f"bench replay-memory: replay of {folder} failed ({code}): {stderr[-2000:]}")
    report = json.loads(stdout)
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "frames_received": frames,
            "frames_published": report["replay"]["frames"], "trials_replayed": report["read"]["trials_read"],
            "cuts": report["replay"]["cuts"], "seconds": round(time.perf_counter() - t0, 1)}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> int:
    from neurocine.streams.commandline import emit_json, get_logger
    from neurocine.streams.formats.sensorium.release import EXAMPLE_MOUSE, write_release_like

    log = get_logger("bench")
    counts = [int(x) for x in args.trials.split(",") if x.strip()]
    base = Path(tempfile.mkdtemp(prefix="neurocine-replay-memory-", dir=args.dir))
    idle, _, _, _ = peak_rss_mb([sys.executable, "-c", "import neurocine.streams.cli, numpy, zmq"])
    rows = []
    try:
        for n in counts:
            folder = base / f"{n}" / EXAMPLE_MOUSE
            t0 = time.perf_counter()
            write_release_like(folder, n, args.neurons, seed=args.seed, frames=args.frames, short_fraction=0.05,
                               statistics=False)
            size = folder_bytes(folder)
            written = time.perf_counter() - t0
            log.info(f"{n} trials x {args.neurons} neurons: {size / 1e9:.2f} GB written in {written:.0f} s; replaying")
            row = {"trials": n, "folder_gb": round(size / 1e9, 3), "write_seconds": round(written, 1),
                   **_replay_peak(folder)}
            log.info(f"{n} trials: peak RSS {row['peak_rss_mb']} MB, {row['frames_received']} frames in "
                     f"{row['seconds']} s")
            rows.append(row)
            if not args.keep:
                shutil.rmtree(folder.parent)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    peaks = [r["peak_rss_mb"] for r in rows]
    result = {
        "neurons": args.neurons,
        "frames_per_trial": args.frames,
        "layout": "Sensorium release: float64, placeholder test tiers (skipped), no neurocine files",
        "python_and_imports_mb": round(idle, 1),
        "rows": rows,
        "peak_rss_spread_mb": round(max(peaks) - min(peaks), 1) if peaks else None,
        "target_mb": TARGET_MB,
        "within_target": bool(peaks) and max(peaks) <= TARGET_MB,
        "how": "ru_maxrss of the replay process (os.wait4), replay --speed 0 into one subscriber",
        "kept": str(base) if args.keep else None,
    }
    emit_json({"replay_memory": result}, args.json)
    return 0
