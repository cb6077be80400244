"""`neurocine bridge`: an offline pipeline as a live stream, each per-trial .npy of traces published as it appears.

Many labs already have a pipeline (suite2p, CaImAn, their own) that writes one traces file per trial.
The bridge watches that folder and publishes each new trial, frame by frame at the frame rate, with
`neurocine.streams.publish.RigPublisher` (headers, heartbeats and sequence numbers are handled there).

Files: FOLDER/<name>.npy, float traces of shape (N, T) (the Sensorium `responses/{i}.npy` layout; use
--time-first for (T, N)), taken in natural order (2.npy before 10.npy). A file is published once it
is complete (its size equals what its .npy header announces) and that size has not changed between two
polls, so a file still being written is waited for, never read half-way.
Optional behaviour: --behaviour-dir D with D/<name>.npy of shape (4, T) (running speed, pupil dilation,
pupil x, pupil y). A bad file (wrong N, pickled objects, +-Inf) is skipped with a message naming it;
the stream goes on. It stops when FOLDER/DONE exists and every
file is published, after --idle-timeout seconds without a new file, or on Ctrl-C; then it prints a JSON
summary.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import DEFAULT_PUB, add_verb, emit_json, get_logger, stop_on_sigterm
from neurocine.streams.publish import RigPublisher

log = get_logger("bridge")

POLL_S = 0.1


def natural_key(path: Path) -> list:
    """'trial10' after 'trial2': digits compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def npy_complete(path: Path) -> bool:
    """True when the file holds all the bytes its .npy header announces (False while still written)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError):
        return False
    if dtype.hasobject:
        return True  # complete or not, load_trial refuses it with a clear message
    return path.stat().st_size >= offset + int(np.prod(shape)) * dtype.itemsize


class FolderWatcher:
    """Yields files of FOLDER once they are complete (full size per their header, stable across two polls)."""

    def __init__(self, folder: Path, exclude: set[Path]) -> None:
        self.folder = folder
        self.exclude = {p.resolve() for p in exclude}
        self.done: set[Path] = set()
        self._sizes: dict[Path, int] = {}

    def ready(self) -> list[Path]:
        out = []
        for p in sorted(self.folder.glob("*.npy"), key=natural_key):
            if p in self.done or p.resolve() in self.exclude or p.name.startswith("."):
                continue
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            if self._sizes.get(p) == size and size > 0 and npy_complete(p):
                out.append(p)
            self._sizes[p] = size
        return out

    def finished(self) -> bool:
        return (self.folder / "DONE").exists()


def load_trial(path: Path, n_neurons: int, time_first: bool,
               behaviour_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(traces (T, N), behaviour (T, 4)); ValueError naming the file if anything is off."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path.name}: not a readable numeric .npy ({e})") from e
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path.name}: expected a 2-D numeric array, got {arr.dtype} {arr.shape}")
    traces = arr if time_first else arr.T
    if traces.shape[1] != n_neurons:
        raise ValueError(f"{path.name}: {traces.shape[1]} neurons per frame, the session has {n_neurons} "
                         f"(shape {arr.shape}; --time-first is {'on' if time_first else 'off'})")
    if np.isinf(traces).any():
        raise ValueError(f"{path.name}: holds infinite values")
    behaviour = np.full((traces.shape[0], 4), np.nan, np.float32)
    if behaviour_dir is not None and (behaviour_dir / path.name).is_file():
        b = np.load(behaviour_dir / path.name, allow_pickle=False)
        if b.shape != (4, traces.shape[0]):
            raise ValueError(f"{behaviour_dir / path.name}: behaviour must be (4, {traces.shape[0]}), got {b.shape}")
        behaviour = np.ascontiguousarray(b.T, dtype=np.float32)
    return np.ascontiguousarray(traces, dtype=np.float32), behaviour


EXAMPLE = """\
neurocine bridge /data/M12/responses --neuron-ids /data/M12/meta/neurons/unit_ids.npy --mouse M12 --rate 30
neurocine bridge /data/M12/responses --neuron-ids ids.npy --mouse M12 --bind tcp://*:5555 --keys keys/
"""


def register(sub: Any) -> None:
    p = add_verb(sub, "bridge", "publish the per-trial .npy traces an offline pipeline writes into a folder, as "
                 "they appear", EXAMPLE, description=__doc__)
    p.add_argument("folder", type=Path, help="folder the pipeline writes per-trial .npy traces into")
    p.add_argument("--neuron-ids", type=Path, required=True, help=".npy of N unique integer neuron ids")
    p.add_argument("--mouse", required=True, help="mouse id (decoders pick their model by it)")
    p.add_argument("--rate", type=float, default=30.0, help="frame rate in Hz (default 30)")
    p.add_argument("--bind", default=DEFAULT_PUB, help=f"ZeroMQ endpoint to publish on (default {DEFAULT_PUB})")
    p.add_argument("--speed", type=float, default=1.0, help="1 = frame rate, 0 = as fast as possible")
    p.add_argument("--time-first", action="store_true", help="files are (T, N) instead of (N, T)")
    p.add_argument("--behaviour-dir", type=Path, help="folder of (4, T) behaviour .npy files, same names")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after S seconds without a new file")
    p.add_argument("--wait-subscribers", type=int, default=0, metavar="N", help="wait for N subscribers first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    if not args.folder.is_dir():
        log.error(f"{args.folder} is not a folder")
        return 2
    ids = np.load(args.neuron_ids, allow_pickle=False)
    summary: dict = {"files": 0, "frames": 0, "skipped": {}}
    watcher = FolderWatcher(args.folder, exclude={args.neuron_ids})
    period = 0.0 if args.speed <= 0 else 1.0 / (args.rate * args.speed)
    try:
        with RigPublisher(args.bind, ids, args.rate, args.mouse) as rig:
            summary["session_id"] = rig.session_id
            if args.wait_subscribers:
                rig.wait_subscribers(args.wait_subscribers)
            log.info(f"watching {args.folder} -> {rig.endpoint} ({rig.n_neurons} neurons, {args.rate:g} Hz)")
            last_new = time.monotonic()
            next_t = time.monotonic()
            while True:
                ready = watcher.ready()
                if not ready:
                    if watcher.finished() and not any(p not in watcher.done for p in args.folder.glob("*.npy")
                                                      if p.resolve() not in watcher.exclude):
                        break
                    if args.idle_timeout is not None and time.monotonic() - last_new > args.idle_timeout:
                        break
                    time.sleep(POLL_S)
                    continue
                for path in ready:
                    watcher.done.add(path)
                    last_new = time.monotonic()
                    try:
                        traces, behaviour = load_trial(path, rig.n_neurons, args.time_first, args.behaviour_dir)
                    except ValueError as e:
                        summary["skipped"][path.name] = str(e)
                        log.info(f"skipped {e}")
                        continue
                    next_t = max(next_t, time.monotonic())
                    for t in range(traces.shape[0]):
                        while (left := next_t - time.monotonic()) > 0:
                            time.sleep(min(left, 0.005))
                        rig.publish(traces[t], behaviour[t])
                        next_t += period
                    summary["files"] += 1
                    summary["frames"] += traces.shape[0]
                    log.info(f"{path.name}: {traces.shape[0]} frames")
            summary["dropped"] = rig.dropped
    except KeyboardInterrupt:
        summary["interrupted"] = True
    emit_json({"bridge": summary})
    return 0
