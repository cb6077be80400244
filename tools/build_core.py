"""Rebuild the shared core (decoder/models/core/) from nothing, with fixed seeds.

    python tools/build_core.py                       # on the CPU: data ~10 min, training ~1 h on 2 cores
    python tools/build_core.py --stage ship --run out/core/core-s0   # ship a finished run

1. data   simulate synthetic mice `--mice` (seed 0 is the built-in one) watching `--minutes` of movies each
2. core   train one `tiny` encoder on all of them at once (the Sensorium recipe: one shared core, one readout
          per mouse), with the gaussian readout, whose blob-shaped sampling during training transfers better
          to new mice than training the point readout directly (measured with `neurocine bench calibrate`)
3. ship   decoder/models/core/: the run's checkpoint (core + every mouse's readout) and provenance.json;
          `neurocine calibrate` fits new mice on this frozen core with a point readout.

The built-in mouse's model (decoder/models/default/) has its own recipe: tools/build_default_model.py.
Runs the verbs' own code directly, so it works from a source checkout without installing entry points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "decoder" / "models"


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
    verb(["train", "--data", *map(str, folders), "--preset", "tiny", "--readout", "gaussian",
          "--out", str(run), "--epochs", str(args.epochs),
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "out" / "core"), help="scratch folder (data, runs)")
    p.add_argument("--mice", default="0,1,2,3", help="synthetic mouse seeds the core is trained on (0 = built-in)")
    p.add_argument("--minutes", type=float, default=40.0, help="minutes of simulated data per mouse")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--stage", choices=["all", "data", "core", "ship"], default="all")
    p.add_argument("--run", default=None, help="--stage ship: the finished training run to ship")
    args = p.parse_args()
    command = "python tools/build_core.py " + " ".join(sys.argv[1:])
    work = Path(args.work)
    mice = [int(s) for s in args.mice.split(",")]
    if args.stage == "ship":
        run = Path(args.run or work / "core-s0")
        print(json.dumps({"core": ship_core(run, MODELS / "core", command)}, indent=2))
        return 0
    folders = simulate(work, mice, args.minutes)
    if args.stage == "data":
        return 0
    train_core(folders, work / "core-s0", 0, args)
    if args.stage == "core":
        return 0
    report = {"core": ship_core(work / "core-s0", MODELS / "core", command)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
