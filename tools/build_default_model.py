"""Rebuild the built-in default model (decoder/models/default/) from nothing, with fixed seeds.

    python tools/build_default_model.py --device cuda     # ~6 min on one H200 (simulation 1-4 min, training
                                                          # ~100 s per member, members in turn)
    python tools/build_default_model.py --device cpu      # the same on a CPU: hours; --minutes/--epochs shrink it

Steps: simulate the default synthetic mouse (seed 0, 1,000 neurons) watching `--minutes` of movies
(Sensorium layout), train the `--preset` encoder on it, export its ONNX graphs, train the alpha mask,
and copy what the decoder needs into decoder/models/default/ with a provenance file. `--members K` also
trains seeds 1..K-1 of the same encoder into decoder/models/seed<k>/ (checkpoint + forward/gradient
graphs): the ensemble `neurocine bench quality` uses. On a GPU the
numbers can differ in the last bits between runs (cuDNN picks kernels); on the CPU they repeat.
Runs the verbs' own code directly, so it works from a source checkout without installing entry points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from neurocine.streams.commandline import get_logger

log = get_logger("build")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "decoder" / "models" / "default"


def verb(argv: list[str]) -> int:
    """Run one `neurocine` verb in-process (train/export/simulate registered directly)."""
    from neurocine.decoder.encoder.cli import register_export, register_train
    from neurocine.streams.synthetic.cli import register_simulate

    parser = argparse.ArgumentParser(prog="neurocine")
    sub = parser.add_subparsers(dest="verb", required=True)
    for register in (register_simulate, register_train, register_export):
        register(sub)
    args = parser.parse_args(argv)
    code = int(args.func(args) or 0)
    if code:
        raise SystemExit(f"neurocine {' '.join(argv)} failed with exit code {code}")
    return code


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "out" / "default-model"), help="scratch folder (data, runs)")
    p.add_argument("--minutes", type=float, default=40.0, help="minutes of simulated training data")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--readout", default="gaussian", help="the shipped model was trained with the gaussian readout")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--mask-iterations", type=int, default=1000)
    p.add_argument("--members", type=int, default=3, help="seeds trained: the default model plus K-1 siblings")
    p.add_argument("--dest", default=str(DEFAULT_DIR), help="where the built-in model goes")
    p.add_argument("--stage", choices=["all", "data", "model", "mask"], default="all",
                   help="data: only simulate; model: simulate, train, export; mask: the alpha mask for a model "
                   "already in --dest")
    args = p.parse_args()
    if args.stage == "mask":
        return mask_only(Path(args.work), Path(args.dest), args.mask_iterations)

    work = Path(args.work)
    data, run, export = work / "synthetic-0", work / "run", work / "export"
    t0 = time.time()
    if not (data / "meta" / "trials" / "tiers.npy").is_file():
        verb(["simulate", "--out", str(data), "--neurons", "1000", "--minutes", str(args.minutes), "--seed", "0"])
    t_sim = time.time() - t0
    if args.stage == "data":
        print(json.dumps({"data": str(data), "simulate_s": round(t_sim, 1)}))
        return 0
    if run.exists():
        shutil.rmtree(run)
    verb(["train", "--data", str(data), "--preset", args.preset, "--readout", args.readout,
          "--out", str(run), "--epochs", str(args.epochs),
          "--device", args.device, "--seed", "0", "--batch-size", str(args.batch_size), "--no-progress"])
    t_train = time.time() - t0 - t_sim
    if export.exists():
        shutil.rmtree(export)
    verb(["export", str(run), "--out", str(export)])
    mouse_dirs = [d for d in export.iterdir() if d.is_dir()]
    if len(mouse_dirs) != 1:
        raise SystemExit(f"expected one exported mouse in {export}, found {[d.name for d in mouse_dirs]}")
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in mouse_dirs[0].iterdir():
        shutil.copy2(f, dest / f.name)
    checkpoint = dest / "checkpoint"
    checkpoint.mkdir(exist_ok=True)
    for f in run.iterdir():
        if f.is_file() and f.suffix in (".json", ".safetensors"):
            shutil.copy2(f, checkpoint / f.name)
    mask = train_mask(dest, run, data, args.mask_iterations, mouse_dirs[0].name) if args.stage == "all" else None
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    provenance = {
        "command": "python tools/build_default_model.py " + " ".join(sys.argv[1:]),
        "mouse": mouse_dirs[0].name,
        "preset": args.preset,
        "data_minutes": args.minutes,
        "epochs": args.epochs,
        "device": args.device,
        "validation": config.get("validation"),
        "alpha_mask_pixels_opt": int((mask >= 0.5).sum()) if mask is not None else None,
        "seconds": {"simulate": round(t_sim, 1), "train": round(t_train, 1), "total": round(time.time() - t0, 1)},
    }
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))
    for k in range(1, args.members):
        sibling(work, data, dest.parent / f"seed{k}", k, args)
    return 0


def sibling(work: Path, data: Path, dest: Path, seed: int, args: argparse.Namespace) -> None:
    """Train seed `seed` of the same encoder and put its checkpoint and forward/gradient graphs in `dest`."""
    run, export = work / f"run-seed{seed}", work / f"export-seed{seed}"
    for folder in (run, export, dest):
        if folder.exists():
            shutil.rmtree(folder)
    verb(["train", "--data", str(data), "--preset", args.preset, "--readout", args.readout,
          "--out", str(run), "--epochs", str(args.epochs),
          "--device", args.device, "--seed", str(seed), "--batch-size", str(args.batch_size), "--no-progress"])
    verb(["export", str(run), "--out", str(export), "--graphs", "forward,gradient"])
    (mouse_dir,) = [d for d in export.iterdir() if d.is_dir()]
    shutil.copytree(mouse_dir, dest)
    (dest / "checkpoint").mkdir()
    for f in run.iterdir():
        if f.is_file() and f.suffix in (".json", ".safetensors"):
            shutil.copy2(f, dest / "checkpoint" / f.name)


def mask_only(work: Path, dest: Path, iterations: int) -> int:
    """Train the alpha mask for the model in `dest` (its checkpoint/ subfolder) on 8 simulated training trials
    of the default mouse (simulated here when the big dataset is not around)."""
    data = work / "synthetic-0"
    if not (data / "meta" / "trials" / "tiers.npy").is_file():
        data = work / "mask-data"
        if not (data / "meta" / "trials" / "tiers.npy").is_file():
            verb(["simulate", "--out", str(data), "--neurons", "1000", "--trials", "30", "--seed", "0"])
    provenance = json.loads((dest / "provenance.json").read_text())
    alpha = train_mask(dest, dest / "checkpoint", data, iterations, provenance["mouse"])
    provenance["alpha_mask_pixels_opt"] = int((alpha >= 0.5).sum())
    provenance["alpha_mask_iterations"] = iterations
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))
    return 0


def train_mask(dest: Path, run: Path, data: Path, iterations: int, mouse: str):  # -> np.ndarray
    """The alpha (transparency) mask of the default mouse (MSE through the trained encoder, as published),
    from the first 8 training trials; saved beside the model as alpha_mask.npy."""
    import torch

    from neurocine.decoder.encoder.checkpoint import load_encoder
    from neurocine.decoder.reconstruct.backends import TorchBackend
    from neurocine.decoder.reconstruct.offline import MaskConfig, save_alpha_mask, train_alpha_mask
    from neurocine.streams.formats.sensorium import read_sensorium

    torch.set_num_threads(1)  # small convolutions: one thread beats two contended ones by far on small machines
    encoder, _ = load_encoder(run)
    backend = TorchBackend.from_encoder(encoder, mouse, loss="mse")
    session = read_sensorium(data, tier="train")
    trials = [(session.stimulus[t.start : t.stop], session.behaviour[t.start : t.stop],
               session.traces[t.start : t.stop]) for t in session.trials[:8]]
    t0 = time.time()

    def progress(i: int, n: int, loss: float) -> None:
        if i == 1 or i % 10 == 0 or i == n:
            log.info(f"iteration {i}/{n}, loss {loss:.4f}, {time.time() - t0:.0f} s")

    alpha = train_alpha_mask(backend, trials, MaskConfig(iterations=iterations), progress=progress)
    save_alpha_mask(alpha, dest)
    return alpha


if __name__ == "__main__":
    raise SystemExit(main())
