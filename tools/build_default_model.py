"""Rebuild the shipped models from nothing, with fixed seeds: the shared core and the built-in mouse's model.

    python tools/build_default_model.py                       # everything, on the CPU (~2 h on 2 cores)
    python tools/build_default_model.py --device cuda         # the training on a GPU
    python tools/build_default_model.py --stage ship --run out/default-model/core-s0   # from a finished run

Stages:
1. data   simulate the synthetic mice `--mice` (1,000 neurons, `--minutes` each; Sensorium layout, named
          synthetic-<seed>, movie seed 0). Seed 0 is the built-in mouse.
2. core   train one `tiny` encoder on all of them at once (the Sensorium recipe: one shared core, one readout
          per mouse; `--epochs` x `--steps-per-epoch` steps of `--batch-size` windows).
3. ship   decoder/models/core/: the run's checkpoint (core + every mouse's readout) and provenance.json, the
          core `neurocine calibrate` fits new mice on; decoder/models/default/: the built-in mouse's model (its
          checkpoint with that mouse only, forward/gradient graphs, graph.json naming the mouse, the inverse
          decoder fitted on its train tier) and provenance.json. The alpha mask (alpha_mask.npy) is the built-in
          mouse's previous one, kept: it is the mouse's, and retraining it costs ~25 min for no measured gain
          (`neurocine bench quality`, its mask group).
`--members K` also trains cores with seeds 1..K-1 on the same mice into decoder/models/seed<k>/ (the built-in
mouse's model from each): the ensemble `neurocine bench quality` uses.
Runs the verbs' own code, so it works from a source checkout.
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
MODELS = REPO / "decoder" / "models"
BUILT_IN = "synthetic-0"


def verb(argv: list[str]) -> int:
    """Run one `neurocine` verb in-process."""
    from neurocine.streams.cli import main

    code = main(argv)
    if code:
        raise SystemExit(f"neurocine {' '.join(argv)} failed with exit code {code}")
    return code


def simulate(work: Path, mice: list[int], minutes: float) -> list[Path]:
    folders = []
    for seed in mice:
        folder = work / f"synthetic-{seed}"
        if not (folder / "meta" / "trials" / "tiers.npy").is_file():
            verb(["simulate", "--out", str(folder), "--neurons", "1000", "--minutes", str(minutes), "--seed",
                  str(seed), "--quiet"])
        folders.append(folder)
    return folders


def train_core(folders: list[Path], run: Path, seed: int, args: argparse.Namespace) -> None:
    if run.exists():
        shutil.rmtree(run)
    verb(["train", "--data", *map(str, folders), "--preset", "tiny", "--out", str(run), "--epochs", str(args.epochs),
          "--steps-per-epoch", str(args.steps_per_epoch), "--batch-size", str(args.batch_size), "--device",
          args.device, "--seed", str(seed), "--no-progress", "--threads", "1"])


def ship_core(run: Path, dest: Path, command: str) -> dict:
    """decoder/models/core: the whole run's checkpoint (core + readouts of every training mouse)."""
    config = json.loads((run / "config.json").read_text())
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "checkpoint").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(run / f, dest / "checkpoint" / f)
    provenance = {"command": command, "what": "the shared core: a tiny encoder trained on several synthetic mice at "
                  "once (one readout each); `neurocine calibrate` fits new mice on its frozen core",
                  "mice": config["mice"], "validation": config.get("validation"), "training": config.get("training")}
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def ship_mouse(run: Path, data: Path, dest: Path, mouse: str, command: str, inverse: bool = True) -> dict:
    """A model folder for one mouse of the run: its checkpoint alone, its graphs, its inverse decoder."""
    import numpy as np

    from neurocine.decoder.encoder.checkpoint import load_encoder, save_checkpoint
    from neurocine.decoder.encoder.export import export_mouse
    from neurocine.decoder.encoder.model import Encoder
    from neurocine.decoder.reconstruct.inverse import export_inverse
    from neurocine.decoder.reconstruct.inverse_fit import fit_inverse
    from neurocine.streams.formats.sensorium import read_sensorium

    trained, config = load_encoder(run)
    one = Encoder(trained.config, {mouse: trained.neurons[mouse]})
    state = {k: v for k, v in trained.state_dict().items() if k in one.state_dict()}
    one.load_state_dict(state, strict=True)
    one.eval()
    ids = np.asarray(config["neuron_ids"][mouse])
    keep = {"alpha_mask.npy"}
    dest.mkdir(parents=True, exist_ok=True)
    for f in dest.iterdir():
        if f.name not in keep:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    extra = {k: config[k] for k in ("validation", "training") if k in config}
    save_checkpoint(dest / "checkpoint", one, {mouse: ids}, extra)
    export_mouse(one, mouse, dest, metadata={"neuron_ids": ids.tolist(), "validation": config.get("validation"),
                                             "statistics": config["statistics"]["mice"][mouse]})
    seconds = {}
    if inverse:
        t = time.time()
        fit = fit_inverse(read_sensorium(data, tier="train"))
        export_inverse(fit, dest)
        seconds["inverse"] = round(time.time() - t, 1)
    per_mouse = (config.get("validation") or {}).get("per_mouse", {})
    provenance = {"command": command, "mouse": mouse, "core": "decoder/models/core (this model's core and "
                  "readout are that run's)", "preset": config.get("preset"),
                  "validation_correlation": per_mouse.get(mouse), "inverse": fit.report if inverse else None,
                  "seconds": seconds, "alpha_mask": "kept from the previous model of this mouse" if
                  (dest / "alpha_mask.npy").is_file() else None}
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "out" / "default-model"), help="scratch folder (data, runs)")
    p.add_argument("--mice", default="0,1,2,3", help="synthetic mouse seeds the core is trained on (0 = built-in)")
    p.add_argument("--minutes", type=float, default=40.0, help="minutes of simulated data per mouse")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--members", type=int, default=1, help="cores trained: seed 0 plus K-1 siblings")
    p.add_argument("--stage", choices=["all", "data", "core", "ship"], default="all")
    p.add_argument("--run", default=None, help="--stage ship: the finished training run to ship")
    p.add_argument("--data", default=None, help="--stage ship: the built-in mouse's data folder (its inverse)")
    args = p.parse_args()
    command = "python tools/build_default_model.py " + " ".join(sys.argv[1:])
    work = Path(args.work)
    mice = [int(s) for s in args.mice.split(",")]
    if args.stage == "ship":
        run = Path(args.run or work / "core-s0")
        data = Path(args.data or work / BUILT_IN)
        print(json.dumps({"core": ship_core(run, MODELS / "core", command),
                          "default": ship_mouse(run, data, MODELS / "default", BUILT_IN, command)}, indent=2))
        return 0
    folders = simulate(work, mice, args.minutes)
    if args.stage == "data":
        return 0
    for k in range(args.members):
        train_core(folders, work / f"core-s{k}", k, args)
    if args.stage == "core":
        return 0
    report = {"core": ship_core(work / "core-s0", MODELS / "core", command),
              "default": ship_mouse(work / "core-s0", folders[0], MODELS / "default", BUILT_IN, command)}
    for k in range(1, args.members):  # the same mouse and data: the default's inverse decoder serves them all
        report[f"seed{k}"] = ship_mouse(work / f"core-s{k}", folders[0], MODELS / f"seed{k}", BUILT_IN, command,
                                        inverse=False)
        shutil.copy2(MODELS / "default" / "inverse.onnx", MODELS / f"seed{k}" / "inverse.onnx")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
