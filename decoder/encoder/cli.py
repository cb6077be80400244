"""CLI verbs of the encoder: `neurocine train` and `neurocine export` (heavy imports inside run)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from neurocine.streams.commandline import get_logger

TRAIN_EXAMPLE = """example:
  neurocine train --data data/mouse_a data/mouse_b --preset small --out models/small --epochs 20
  neurocine train --data data/mouse_a --preset small --out models/small --epochs 30 --resume
  neurocine train --data data/mouse_a --preset small --out models/ens --seeds 0,1,2 --num-cpus 3
    (an ensemble: one Ray task per seed -> models/ens/seed<k>/ and its ONNX export models/ens/seed<k>/onnx/)
  neurocine train --inverse --data data/mouse_a --out decoder/models/default   # inverse.onnx for a model folder
"""

EXPORT_EXAMPLE = """example:
  neurocine export models/small --out models/small/onnx
  neurocine export models/small --out /tmp/onnx --mouse mouse_a --window 32
writes DIR/<mouse>/forward.onnx, gradient.onnx and graph.json (inputs, outputs) per mouse; every graph
takes any number of windows per call.
"""


#: A name from a file that becomes a folder name: no separators, no "..", no leading dot or dash.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

def register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an encoder (video + behaviour -> activity) on Sensorium-layout folders",
        description="Train a DwiseNeuro-family encoder on one or more Sensorium 2023 mouse folders (one shared "
        "core, one readout per mouse). Saves the EMA model as MODEL_DIR/model.safetensors + config.json "
        "after every epoch, with the oracle-tier single-trial correlation.",
        epilog=TRAIN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="Sensorium mouse folders")
    p.add_argument("--preset", default="small", help="architecture: tiny, small, dwiseneuro, dwiseneuro7")
    p.add_argument("--readout", default=None, choices=("point", "gaussian", "pooled"),
                   help="readout kind instead of the preset's (a core meant for calibration trains well with "
                   "'gaussian': calibrated mice then get point readouts on it)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the whole schedule (default 20)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run saved in MODEL_DIR")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2.4e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cutmix", type=float, default=0.0, help="CutMix probability per batch (default off)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: windows in the data / batch")
    p.add_argument("--valid-tier", default="oracle", help="tier scored each epoch (default oracle)")
    p.add_argument("--stop-after", type=int, default=None, help="run only this many epochs now (resume later)")
    p.add_argument("--stem-smoothness", type=float, default=0.01,
                   help="weight of a Laplacian smoothness penalty on the stem's kernels (default 0.01)")
    p.add_argument("--position-lr-scale", type=float, default=10.0,
                   help="learning-rate multiplier of the gaussian readout's neuron positions (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--minutes", type=float, default=None,
                   help="train on the first M minutes of each mouse's train tier only (whole trials)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--inverse", action="store_true",
                   help="instead of an encoder, fit the inverse decoder (responses -> frames, the optimiser's first "
                   "guess) on --data's train tier and write MODEL_DIR/inverse.onnx; numpy only, no torch")
    p.add_argument("--seeds", default=None, metavar="S0,S1,..",
                   help="train one model per seed as Ray tasks (OUT/seed<k>/), each then exported to ONNX "
                   "(OUT/seed<k>/onnx/); needs the cluster extra")
    p.add_argument("--address", default=None, help="--seeds: an existing Ray cluster (default: a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="--seeds: CPUs of the local Ray cluster")
    p.add_argument("--no-export", action="store_true", help="--seeds: skip the ONNX export")
    p.add_argument("--export-graphs", default="forward,gradient", help="--seeds: graphs to export")
    p.set_defaults(func=run_train)


def run_train_inverse(args: argparse.Namespace) -> int:
    """`neurocine train --inverse`: fit and export inverse.onnx into an exported model folder."""
    from neurocine.decoder.reconstruct.inverse import InverseDecoder, InverseError, export_inverse
    from neurocine.decoder.reconstruct.inverse_fit import fit_inverse
    from neurocine.streams.formats import FormatError
    from neurocine.streams.formats.sensorium import read_sensorium

    if len(args.data) != 1:
        get_logger("train").error("give one --data folder (one mouse)")
        return 2
    out = Path(args.out)
    graph = out / "graph.json"
    nested = [d for d in out.glob("*/graph.json")] if out.is_dir() and not graph.is_file() else []
    if len(nested) == 1:  # `export MODEL --out MODEL` wrote MODEL/<mouse>/: the inverse belongs beside its graphs
        get_logger("train").error(f"--out {out} holds no graphs but {nested[0].parent} does (an export's mouse "
                                  f"folder): pass --out {nested[0].parent}, so that the model folder is complete")
        return 2
    try:
        session = read_sensorium(args.data[0], tier="train")
        if args.minutes is not None:
            from neurocine.decoder.encoder.data import first_minutes

            session = first_minutes(session, args.minutes)
        ids = json.loads(graph.read_text()).get("neuron_ids") if graph.is_file() else None
        if ids is not None and [int(i) for i in ids] != [int(i) for i in session.neuron_ids]:
            raise InverseError(f"{args.data[0]}: its neurons are not those of the model in {out} ({graph})")
        fit = fit_inverse(session, log=get_logger("train").info)
        path = export_inverse(fit, out)
        InverseDecoder(path)  # loads back, or says why not
    except (FormatError, InverseError, OSError, ValueError) as err:
        get_logger("train").error(str(err))
        return 2
    print(json.dumps({"inverse": str(path), "bytes": path.stat().st_size, "fit": fit.report}))
    return 0


def train_options(args: argparse.Namespace, seed: int | None = None, out: str | None = None):  # -> TrainOptions
    """TrainOptions from the command line (seed and out overridable: one per ensemble member)."""
    from neurocine.decoder.encoder.train import TrainOptions

    return TrainOptions(
        data=list(args.data),
        preset=args.preset,
        readout=args.readout,
        out=args.out if out is None else out,
        epochs=args.epochs,
        device=args.device,
        seed=args.seed if seed is None else seed,
        resume=args.resume,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        ema_decay=args.ema_decay,
        cutmix=args.cutmix,
        steps_per_epoch=args.steps_per_epoch,
        valid_tier=args.valid_tier,
        stop_after=args.stop_after,
        stem_smoothness=args.stem_smoothness,
        position_lr_scale=args.position_lr_scale,
        minutes=args.minutes,
        progress=not args.no_progress,
    )


def run_train(args: argparse.Namespace) -> int:
    if args.inverse:
        return run_train_inverse(args)
    if args.seeds is not None:
        from neurocine.decoder.cluster.train import run_seeds

        return run_seeds(args)
    import torch

    from neurocine.decoder.encoder.data import DataError
    from neurocine.decoder.encoder.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    opts = train_options(args)
    try:
        summary = train(opts)
    except (DataError, ValueError) as err:
        get_logger("train").error(str(err))
        return 2
    summary.pop("history", None)
    print(json.dumps(summary))
    return 0


CALIBRATE_EXAMPLE = """example:
  neurocine rig --synthetic --seed 31337 --bind tcp://127.0.0.1:5555 &        # a mouse the core never saw
  neurocine record --connect tcp://127.0.0.1:5555 --out m31337.ncr --seconds 600
  neurocine calibrate --recording m31337.ncr --out models/synthetic-31337     # ~3 min on 2 cores
  neurocine decode --model models/synthetic-31337 --connect tcp://127.0.0.1:5555
  neurocine calibrate --recording data/mouse_a --minutes 10 --out models/mouse_a   # a Sensorium folder
