"""`neurocine bench encoder`: time per window of the encoder's forward and forward+gradient passes, for each
preset, in torch and in ONNX Runtime (the exported graphs), on the CPU or a GPU.

A window is 32 frames (two 16-frame passes: even and odd frames); times are medians over --repeats runs
after one warm-up, for --batch windows per call. The provider that actually ran is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from neurocine.streams.commandline import get_logger

log = get_logger("bench.encoder")

EXAMPLE = """example:
  neurocine bench encoder --presets tiny,small --json bench_encoder.json
  neurocine bench encoder --presets dwiseneuro --device cuda --neurons 8000
  neurocine bench encoder --presets tiny --neurons 1000,8000 --threads 1 --no-torch   # cost of 8x the neurons
  neurocine bench encoder --profile                 # where one live step's time goes (built-in model)
"""


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    p = bench_subparsers.add_parser(
        "encoder",
        help="forward and gradient time per window, torch vs ONNX Runtime, per preset",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--presets", default="tiny,small,dwiseneuro", help="comma-separated presets")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--neurons", default="8000", help="neurons of the benchmarked mouse, or several "
                   "(e.g. 1000,8000: timed in turn, with each count's gradient time as a ratio to the smallest)")
    p.add_argument("--readout", default=None, choices=("point", "gaussian", "pooled"),
                   help="readout of every preset (default: each preset's own; 'gaussian' = the dense blob)")
    p.add_argument("--batch", type=int, default=1, help="windows per call (default 1)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime (default 2)")
    p.add_argument("--no-torch", action="store_true", help="time ONNX Runtime only")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the JSON here")
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead: profile live decode steps of --model (ORT per-operator time, ORT per-call overhead, "
        "numpy around it) on the CPU provider",
    )
    p.add_argument("--model", default=None, help="exported model folder for --profile (default: built-in)")
    p.add_argument("--frames", type=int, default=40, help="frames profiled by --profile (default 40)")
    p.add_argument("--steps", type=int, default=2, help="optimiser steps per frame for --profile (default 2)")
    p.set_defaults(func=run)


def _median_ms(fn: Any, repeats: int, sync: Any = None) -> float:
    import numpy as np

    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1e3, 3)


def _interleaved_ms(calls: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median ms of each call, timed in turn (call a, b, c, a, b, c, ...): on a shared machine the load then
    weighs on every call alike, so their ratios hold even where the absolute times drift."""
    import numpy as np

    for fn in calls.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: round(float(np.median(v)) * 1e3, 3) for k, v in times.items()}


def build_variant(name: str, neurons: int, readout: str | None, batch: int):  # -> (frozen Encoder, inputs)
    """A seeded random encoder of preset `name` (readout kind overridable) with calibrated BatchNorms."""
    import torch

    from neurocine.decoder.encoder import export as E
    from neurocine.decoder.encoder.model import build_encoder, calibrate_batchnorm
    from neurocine.decoder.encoder.presets import get_preset
    from neurocine.decoder.encoder.samples import behaviour, random_smooth_movies

    cfg = get_preset(name)
    if readout:
        cfg = cfg.replace(readout=readout)
    enc = build_encoder(cfg, {MOUSE: neurons}, seed=0)
    video = torch.from_numpy(random_smooth_movies(batch, enc.config.window, seed=0))
    beh = torch.from_numpy(behaviour(batch, enc.config.window, seed=0))
    enc.stats[MOUSE].behaviour_mean.copy_(beh.mean(dim=(0, 1)))
    enc.stats[MOUSE].behaviour_std.copy_(beh.std(dim=(0, 1)).clamp_min(1e-3))
    calibrate_batchnorm(enc, [(video, beh)], MOUSE)
    enc = E.frozen_copy(enc)
    ex = E.example_inputs(enc, MOUSE, batch)
    ex["video"], ex["behaviour"] = video, beh
    return enc, ex


MOUSE = "bench"


