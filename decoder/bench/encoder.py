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
    p.add_argument("--neurons", type=int, default=8000, help="neurons of the benchmarked mouse (default 8000)")
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


def bench_preset(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch

    from neurocine.decoder.encoder import export as E
    from neurocine.decoder.encoder.model import build_encoder, calibrate_batchnorm, count_parameters
    from neurocine.decoder.encoder.presets import get_preset
    from neurocine.decoder.encoder.samples import behaviour, random_smooth_movies

    mouse = "bench"
    enc = build_encoder(get_preset(name), {mouse: args.neurons}, seed=0)
    video = torch.from_numpy(random_smooth_movies(args.batch, enc.config.window, seed=0))
    beh = torch.from_numpy(behaviour(args.batch, enc.config.window, seed=0))
    enc.stats[mouse].behaviour_mean.copy_(beh.mean(dim=(0, 1)))
    enc.stats[mouse].behaviour_std.copy_(beh.std(dim=(0, 1)).clamp_min(1e-3))
    calibrate_batchnorm(enc, [(video, beh)], mouse)
    enc = E.frozen_copy(enc)
    ex = E.example_inputs(enc, mouse, args.batch)
    ex["video"], ex["behaviour"] = video, beh
    result: dict[str, Any] = {
        "parameters": {
            "core": count_parameters(enc.core),
            "cortex": count_parameters(enc.cortex),
            "readout": count_parameters(enc.readouts[mouse]),
        },
        "window": enc.config.window,
        "frame_layout": enc.config.frame_layout,
    }
    if not args.no_torch:
        device = torch.device(args.device)
        if args.device == "cuda" and not torch.cuda.is_available():
            result["torch"] = {"error": "torch sees no CUDA device (CPU-only build or no GPU)"}
        else:
            model = enc.to(device)
            t = {k: v.to(device) for k, v in ex.items()}
            sync = torch.cuda.synchronize if args.device == "cuda" else None
            fwd = E.forward_function(model, mouse)
            grad = E.gradient_function(model, mouse)

            def forward() -> None:
                with torch.no_grad():
                    fwd(t["video"], t["behaviour"])

            def gradient() -> None:
                grad(*(t[k] for k in E.GRADIENT_INPUTS))

            result["torch"] = {
                "device": str(device),
                "forward_ms": _median_ms(forward, args.repeats, sync),
                "gradient_ms": _median_ms(gradient, args.repeats, sync),
            }
            enc = enc.cpu()
    t0 = time.perf_counter()
    paths = E.export_mouse(enc, mouse, workdir / name)
    ort_result: dict[str, Any] = {"export_s": round(time.perf_counter() - t0, 1)}
    feeds = {k: v.cpu().numpy() for k, v in ex.items()}
    for graph in ("forward", "gradient"):
        try:
            session = E.onnx_session(paths[graph], args.device, threads=args.threads)
        except (RuntimeError, ValueError) as err:
            ort_result["error"] = str(err)
            break
        inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
        ort_result[f"{graph}_ms"] = _median_ms(lambda s=session, i=inputs: s.run(None, i), args.repeats)
        ort_result["providers"] = session.get_providers()
    ort_result["provider"] = (ort_result.get("providers") or ["none"])[0]
    result["onnxruntime"] = ort_result
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
    if args.batch < 1 or args.repeats < 1 or args.neurons < 1:
        log.error("--batch, --repeats and --neurons must be >= 1")
        return 2
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "bench": "encoder",
        "device": args.device,
        "threads": args.threads,
        "neurons": args.neurons,
        "batch": args.batch,
        "repeats": args.repeats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "unit": "milliseconds per call of --batch windows (32 frames each)",
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
