"""`neurocine bench encoder --profile`: where one live decode step's time goes.

Drives the streaming optimiser (StreamingReconstructor, the live service's loop) with an exported model
on ONNX Runtime, fed random responses, and splits each frame's compute into:
- ORT kernels, per operator type (ONNX Runtime's own profiler: SessionOptions.enable_profiling, its JSON
  parsed here; a kernel's time is its `*_kernel_time` event);
- ORT per-call overhead: wall time inside session.run minus the kernels it ran (input checks, allocation,
  copies, thread hand-offs);
- numpy around it: the rest of the frame (window gathering, per-window normalisation, blur, the
  optimiser update).
Times are per frame (each frame runs `steps` optimiser steps) and per session.run call.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


class _TimedRun:
    """Wraps an InferenceSession's run (and run_with_iobinding) to add up the wall time spent inside."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.seconds = 0.0
        self.calls = 0
        for name in ("run", "run_with_iobinding"):
            inner = getattr(session, name, None)
            if inner is not None:
                setattr(session, name, self._wrap(inner))

    def _wrap(self, inner: Any) -> Any:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return timed


def parse_ort_profile(path: str | Path, skip_runs: int = 0) -> dict[str, Any]:
    """Per-operator-type kernel time (ms, summed) and run count from an ONNX Runtime profile JSON, after
    dropping the first `skip_runs` model runs (warm-up)."""
    events = json.loads(Path(path).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[skip_runs]["ts"] if len(runs) > skip_runs else 0
    runs = runs[skip_runs:]
    per_op: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op[op] += e["dur"] / 1e3
        count[op] += 1
    return {
        "runs": len(runs),
        "model_run_ms": sum(e["dur"] for e in runs) / 1e3,
        "kernel_ms": float(sum(per_op.values())),
        "per_op_ms": dict(per_op),
        "per_op_kernels": dict(count),
    }


def profile_step(
    model: str | Path,
    *,
    frames: int = 40,
    warmup: int = 40,
    steps: int = 2,
    threads: int = 1,
    seed: int = 0,
    workdir: str | Path,
) -> dict[str, Any]:
    """Profile `frames` live frames (after `warmup` frames that fill the window) of one exported model."""
    from neurocine.decoder.reconstruct.backends import OrtBackend
    from neurocine.decoder.reconstruct.streaming import StreamingConfig, StreamingReconstructor

    backend = OrtBackend(model, providers=("CPUExecutionProvider",), threads=threads,
                         profile_prefix=str(Path(workdir) / "ort"))  # fmt: skip
    timed = _TimedRun(backend.ort_session)
    cfg = StreamingConfig(steps=steps)
    rec = StreamingReconstructor(backend, cfg)
    rng = np.random.default_rng(seed)
    n = backend.n_neurons
    resp = rng.gamma(1.0, 1.0, (warmup + frames, n)).astype(np.float32)
    beh = rng.normal(0.0, 1.0, (warmup + frames, 4)).astype(np.float32)
    for t in range(warmup):
        rec.push(resp[t], beh[t])
    calls0 = timed.calls
    timed.seconds = 0.0
    t0 = time.perf_counter()
    for t in range(warmup, warmup + frames):
        rec.push(resp[t], beh[t])
    total = time.perf_counter() - t0
    calls = timed.calls - calls0
    prof = parse_ort_profile(backend.ort_session.end_profiling(), skip_runs=calls0)
    inside = timed.seconds
    per_frame = 1.0 / frames  # ms quantities -> ms per frame
    ops = sorted(prof["per_op_ms"].items(), key=lambda kv: -kv[1])
    return {
        "model": str(model),
        "graph": backend.name,
        "graph_nodes": graph_nodes(backend.path),
        "threads": threads,
        "steps_per_frame": steps,
        "frames": frames,
        "calls_per_frame": round(calls / frames, 3),
        "graph_batch": "dynamic" if backend.batch is None else backend.batch,
        "unit": "ms per frame (all its steps); per_call: ms per session.run",
        "frame_ms": round(total * 1e3 * per_frame, 3),
        "ort_kernels_ms": round(prof["kernel_ms"] * per_frame, 3),
        "ort_call_overhead_ms": round((inside * 1e3 - prof["kernel_ms"]) * per_frame, 3),
        "numpy_around_ms": round((total - inside) * 1e3 * per_frame, 3),
        "per_call_ms": round(inside * 1e3 / max(calls, 1), 3),
        "per_op_ms": {k: round(v * per_frame, 3) for k, v in ops},
        "per_op_kernels_per_frame": {k: round(prof["per_op_kernels"][k] / frames, 1) for k, _ in ops},
    }


def graph_nodes(path: str | Path) -> dict[str, Any]:
    """Node count of an ONNX graph, by operator type (the top ones)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    count = collections.Counter(node.op_type for node in model.graph.node)
    return {"total": sum(count.values()), "top": dict(count.most_common(8))}


def render(result: dict[str, Any]) -> str:
    """A short human-readable table of one profile (for stderr)."""
    lines = [
        f"profile of {result['graph']} ({result['graph_nodes']['total']} nodes), {result['threads']} thread(s), "
        f"{result['steps_per_frame']} steps/frame, {result['calls_per_frame']} session.run/frame",
        f"  frame           {result['frame_ms']:8.2f} ms",
        f"  ORT kernels     {result['ort_kernels_ms']:8.2f} ms",
        f"  ORT overhead    {result['ort_call_overhead_ms']:8.2f} ms  (inside session.run, outside kernels)",
        f"  numpy around    {result['numpy_around_ms']:8.2f} ms",
        "  top operators (ms per frame):",
    ]
    for op, ms in list(result["per_op_ms"].items())[:10]:
        lines.append(f"    {op:16s} {ms:8.2f}  ({result['per_op_kernels_per_frame'][op]:.0f} kernels)")
    return "\n".join(lines)
