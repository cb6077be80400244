"""The GPU measurements in one run: ONNX Runtime CUDA vs torch (eager, CUDA graph) per step,
7 x dwiseneuro live compute per frame, and the paper-scale offline reconstruction time per movie.

    python tools/gpu_bench.py --out $OUT                 # on the GPU machine (a few minutes of GPU time)
    python tools/gpu_bench.py --cpu-dry-run --out /tmp/g # here: every stage at tiny sizes on the CPU

On the GPU machine (torch+CUDA, onnx, the CPU onnxruntime; no onnxruntime-gpu): installs the
onnxruntime-gpu wheel found at --wheel (default: .whl/onnxruntime_gpu-*.whl, the repository's ignored
wheel folder) into a private folder (the image's packages stay as they are), re-runs itself with it
first on sys.path, calls onnxruntime.preload_dlls() (CUDA/cuDNN of the nvidia-* pip packages) and
print_debug_info(), and refuses to go on when the CUDA provider does not load.

Weights are random (build_encoder, seed k for member k; BatchNorm calibrated on a smooth movie): timing
only, said in the JSON. Stages (each in its own try, so one failure does not lose the others):
1. encoder: per preset (tiny, small, dwiseneuro), 8,000 neurons, the gradient for B windows (2 = a live
   step, 35 = an offline iteration): ORT CUDA (IOBinding, inputs and outputs on the device), torch eager,
   torch CUDA graph (captured once, replayed), torch bf16 autocast (time and gradient error vs fp32).
2. live: 7 x dwiseneuro at 8,000 neurons, lag 32, 2 steps per frame: the streaming optimiser's compute per
   frame (p50/p95/p99/max over --frames frames) with the 7 members fused into one ORT call per step.
3. offline: 7 x dwiseneuro, a 10-s movie (300 frames, stride 8 = 35 windows), --iterations iterations
   timed and scaled to the paper's 1,000: seconds per movie.
JSON to --out/gpu_bench.json (and stdout).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def import_checkout() -> None:
    """Make `neurocine` importable from this checkout where it is not installed (the GPU machine runs a copy of
    the working tree): the repository root is the package's folder (see pyproject.toml)."""
    import importlib.util

    if importlib.util.find_spec("neurocine") is None:
        spec = importlib.util.spec_from_file_location("neurocine", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["neurocine"] = module
        spec.loader.exec_module(module)


import_checkout()

MOUSE = "bench"
PRIVATE = "NEUROCINE_ORT_GPU_SITE"


def install_ort_gpu(wheel: str | None) -> None:
    """Install onnxruntime-gpu into a private folder and re-exec with it first on the path (once)."""
    if os.environ.get(PRIVATE):
        sys.path.insert(0, os.environ[PRIVATE])
        return
    pattern = wheel or str(REPO / ".whl" / "onnxruntime_gpu-*.whl")
    found = sorted(glob.glob(pattern))
    if not found:
        raise SystemExit(f"gpu_bench: no onnxruntime-gpu wheel at {pattern}; on a machine with network: "
                         "pip download onnxruntime-gpu==1.31.1 --no-deps -d .whl")  # fmt: skip
    site = tempfile.mkdtemp(prefix="ort-gpu-")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, found[-1]],
                   check=True)  # fmt: skip
    env = dict(os.environ, **{PRIVATE: site, "PYTHONPATH": site + os.pathsep + os.environ.get("PYTHONPATH", "")})
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def ort_setup(device: str) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {"version": ort.__version__, "file": ort.__file__,
                            "available": ort.get_available_providers()}  # fmt: skip
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        if hasattr(ort, "print_debug_info"):
            ort.print_debug_info()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SystemExit(f"gpu_bench: onnxruntime {ort.__version__} at {ort.__file__} has no CUDA provider")
    return info


def build(preset: str, neurons: int, seed: int, folder: Path) -> tuple[Any, Path]:
    """A random-weight encoder (BatchNorm calibrated), exported to folder; (frozen encoder, folder)."""
    import torch

    from neurocine.decoder.encoder import export as E
    from neurocine.decoder.encoder.model import build_encoder, calibrate_batchnorm
    from neurocine.decoder.encoder.presets import get_preset
    from neurocine.decoder.encoder.samples import behaviour, random_smooth_movies

    enc = build_encoder(get_preset(preset), {MOUSE: neurons}, seed=seed)
    video = torch.from_numpy(random_smooth_movies(2, enc.config.window, seed=seed))
    beh = torch.from_numpy(behaviour(2, enc.config.window, seed=seed))
    enc.stats[MOUSE].behaviour_mean.copy_(beh.mean(dim=(0, 1)))
    enc.stats[MOUSE].behaviour_std.copy_(beh.std(dim=(0, 1)).clamp_min(1e-3))
    calibrate_batchnorm(enc, [(video, beh)], MOUSE)
    if not (folder / "gradient.onnx").is_file():
        E.export_mouse(enc, MOUSE, folder)
    return E.frozen_copy(enc), folder


