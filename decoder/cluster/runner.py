"""Run units as Ray tasks: an embedded local cluster or an existing one, retries, progress, a summary.

Ray is imported here only (the `cluster` extra); nothing in `streams/` or the rig's decode path imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from neurocine.decoder.cluster.jobs import Unit, merge_unit, run_unit
from neurocine.streams.commandline import Progress


class ClusterError(RuntimeError):
    """Ray is missing or the cluster cannot be reached."""


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ClusterError(f"this needs Ray: pip install 'neurocine[cluster]' ({e})") from e
    return ray


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address`, or start an embedded local cluster of `num_cpus` (no dashboard). Returns whether
    this call started it (then the caller shuts it down); an already initialised Ray is reused."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot start or reach the Ray cluster {address or '(local)'}: {e}") from e
    return True


def gpus_per_task(backend: str, provider: str, requested: float | None = None) -> float:
    """GPUs a task asks for: `requested`, else 1 with --provider cuda, or with 'auto' when the cluster has GPUs
    (either backend then runs on one)."""
    if requested is not None:
        return requested
    if provider == "cuda":
        return 1.0
    if provider == "auto":
        return 1.0 if import_ray().cluster_resources().get("GPU", 0) > 0 else 0.0
    return 0.0


class TaskProgress:
    """Tasks finished so far, as one progress line (neurocine.streams.commandline.Progress), the last task beside it."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done = total, 0
        self._report = Progress("batch", total, unit="task") if enabled else None

    def update(self, name: str, status: str) -> None:
        self.done += 1
        if self._report is not None:
            self._report(self.done, last=f"{status}: {name}")

    def close(self) -> None:
        if self._report is not None:
            self._report.close()


def _error_text(err: BaseException) -> str:
    """The last line of a task's traceback, or the kind of crash."""
    text = str(err).strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:500]


def run_plan(
    trials: Iterable[list[Unit]],
    settings: dict[str, Any],
    *,
    max_retries: int = 2,
    num_gpus: float = 0.0,
    progress: bool = True,
    unit_fn: Callable[[Unit, dict[str, Any]], dict[str, Any]] = run_unit,
) -> list[dict[str, Any]]:
    """Run every unfinished unit of `trials` (per trial: its units; several = ensemble members, merged when
    all are done) on the connected Ray cluster; one row per unit, failures included, nothing raised."""
    ray = import_ray()
    task = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=max_retries, retry_exceptions=True)(unit_fn)
    rows: list[dict[str, Any]] = []
    pending: dict[Any, Unit] = {}
    waiting: dict[str, list[Unit]] = {}  # merge name -> members not yet finished
    merges: dict[str, Unit] = {}
    total = 0
    for members in trials:
        final = members[0] if len(members) == 1 else merge_unit(members)
        if final.finished():
            rows.append({"name": final.name, "status": "skipped"})
            continue
        todo = [m for m in members if not m.finished()]
        rows += [{"name": m.name, "status": "skipped"} for m in members if m not in todo]
        if len(members) > 1:
            merges[final.name], waiting[final.name] = final, list(todo)
            total += 1
        for m in todo:
            pending[task.remote(m, settings)] = m
        total += len(todo)
        if len(members) > 1 and not todo:
            pending[task.remote(final, settings)] = final
    bar = TaskProgress(total, progress)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # a timeout lets signals through
        if not ready:
            continue
        unit = pending.pop(ready[0])
        ref = ready[0]
        try:
            row = ray.get(ref)
        except Exception as e:  # a crash or an exception that outlived its retries
            row = {"name": unit.name, "status": "failed", "error": f"{type(e).__name__}: {_error_text(e)}"}
        rows.append(row)
        bar.update(unit.name, row["status"])
        parent = next((k for k, v in waiting.items() if unit in v), None)
        if parent is None:
            continue
        if row["status"] != "done":
            del waiting[parent]
            rows.append({"name": parent, "status": "failed", "error": f"member {unit.name} failed"})
            bar.update(parent, "failed")
            continue
        waiting[parent].remove(unit)
        if not waiting[parent]:
            del waiting[parent]
            pending[task.remote(merges[parent], settings)] = merges[parent]
    bar.close()
    return rows


def summarise(rows: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    count = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    return {
        "tasks": len(rows),
        **count,
        "seconds": round(seconds, 2),
        "failed_names": [r["name"] for r in rows if r["status"] == "failed"],
        "rows": list(rows),
    }
