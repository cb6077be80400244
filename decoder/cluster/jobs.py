"""The work of `neurocine batch`, independent of Ray: the plan (sessions x trials x encoders -> units), the
output layout, resume checks, atomic writes, and the body of one unit (it calls `reconstruct`'s code).

Layout under OUT:
  batch.json                         the settings of the batch (a resumed batch must use the same)
  <session>/trial<k>.npy             uint8 (T, 36, 64) movie of trial k (the ensemble's, averaged)
  <session>/trial<k>.json            its metrics; written last, so its presence means "trial k finished"
  <session>/members/trial<k>.m<j>.npy  float32 movie of encoder j alone (offline ensembles, member grain)
  summary.json                       one row per unit: status, seconds, metrics or the error
Every file is written to a temporary name in its folder and renamed: a crash never leaves a file that
looks finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the reconstruction settings a batch passes to every unit (all of `reconstruct`'s options but the inputs)
SETTING_KEYS = ("mode", "iterations", "init", "lag", "steps", "warm_start", "ensemble", "backend", "provider",
                "no_mask", "grad_blur", "threads", "allow_other_mouse")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One task: a trial of a session with its encoders (member None), one encoder of them (member j), or
    the merge of the members' movies (kind 'merge')."""

    name: str
    session: str
    session_name: str
    trial: int
    models: tuple[str, ...]
    member: int | None
    out: str
    kind: str = "reconstruct"  # or "merge"

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.session_name

    @property
    def movie_path(self) -> Path:
        if self.member is not None:
            return self.folder / "members" / f"trial{self.trial}.m{self.member}.npy"
        return self.folder / f"trial{self.trial}.npy"

    @property
    def metrics_path(self) -> Path:
        return self.folder / f"trial{self.trial}.json"

    def finished(self) -> bool:
        if self.member is not None:
            return self.movie_path.is_file()
        return self.metrics_path.is_file() and self.movie_path.is_file()


class UnitError(RuntimeError):
    """Bad input for one unit (unreadable session, encoder that does not fit): fails it, not the batch."""


def session_names(sessions: Sequence[str]) -> dict[str, str]:
    """A stable folder name per session: its file stem, plus a hash of its path when two stems collide."""
    stems = [Path(s).stem for s in sessions]
    return {
        s: stem if stems.count(stem) == 1 else f"{stem}-{hashlib.sha1(str(Path(s).resolve()).encode()).hexdigest()[:6]}"
        for s, stem in zip(sessions, stems, strict=True)
    }


def model_name(spec: str) -> str:
    return Path(spec).name or spec


def plan_units(
    session: str, session_name: str, trials: Sequence[int], models: Sequence[str], out: str, grain: str
) -> list[list[Unit]]:
    """Per trial, its units: [whole ensemble] (grain 'trial', or one encoder), else one per encoder."""
    plan = []
    for k in trials:
        base = f"{session_name}/trial{k}"
        if grain == "trial" or len(models) == 1:
            plan.append([Unit(base, session, session_name, k, tuple(models), None, out)])
        else:
            plan.append([
                Unit(f"{base}/{model_name(m)}#{j}", session, session_name, k, tuple(models), j, out)
                for j, m in enumerate(models)
            ])
    return plan


def merge_unit(members: Sequence[Unit]) -> Unit:
    m = members[0]
    return dataclasses.replace(m, name=f"{m.session_name}/trial{m.trial}/average", member=None, kind="merge")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in SETTING_KEYS}


def check_batch_file(out: Path, settings: dict[str, Any], models: Sequence[str]) -> None:
    """Write OUT/batch.json, or check that a resumed batch uses the same settings and encoders."""
    record = {"settings": settings, "models": [str(Path(m).resolve()) if Path(m).exists() else m for m in models]}
    path = out / "batch.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != record:
            raise UnitError(
                f"{path} holds a batch with other settings or encoders ({old}); resume it with those, "
                "or write to another --out"
            )
        return
    atomic_write_text(path, json.dumps(record, indent=1))


# ------------------------------------------------------------------------------------------ atomic writes
def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(path: Path, array: np.ndarray) -> None:
    _atomic(path, lambda f: np.save(f, array))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