def timed(fn: Any, repeats: int, sync: Any) -> dict[str, Any]:
    import numpy as np

    from neurocine.streams.summary import percentiles

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"ms": percentiles(np.asarray(times) * 1e3)}


def stage_encoder(args: argparse.Namespace, work: Path, device: str) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from neurocine.decoder.encoder import export as E
    from neurocine.decoder.reconstruct.backends import ort_session

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    provider = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    out: dict[str, Any] = {}
    for preset in args.presets.split(","):
        enc, folder = build(preset, args.neurons, 0, work / f"{preset}-0")
        res: dict[str, Any] = {}
        for b in args.batches:
            ex = E.example_inputs(enc, MOUSE, b)
            row: dict[str, Any] = {}
            session = ort_session(folder / "gradient.onnx", provider, args.threads)
            binding = session.io_binding()
            dev = "cuda" if cuda else "cpu"
            for name in E.GRADIENT_INPUTS:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(ex[name].numpy(), dev, 0))
            for name in E.GRADIENT_OUTPUTS:
                binding.bind_output(name, dev)
            row["ort"] = {**timed(lambda s=session, io=binding: s.run_with_iobinding(io), args.repeats, sync),
                          "provider": session.get_providers()[0]}  # fmt: skip
            row["ort_fp16"] = ort_half(folder, provider, args, ex, dev, sync, session)
            model = enc.to(dev)
            t = {k: v.to(dev) for k, v in ex.items()}
            grad_fn = E.gradient_function(model, MOUSE)
            inputs = [t[k] for k in E.GRADIENT_INPUTS]
            call = lambda f=grad_fn, x=inputs: f(*x)  # noqa: E731
            row["torch_eager"] = timed(call, args.repeats, sync)
            _, ref_grad = call()
            if cuda:
                row["torch_cuda_graph"] = cuda_graph_timing(grad_fn, t, args.repeats)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    _, g16 = call()
                    row["torch_bf16"] = timed(call, args.repeats, sync)
                row["torch_bf16"]["grad_rel_error"] = float(torch.linalg.norm(g16.float() - ref_grad)
                                                            / torch.linalg.norm(ref_grad))  # fmt: skip
            got = session.run(None, {k: ex[k].numpy() for k in E.GRADIENT_INPUTS})[1]
            row["ort_vs_torch_grad_rel_error"] = float(np.linalg.norm(got - ref_grad.cpu().numpy())
                                                       / np.linalg.norm(ref_grad.cpu().numpy()))  # fmt: skip
            best_torch = min(v["ms"]["p50"] for k, v in row.items() if k.startswith("torch_") and "ms" in v)
            row["ort_over_best_torch"] = round(row["ort"]["ms"]["p50"] / best_torch, 3)
            res[f"batch_{b}"] = row
            enc = enc.cpu()
        out[preset] = res
    return out


