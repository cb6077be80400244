"""Re-export the shipped models' ONNX graphs (decoder/models/<name>/) from their checkpoints, in place.

    python tools/reexport_models.py                 # default, seed1, seed2 (~1 min each on 2 CPU cores)
    python tools/reexport_models.py --models default

Why: the graph format follows decoder/encoder/export.py (GRAPH_VERSION); the weights do not change, so no
retraining. Keeps graph.json's provenance keys (model_dir, neuron_ids, statistics, validation), rewrites
forward.onnx, gradient.onnx and graph.json, removes a stale step.onnx, and prints each graph's node count
and size as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neurocine.streams.commandline import get_logger

log = get_logger("reexport")

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "decoder" / "models"
KEPT = ("model_dir", "neuron_ids", "statistics", "validation")


def reexport(folder: Path) -> dict[str, object]:
    import onnx

    from neurocine.decoder.encoder.checkpoint import load_encoder
    from neurocine.decoder.encoder.export import export_mouse

    old = json.loads((folder / "graph.json").read_text())
    encoder, _config = load_encoder(folder / "checkpoint")
    paths = export_mouse(encoder, old["mouse"], folder, metadata={k: old[k] for k in KEPT if k in old})
    return {
        g: {"nodes": len(onnx.load(str(paths[g])).graph.node), "bytes": paths[g].stat().st_size}
        for g in ("forward", "gradient")
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="default,seed1,seed2", help="comma-separated folders of decoder/models")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report = {}
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        folder = MODELS / name
        if not (folder / "checkpoint").is_dir() or not (folder / "graph.json").is_file():
            log.error(f"{folder} has no checkpoint/ or graph.json")
            return 2
        log.info(f"{name} ...")
        report[name] = reexport(folder)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