# ------------------------------------------------------------------------------------------- unit bodies
def _namespace(unit: Unit, settings: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(**settings, session=unit.session, trial=[unit.trial], model=list(unit.models))


def _load(unit: Unit, settings: dict[str, Any]):
    """(session of the one trial, LoadedModels of all the unit's encoders); bad input -> UnitError."""
    from neurocine.decoder.reconstruct.backends import BackendError
    from neurocine.decoder.reconstruct.cli import load_inputs
    from neurocine.streams.formats import FormatError

    args = _namespace(unit, settings)
    try:
        session, models = load_inputs(args, list(unit.models))
    except (FormatError, BackendError, OSError, ValueError) as e:
        raise UnitError(f"{unit.name}: {e}") from e
    if not session.trials:
        raise UnitError(f"{unit.name}: session {unit.session} has no trial {unit.trial}")
    return args, session, models


def run_unit(unit: Unit, settings: dict[str, Any]) -> dict[str, Any]:
    """Run one unit in this process and write its outputs; returns its summary row. Bad input is
    returned as status 'failed' (retrying cannot help); anything else raises (the scheduler retries)."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        row = _merge(unit, settings) if unit.kind == "merge" else _reconstruct(unit, settings)
    except UnitError as e:
        return {"name": unit.name, "status": "failed", "error": str(e)}
    row.update(name=unit.name, status="done", seconds=round(time.perf_counter() - start, 3),
               cpu_seconds=round(time.process_time() - cpu, 3))
    return row


def _reconstruct(unit: Unit, settings: dict[str, Any]) -> dict[str, Any]:
    from neurocine.decoder.reconstruct.backends import BackendError
    from neurocine.decoder.reconstruct.cli import reconstruct_part
    from neurocine.decoder.reconstruct.offline import ReconstructionError

    args, session, models = _member_models(unit, settings) if unit.member is not None else _load(unit, settings)
    try:
        info: dict[str, Any] = {}
        movie = reconstruct_part(models, session, args, info=info, mix=unit.member is None)
    except (ReconstructionError, BackendError) as e:
        raise UnitError(f"{unit.name}: {e}") from e
    if unit.member is not None:
        atomic_save(unit.movie_path, movie.astype(np.float32))
        return {"frames": int(movie.shape[0])}
    return _finish(unit, args, session, models, movie, info)


def _member_models(unit: Unit, settings: dict[str, Any]):
    """Encoder j alone, with the ensemble's alpha mask: `load_models` takes it beside the first model that is
    not the oracle, so load that one too (2 encoders per task, not all of them); the merge task, which loads
    them all, checks the rest of the ensemble."""
    spec = unit.models[unit.member]
    args, session, mine = _load(dataclasses.replace(unit, models=(spec,)), settings)
    first = next((m for m in unit.models if m != "oracle"), None)
    if first is None or first == spec:
        return args, session, mine
    _, _, ref = _load(dataclasses.replace(unit, models=(first,)), settings)
    if not np.array_equal(ref.columns, mine.columns):
        raise UnitError(f"{unit.name}: ensemble members map the session's neurons differently; use models of one mouse")
    return args, session, dataclasses.replace(mine, opt_mask=ref.opt_mask, eval_mask=ref.eval_mask, inverse=ref.inverse)


def _merge(unit: Unit, settings: dict[str, Any]) -> dict[str, Any]:
    """The ensemble's movie: the members' float movies averaged (as `reconstruct_offline` averages them)."""
    members = [dataclasses.replace(unit, member=j, kind="reconstruct") for j in range(len(unit.models))]
    missing = [m.movie_path.name for m in members if not m.movie_path.is_file()]
    if missing:
        raise UnitError(f"{unit.name}: member movies missing: {missing}")
    movie = np.mean([np.load(m.movie_path) for m in members], axis=0).astype(np.float32)
    args, session, models = _load(unit, settings)
    from neurocine.decoder.reconstruct.cli import merge_with_prior

    return _finish(unit, args, session, models, merge_with_prior(models, session, args, movie))


def _finish(unit: Unit, args: argparse.Namespace, session, models, movie: np.ndarray,
            info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the trial's uint8 movie, then its metrics JSON (the 'finished' mark)."""
    from neurocine.decoder.analysis.metrics import movie_metrics, response_correlation
    from neurocine.decoder.reconstruct.cli import as_uint8
    from neurocine.decoder.reconstruct.models import session_arrays
    from neurocine.decoder.reconstruct.offline import predict_movie

    atomic_save(unit.movie_path, as_uint8(movie))
    row: dict[str, Any] = {
        "session": unit.session,
        "trial": unit.trial,
        "models": list(unit.models),
        "mode": args.mode,
        "frames": int(movie.shape[0]),
    }
    if args.mode == "offline":
        row["iterations"] = args.iterations
    row.update(info or {})  # what was chosen: the start, the iteration counts with --iterations auto
    if session.stimulus is not None:
        responses, behaviour = session_arrays(session, models.columns)
        row.update(movie_metrics(session.stimulus, movie, None if args.no_mask else models.eval_mask))
        pred = predict_movie(models.ensemble, movie, behaviour)
        row["response_correlation"] = float(response_correlation(pred, responses))
    atomic_write_text(unit.metrics_path, json.dumps(row))
    return row