def ort_half(folder: Path, provider: list[str], args: argparse.Namespace, ex: dict[str, Any], dev: str,
             sync: Any, full: Any) -> dict[str, Any]:
    """The fp16 graph (export.write_half_precision): time and gradient error vs the float32 graph."""
    import numpy as np
    import onnxruntime as ort

    from neurocine.decoder.encoder import export as E
    from neurocine.decoder.reconstruct.backends import ort_session

    half = folder / "gradient_fp16.onnx"
    if not half.is_file():
        E.write_half_precision(folder / "gradient.onnx", half)
    session = ort_session(half, provider, args.threads)
    binding = session.io_binding()
    for name in E.GRADIENT_INPUTS:
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(ex[name].numpy(), dev, 0))
    for name in E.GRADIENT_OUTPUTS:
        binding.bind_output(name, dev)
    out = timed(lambda: session.run_with_iobinding(binding), args.repeats, sync)
    feed = {k: ex[k].numpy() for k in E.GRADIENT_INPUTS}
    ref, got = full.run(None, feed)[1], session.run(None, feed)[1]
    out["grad_rel_error_vs_fp32"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return out


def cuda_graph_timing(grad_fn: Any, t: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Capture the gradient (forward + autograd backward) once as a CUDA graph, time its replay."""
    import torch

    from neurocine.decoder.encoder import export as E

    static = [t[k].clone() for k in E.GRADIENT_INPUTS]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            grad_fn(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            grad_fn(*static)
    except Exception as err:  # capture can fail for ops that sync; report it
        return {"error": f"capture failed: {err}"}
    return timed(graph.replay, repeats, torch.cuda.synchronize)


def ensemble(args: argparse.Namespace, work: Path, device: str) -> Any:
    from neurocine.decoder.reconstruct.backends import Ensemble, OrtBackend
    from neurocine.decoder.reconstruct.ort_fused import fuse_ensemble

    provider = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    members = []
    for k in range(args.members):
        _, folder = build(args.live_preset, args.neurons, k, work / f"{args.live_preset}-{k}")
        members.append(OrtBackend(folder, providers=provider, threads=args.threads))
    ens = Ensemble(members)
    fuse_ensemble(ens)
    return ens


ENSEMBLING = ("gradients", "videos")  # fused: one ORT call per step; videos: K optimisers (the paper's)


def stage_live(args: argparse.Namespace, ens: Any) -> dict[str, Any]:
    import numpy as np

    from neurocine.decoder.reconstruct.streaming import StreamingConfig, make_streaming
    from neurocine.streams.summary import percentiles

    rng = np.random.default_rng(0)
    n, frames = ens.n_neurons, 64 + args.frames
    resp = rng.gamma(1.0, 1.0, (frames, n)).astype(np.float32)
    beh = rng.normal(0.0, 1.0, (frames, 4)).astype(np.float32)
    out: dict[str, Any] = {"what": "StreamingReconstructor.push compute per frame (no sockets)",
                           "members": len(ens), "neurons": n, "lag": 32, "steps_per_frame": 2,
                           "budget_ms_at_30hz": 33.3}  # fmt: skip
    for mode in ENSEMBLING:
        rec = make_streaming(ens, StreamingConfig(lag=32, steps=2, ensemble=mode))
        seconds = []
        for t in range(frames):
            t0 = time.perf_counter()
            rec.push(resp[t], beh[t])
            seconds.append(time.perf_counter() - t0)
        s = np.asarray(seconds[64:]) * 1e3
        compute = percentiles(s, 2)
        out[mode] = {"fused_call": mode == "gradients" and ens.fused is not None, "frames": int(s.size),
                     "compute_ms": compute, "fits_30hz_at_p99": compute["p99"] <= 33.3}  # fmt: skip
    return out


def stage_offline(args: argparse.Namespace, ens: Any) -> dict[str, Any]:
    import numpy as np

    from neurocine.decoder.reconstruct.offline import OfflineConfig, reconstruct_offline

    rng = np.random.default_rng(1)
    t_len = args.movie_frames
    responses = rng.gamma(1.0, 1.0, (t_len, ens.n_neurons)).astype(np.float32)
    behaviour = rng.normal(0.0, 1.0, (t_len, 4)).astype(np.float32)
    out: dict[str, Any] = {"what": "reconstruct_offline, iterations timed and scaled to 1,000",
                           "members": len(ens), "movie_frames": t_len, "windows_per_iteration": (t_len - 32) // 8 + 1,
                           "iterations_timed": args.iterations, "target_s": 60}  # fmt: skip
    for mode in ENSEMBLING:
        cfg = OfflineConfig(iterations=args.iterations, stride=8, ensemble=mode)
        reconstruct_offline(ens, responses, behaviour, config=OfflineConfig(iterations=1, stride=8, ensemble=mode))
        rec = reconstruct_offline(ens, responses, behaviour, config=cfg)
        per_iter = rec.seconds / args.iterations
        out[mode] = {"seconds_per_iteration": round(per_iter, 4),
                     "seconds_per_movie_at_1000_iterations": round(per_iter * 1000, 1)}  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_bench.json (default $OUT)")
    p.add_argument("--wheel", default=None, help="onnxruntime-gpu wheel (default .whl/onnxruntime_gpu-*.whl)")
    p.add_argument("--cpu-dry-run", action="store_true", help="every stage at tiny sizes on the CPU (no install)")
    p.add_argument("--stages", default="encoder,live,offline")
    args = p.parse_args()
    dry = args.cpu_dry_run
    device = "cpu" if dry else "cuda"
    if not dry:
        install_ort_gpu(args.wheel)
    args.presets = "tiny" if dry else "tiny,small,dwiseneuro"
    args.neurons = 50 if dry else 8000
    args.batches = [2] if dry else [2, 35]
    args.repeats = 2 if dry else 20
    args.threads = 1 if dry else 0
    args.members, args.live_preset = (2, "tiny") if dry else (7, "dwiseneuro")
    args.frames = 4 if dry else 200
    args.movie_frames, args.iterations = (64, 2) if dry else (300, 20)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "bench": "gpu", "device": device, "dry_run": dry, "weights": "random (timing only)",
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }  # fmt: skip
    report["onnxruntime"] = ort_setup(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        ens = None
        for stage in ("encoder", "live", "offline"):
            if stage not in stages:
                continue
            print(f"gpu_bench: {stage} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                if stage == "encoder":
                    report[stage] = stage_encoder(args, work, device)
                else:
                    ens = ens or ensemble(args, work, device)
                    report[stage] = (stage_live if stage == "live" else stage_offline)(args, ens)
            except Exception as err:  # keep the other stages' numbers
                report[stage] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
            report.setdefault("stage_seconds", {})[stage] = round(time.perf_counter() - t0, 1)
            (out / "gpu_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all("error" not in report.get(s, {}) for s in stages) else 1


if __name__ == "__main__":
    raise SystemExit(main())
