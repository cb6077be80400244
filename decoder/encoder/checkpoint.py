"""Encoder checkpoints: MODEL_DIR/model.safetensors (weights and normalisation buffers) + config.json.

config.json holds what is needed to rebuild and use the model without the training data: the preset and
its full architecture, mouse ids, neuron ids per mouse, frame size, window, data statistics and the
validation score. Training state for --resume lives apart in train_state.pt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.decoder.encoder.presets import EncoderConfig

FORMAT = "neurocine-encoder/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_STATE_FILE = "train_state.pt"


class CheckpointError(ValueError):
    """A model folder is missing files or its config does not match its weights."""


def save_checkpoint(
    model_dir: str | Path,
    encoder: Any,
    neuron_ids: dict[str, np.ndarray],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights and config atomically (temp file + rename); return the folder."""
    from safetensors.torch import save_file

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = sorted(set(encoder.neurons) - set(neuron_ids))
    if missing:
        raise CheckpointError(f"no neuron ids given for mice {missing}")
    for mouse, ids in neuron_ids.items():
        if len(ids) != encoder.neurons[mouse]:
            raise CheckpointError(f"mouse {mouse!r}: {len(ids)} neuron ids for {encoder.neurons[mouse]} neurons")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    statistics = {
        m: {
            "behaviour_mean": encoder.stats[m].behaviour_mean.tolist(),
            "behaviour_std": encoder.stats[m].behaviour_std.tolist(),
            "response_std": encoder.stats[m].response_std.tolist(),
        }
        for m in encoder.neurons
    }
    config = {
        "format": FORMAT,
        "preset": encoder.config.name,
        "architecture": encoder.config.to_dict(),
        "mice": list(encoder.neurons),
        "n_neurons": dict(encoder.neurons),
        "neuron_ids": {m: [int(i) for i in neuron_ids[m]] for m in encoder.neurons},
        "frame_size": [36, 64],
        "window": encoder.config.window,
        "behaviour_channels": ["running_speed", "pupil_dilation", "pupil_x", "pupil_y"],
        "statistics": {
            "video": {"mean": float(encoder.video_mean), "std": float(encoder.video_std)},
            "mice": statistics,
        },
        **(extra or {}),
    }
    tmp_weights = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": FORMAT})
    tmp_weights.replace(out / WEIGHTS_FILE)
    tmp_config = out / (CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(config, indent=1))
    tmp_config.replace(out / CONFIG_FILE)
    return out


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a neurocine model folder)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def load_encoder(model_dir: str | Path, frames: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(encoder in eval mode, config dict). frames: rebuild for another window (2*frames); the weights
    do not depend on it, only the fixed positional encoding does."""
    from safetensors.torch import load_file

    from neurocine.decoder.encoder.model import Encoder

    config = read_config(model_dir)
    arch = EncoderConfig.from_dict(config["architecture"])
    if frames is not None:
        arch = arch.replace(frames=int(frames))
    encoder = Encoder(arch, {m: int(n) for m, n in config["n_neurons"].items()})
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights")
    state = load_file(str(path))
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit the config (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    return encoder.eval(), config