def bench_preset(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every neuron count of one preset (and readout): torch per variant, then ONNX Runtime interleaved."""
    import torch

    from neurocine.decoder.encoder import export as E
    from neurocine.decoder.encoder.model import count_parameters

    result: dict[str, Any] = {}
    calls: dict[str, Any] = {}
    for neurons in args.neuron_counts:
        enc, ex = build_variant(name, neurons, args.readout, args.batch)
        entry: dict[str, Any] = {
            "readout": enc.config.readout,
            "parameters": {"core": count_parameters(enc.core), "cortex": count_parameters(enc.cortex),
                           "readout": count_parameters(enc.readouts[MOUSE])},
            "window": enc.config.window,
            "frame_layout": enc.config.frame_layout,
        }
        result[str(neurons)] = entry
        if not args.no_torch:
            device = torch.device(args.device)
            if args.device == "cuda" and not torch.cuda.is_available():
                entry["torch"] = {"error": "torch sees no CUDA device (CPU-only build or no GPU)"}
            else:
                model = enc.to(device)
                t = {k: v.to(device) for k, v in ex.items()}
                sync = torch.cuda.synchronize if args.device == "cuda" else None
                fwd = E.forward_function(model, MOUSE)
                grad = E.gradient_function(model, MOUSE)

                def forward(fwd: Any = fwd, t: dict = t) -> None:
                    with torch.no_grad():
                        fwd(t["video"], t["behaviour"])

                def gradient(grad: Any = grad, t: dict = t) -> None:
                    grad(*(t[k] for k in E.GRADIENT_INPUTS))

                entry["torch"] = {
                    "device": str(device),
                    "forward_ms": _median_ms(forward, args.repeats, sync),
                    "gradient_ms": _median_ms(gradient, args.repeats, sync),
                }
                enc = enc.cpu()
        t0 = time.perf_counter()
        paths = E.export_mouse(enc, MOUSE, workdir / f"{name}-{neurons}")
        ort_result: dict[str, Any] = {"export_s": round(time.perf_counter() - t0, 1)}
        entry["onnxruntime"] = ort_result
        feeds = {k: v.cpu().numpy() for k, v in ex.items()}
        for graph in ("forward", "gradient"):
            try:
                session = E.onnx_session(paths[graph], args.device, threads=args.threads)
            except (RuntimeError, ValueError) as err:
                ort_result["error"] = str(err)
                break
            inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
            calls[f"{neurons}:{graph}"] = lambda s=session, i=inputs: s.run(None, i)
            ort_result["providers"] = session.get_providers()
        ort_result["provider"] = (ort_result.get("providers") or ["none"])[0]
        if "readout_kept" in json.loads(paths["meta"].read_text()):
            ort_result["readout_kept"] = json.loads(paths["meta"].read_text())["readout_kept"]
    for key, ms in _interleaved_ms(calls, args.repeats).items():
        neurons, graph = key.split(":")
        result[neurons]["onnxruntime"][f"{graph}_ms"] = ms
    base = str(min(args.neuron_counts))
    for neurons, entry in result.items():
        ort, ref = entry["onnxruntime"], result[base]["onnxruntime"]
        if neurons != base and "gradient_ms" in ort and "gradient_ms" in ref:
            entry["gradient_vs_" + base] = round(ort["gradient_ms"] / ref["gradient_ms"], 2)
    return result


def run_profile(args: argparse.Namespace) -> int:
    """--profile: one JSON report on stdout, a readable table on stderr."""
    import onnxruntime

    from neurocine.decoder.bench.profile_step import profile_step, render
    from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR

    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if args.frames < 1 or args.steps < 1:
        log.error("--frames and --steps must be >= 1")
        return 2
    from neurocine.decoder.reconstruct.backends import BackendError

    with tempfile.TemporaryDirectory(prefix="neurocine-profile-") as tmp:
        try:
            result = profile_step(model, frames=args.frames, steps=args.steps, threads=args.threads, workdir=tmp)
        except BackendError as err:
            log.error(str(err))
            return 2
    result = {"bench": "encoder-profile", "onnxruntime": onnxruntime.__version__,
              "platform": platform.platform(), **result}  # fmt: skip
    log.info("per-operator profile:\n" + render(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.profile:
        return run_profile(args)
    import onnxruntime
    import torch

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    from neurocine.decoder.encoder.presets import PRESETS

    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        log.error(f"unknown presets {unknown}; known: {', '.join(PRESETS)}")
        return 2
    try:
        args.neuron_counts = sorted({int(n) for n in str(args.neurons).split(",") if n.strip()})
    except ValueError:
        log.error(f"--neurons {args.neurons!r}: a count or comma-separated counts")
        return 2
    if args.batch < 1 or args.repeats < 1 or not args.neuron_counts or min(args.neuron_counts) < 1:
        log.error("--batch, --repeats and --neurons must be >= 1")
        return 2
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "bench": "encoder",
        "device": args.device,
        "threads": args.threads,
        "neurons": args.neuron_counts,
        "readout": args.readout or "each preset's own",
        "batch": args.batch,
        "repeats": args.repeats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "unit": "milliseconds per call of --batch windows (32 frames each); presets -> neurons -> times",
        "presets": {},
    }
    with tempfile.TemporaryDirectory(prefix="neurocine-bench-") as tmp:
        for name in presets:
            log.info(f"{name} ...")
            report["presets"][name] = bench_preset(name, args, Path(tmp))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