"""


def register_calibrate(subparsers: argparse._SubParsersAction) -> None:
    from neurocine.decoder.encoder.calibrate import ReadoutFitOptions

    p = subparsers.add_parser(
        "calibrate",
        help="fit a new mouse on the shared core from a calibration recording -> a ready model folder",
        description="A model folder for a new mouse (or new ROIs) in one command: the shared core stays frozen; the "
        "mouse's readout, its inverse decoder (first guess) and the ONNX graphs are fitted from a recording with "
        "its stimulus (.ncr from `neurocine record`, .nwb, or a Sensorium folder's train tier). Progress on "
        "stderr, a JSON summary (seconds per stage, held-out validation) on stdout; the folder says which mouse "
        "and which neuron ids it was fitted on, and decode/reconstruct refuse sessions of other mice.",
        epilog=CALIBRATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from neurocine.decoder.encoder.calibrate import CORE_DIR

    defaults = ReadoutFitOptions()
    p.add_argument("--recording", nargs="+", required=True, metavar="PATH",
                   help="calibration recording(s) of one mouse with its stimulus (.ncr, .nwb, Sensorium folder)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model folder to write")
    p.add_argument("--core", default=str(CORE_DIR), help="model folder of the shared core (default: the shipped one)")
    p.add_argument("--mouse", default=None, help="the mouse's id (default: the recording's; the rig must send it)")
    p.add_argument("--minutes", type=float, default=None, help="use only the first M minutes of the recording")
    p.add_argument("--series", default=None, help="an NWB recording's trace series (when it holds several)")
    p.add_argument("--neurons", type=int, default=None,
                   help="fit only a seeded random subset of this many neurons (what more neurons buy)")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction held out for validation (default 0.1)")
    p.add_argument("--steps", type=int, default=defaults.steps, help=f"readout fit steps (default {defaults.steps})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder (atomically)")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from neurocine.decoder.encoder.calibrate import CalibrateOptions, CalibrationError, ReadoutFitOptions, calibrate
    from neurocine.streams.commandline import emit_json
    from neurocine.streams.formats import FormatError

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.holdout < 0.5 or (args.minutes is not None and args.minutes <= 0) or args.steps < 1:
        get_logger("calibrate").error("--holdout must be in (0, 0.5), --minutes > 0 and --steps >= 1")
        return 2
    bad = [p for p in args.recording if not Path(p).exists()]
    if bad:
        get_logger("calibrate").error(f"--recording {bad[0]}: no such file or folder")
        return 2
    readout = dataclasses.replace(ReadoutFitOptions(), steps=args.steps, seed=args.seed)
    opts = CalibrateOptions(recordings=list(args.recording), out=args.out, core=args.core, mouse=args.mouse,
                            minutes=args.minutes, holdout=args.holdout, readout=readout, overwrite=args.overwrite,
                            series=args.series, neurons=args.neurons)
    try:
        summary = calibrate(opts)
    except (CalibrationError, FormatError, ValueError) as err:
        get_logger("calibrate").error(str(err))
        return 2
    emit_json(summary)
    return 0


def register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained encoder to ONNX (forward and loss-gradient graphs per mouse)",
        description="Write, per mouse, an ONNX forward graph (video, behaviour -> predicted responses) and a "
        "gradient graph (video, behaviour, responses, weights -> Poisson loss, d loss / d video) that run "
        "on onnxruntime's CPU and CUDA providers with standard operators only.",
        epilog=EXPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by `neurocine train`")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--mouse", action="append", default=None, metavar="ID", help="only this mouse (repeatable)")
    p.add_argument("--window", type=int, default=None, help="frames per window (even; default: the model's)")
    p.add_argument("--graphs", default="forward,gradient", help="which graphs (default forward,gradient)")
    p.add_argument("--half", action="store_true",
                   help="also write gradient_fp16.onnx (float16 inside, float32 in/out; for GPUs)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from neurocine.decoder.encoder.checkpoint import CheckpointError
    from neurocine.decoder.encoder.export import ExportError

    if args.window is not None and (args.window < 2 or args.window % 2):
        get_logger("export").error(f"--window must be even and >= 2, got {args.window}")
        return 2
    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip())
    try:
        written = export_model(args.model_dir, args.out, args.mouse, args.window, graphs, half=args.half)
    except ExportError as err:
        get_logger("export").error(str(err))
        return 1
    except (CheckpointError, ValueError) as err:
        get_logger("export").error(str(err))
        return 2
    print(json.dumps(written))
    return 0


def export_model(model_dir: str | Path, out: str | Path, mice: list[str] | None = None, window: int | None = None,
                 graphs: tuple[str, ...] = ("forward", "gradient"), half: bool = False) -> dict:
    """Export every (or each named) mouse of a trained model to OUT/<mouse>/; {mouse: {graph: path}}.
    Raises CheckpointError, ValueError (unknown mouse) or ExportError (naming the mouse)."""
    from neurocine.decoder.encoder.checkpoint import load_encoder
    from neurocine.decoder.encoder.export import ExportError, export_mouse, write_half_precision

    encoder, config = load_encoder(model_dir, None if window is None else window // 2)
    mice = mice or list(encoder.neurons)
    unknown = sorted(set(mice) - set(encoder.neurons))
    if unknown:
        raise ValueError(f"unknown mice {unknown}; the model has {sorted(encoder.neurons)}")
    bad = [m for m in mice if not _SAFE_NAME.fullmatch(m) or m in (".", "..")]
    if bad:  # names come from the model's files: never let one become a path outside --out
        raise ValueError(f"mouse names {bad!r} cannot be folder names (letters, digits, '.', '_', '-' only); "
                         "rename them in the model's config.json")
    written = {}
    for mouse in mice:
        meta = {
            "model_dir": str(Path(model_dir).resolve()),
            "neuron_ids": config["neuron_ids"][mouse],
            "statistics": config["statistics"]["mice"][mouse],
            "validation": config.get("validation"),
        }
        try:
            paths = export_mouse(encoder, mouse, Path(out) / mouse, metadata=meta, graphs=graphs)
        except (ExportError, ValueError) as err:
            raise ExportError(f"mouse {mouse}: {err}") from err
        if half and "gradient" in paths:
            paths["gradient_fp16"] = write_half_precision(paths["gradient"])
        written[mouse] = {k: str(v) for k, v in paths.items()}
        get_logger("export").info(f"exported {mouse} -> {Path(out) / mouse}")
    return written
