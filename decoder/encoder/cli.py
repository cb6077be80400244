"""CLI verbs of the encoder: `neurocine train` and `neurocine export` (heavy imports inside run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_EXAMPLE = """example:
  neurocine train --data data/mouse_a data/mouse_b --preset small --out models/small --epochs 20
  neurocine train --data data/mouse_a --preset small --out models/small --epochs 30 --resume
"""

EXPORT_EXAMPLE = """example:
  neurocine export models/small --out models/small/onnx
  neurocine export models/small --out /tmp/onnx --mouse mouse_a --window 32
writes DIR/<mouse>/forward.onnx, gradient.onnx and graph.json (inputs, outputs) per mouse; every graph
takes any number of windows per call.
"""


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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from decoder.encoder.data import DataError
    from decoder.encoder.train import TrainOptions, train

    if args.threads:
        torch.set_num_threads(args.threads)
    opts = TrainOptions(
        data=list(args.data),
        preset=args.preset,
        out=args.out,
        epochs=args.epochs,
        device=args.device,
        seed=args.seed,
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
        progress=not args.no_progress,
    )
    try:
        summary = train(opts)
    except (DataError, ValueError) as err:
        print(f"neurocine train: {err}", file=sys.stderr)
        return 2
    summary.pop("history", None)
    print(json.dumps(summary))
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
    from decoder.encoder.checkpoint import CheckpointError, load_encoder
    from decoder.encoder.export import ExportError, export_mouse, write_half_precision

    if args.window is not None and (args.window < 2 or args.window % 2):
        print(f"neurocine export: --window must be even and >= 2, got {args.window}", file=sys.stderr)
        return 2
    try:
        encoder, config = load_encoder(args.model_dir, None if args.window is None else args.window // 2)
    except CheckpointError as err:
        print(f"neurocine export: {err}", file=sys.stderr)
        return 2
    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip())
    mice = args.mouse or list(encoder.neurons)
    unknown = sorted(set(mice) - set(encoder.neurons))
    if unknown:
        print(f"neurocine export: unknown mice {unknown}; the model has {sorted(encoder.neurons)}", file=sys.stderr)
        return 2
    written = {}
    for mouse in mice:
        meta = {
            "model_dir": str(Path(args.model_dir).resolve()),
            "neuron_ids": config["neuron_ids"][mouse],
            "statistics": config["statistics"]["mice"][mouse],
            "validation": config.get("validation"),
        }
        try:
            paths = export_mouse(encoder, mouse, Path(args.out) / mouse, metadata=meta, graphs=graphs)
        except (ExportError, ValueError) as err:
            print(f"neurocine export: mouse {mouse}: {err}", file=sys.stderr)
            return 1
        if args.half and "gradient" in paths:
            paths["gradient_fp16"] = write_half_precision(paths["gradient"])
        written[mouse] = {k: str(v) for k, v in paths.items()}
        print(f"exported {mouse} -> {Path(args.out) / mouse}", file=sys.stderr)
    print(json.dumps(written))
    return 0
