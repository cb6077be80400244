"""Training of the encoder on Sensorium-layout folders (several mice, one shared core).

DwiseNeuro's recipe, scaled by options: Poisson loss on responses divided by their per-neuron std, AdamW
with linear warm-up then cosine decay (per step), an exponential moving average (EMA) of the weights
(what is validated and saved), optional CutMix, and each epoch the Sensorium single-trial correlation on
the validation tier (oracle by default). The model folder holds the EMA model (checkpoint.py) and
train_state.pt, from which --resume continues bit for bit where the last finished epoch stopped.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurocine.decoder.encoder.checkpoint import TRAIN_STATE_FILE, save_checkpoint
from neurocine.decoder.encoder.data import (
    Batch,
    DataError,
    MouseData,
    WindowSampler,
    load_mice,
    sensorium_correlation,
    trial_windows,
)
from neurocine.decoder.encoder.model import NO_DECAY_SUFFIXES, Encoder, build_encoder, poisson_loss
from neurocine.decoder.encoder.presets import get_preset
from neurocine.streams.commandline import get_logger


@dataclasses.dataclass
class TrainOptions:
    data: list[str]
    preset: str
    out: str
    epochs: int = 20
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    batch_size: int = 8
    lr: float = 2.4e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    ema_decay: float = 0.999
    cutmix: float = 0.0  # probability of CutMix per batch
    steps_per_epoch: int | None = None  # default: the non-overlapping windows in the training data
    valid_tier: str = "oracle"
    progress: bool = True
    stop_after: int | None = None  # epochs to run in this call (the schedule still spans `epochs`)
    position_lr_scale: float = 10.0  # learning-rate multiplier of the gaussian readout's positions and widths
    stem_smoothness: float = 0.01  # weight of the Laplacian penalty on the stem's video kernels
    minutes: float | None = None  # train on the first minutes of each mouse's train tier only
    readout: str | None = None  # readout kind instead of the preset's

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.cutmix <= 1.0:
            raise ValueError(f"--cutmix is a probability in [0, 1], got {self.cutmix}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device here")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"--stop-after must be >= 1, got {self.stop_after}")
        if self.position_lr_scale <= 0 or self.stem_smoothness < 0:
            raise ValueError("--position-lr-scale must be > 0 and --stem-smoothness >= 0")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"--minutes must be > 0, got {self.minutes}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"--steps-per-epoch must be >= 1, got {self.steps_per_epoch}")


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay towards 0 at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WeightAverage:
    """EMA of all floating-point weights and buffers; the decay ramps up so early averages are usable."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
                else:
                    self.shadow[k].copy_(v)


def _to_torch(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(batch.video).to(device),
        torch.from_numpy(batch.behaviour).to(device),
        torch.from_numpy(batch.responses).to(device),
    )


def cutmix(
    video: torch.Tensor, behaviour: torch.Tensor, responses: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste a random box of another sample's movie; mix behaviour and responses by the box's area."""
    b, _, h, w = video.shape
    lam = float(rng.beta(1.0, 1.0))
    bh, bw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    perm = torch.from_numpy(rng.permutation(b)).to(video.device)
    video = video.clone()
    video[:, :, y0 : y0 + bh, x0 : x0 + bw] = video[perm][:, :, y0 : y0 + bh, x0 : x0 + bw]
    area = (bh * bw) / (h * w)
    behaviour = (1 - area) * behaviour + area * behaviour[perm]
    responses = (1 - area) * responses + area * responses[perm]
    return video, behaviour, responses


@torch.no_grad()
def predict_trials(encoder: Encoder, mouse: MouseData, device: torch.device, batch: int = 16) -> float | None:
    """Sensorium correlation of the encoder on the mouse's validation trials (None: no usable trial)."""
    session = mouse.valid
    window = encoder.config.window
    if session is None or session.stimulus is None:
        return None
    preds, obs = [], []
    std = encoder.stats[mouse.mouse].response_std.cpu().numpy()
    for trial in session.trials:
        starts = trial_windows(trial.n_frames, window)
        if not starts:
            continue
        rows = trial.start + np.asarray(starts)[:, None] + np.arange(window)[None, :]
        pred = np.zeros((trial.n_frames, session.n_neurons), dtype=np.float32)
        for i in range(0, len(starts), batch):
            r = rows[i : i + batch]
            video = torch.from_numpy(session.stimulus[r].astype(np.float32)).to(device)
            beh = session.behaviour[r]
            beh = torch.from_numpy(np.where(np.isnan(beh), mouse.behaviour_mean, beh).astype(np.float32)).to(device)
            out = encoder(video, beh, mouse.mouse).cpu().numpy() * std[None, :, None]  # (b, N, T)
            for j, start in enumerate(starts[i : i + batch]):
                pred[start : start + window] = out[j].T
        preds.append(pred)
        obs.append(session.traces[trial.start : trial.stop])
    if not preds or sum(max(0, len(p) - 50) for p in preds) == 0:
        return None
    return sensorium_correlation(preds, obs)


_LAPLACE = torch.tensor([[0.5, 1.0, 0.5], [1.0, -6.0, 1.0], [0.5, 1.0, 0.5]])


def stem_roughness(encoder: Encoder) -> torch.Tensor:
    """||Laplacian of the stem's video kernels||^2 / ||kernels||^2 (scale-free: a BatchNorm follows the stem).

    Why: without it the first layer learns high-frequency kernels that fit training noise; the model then
    predicts nearly as well, but its input gradient, which reconstruction follows, is pixel noise.
    """
    w = encoder.core.stem.weight[:, :1, 0]  # (C, 1, k, k)
    if w.shape[-1] < 3:
        return w.new_zeros(())
    lap = torch.nn.functional.conv2d(w, _LAPLACE.to(w)[None, None], padding=1)
    return (lap**2).sum() / (w**2).sum().clamp_min(1e-12)


def _config(opts: TrainOptions):  # -> EncoderConfig
    cfg = get_preset(opts.preset)
    return cfg.replace(readout=opts.readout) if opts.readout else cfg


def _build(opts: TrainOptions, mice: list[MouseData]) -> Encoder:
    cfg = _config(opts)
    encoder = build_encoder(cfg, {m.mouse: m.n_neurons for m in mice}, seed=opts.seed)
    frames = np.array([m.train.n_frames for m in mice], dtype=np.float64)
    encoder.video_mean.fill_(float(np.average([m.video_mean for m in mice], weights=frames)))
    encoder.video_std.fill_(float(np.average([m.video_std for m in mice], weights=frames)))
    for m in mice:
        st = encoder.stats[m.mouse]
        st.behaviour_mean.copy_(torch.from_numpy(m.behaviour_mean))
        st.behaviour_std.copy_(torch.from_numpy(m.behaviour_std))
        st.response_std.copy_(torch.from_numpy(m.response_std))
    return encoder


def _log(msg: str) -> None:
    get_logger("train").info(msg)


def train(opts: TrainOptions) -> dict[str, Any]:
    """Train (or resume) and return a summary: epochs, final loss, validation scores, model folder."""
    opts.validate()
    out = Path(opts.out)
    state_path = out / TRAIN_STATE_FILE
    if state_path.exists() and not opts.resume:
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or pick another --out")
    if opts.resume and not state_path.exists():
        raise ValueError(f"--resume: {state_path} not found (nothing to resume)")
    device = torch.device(opts.device)
    cfg = _config(opts)
    mice = load_mice(opts.data, cfg.window, opts.valid_tier, opts.minutes)
    torch.manual_seed(opts.seed)
    encoder = _build(opts, mice).to(device)
    sampler = WindowSampler(mice, cfg.window, opts.batch_size, seed=opts.seed)
    steps_per_epoch = opts.steps_per_epoch or max(1, sampler.windows_per_epoch() // opts.batch_size)
    total_steps = steps_per_epoch * opts.epochs
    warmup_steps = round(opts.warmup_epochs * steps_per_epoch)
    decay, no_decay, place = [], [], []
    for name, p in encoder.named_parameters():
        if name.endswith(NO_DECAY_SUFFIXES):
            place.append(p)
        else:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if place:
        groups.append({"params": place, "weight_decay": 0.0, "lr": opts.lr * opts.position_lr_scale})
    optimizer = torch.optim.AdamW(
        groups,
        lr=opts.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
    ema = WeightAverage(encoder, opts.ema_decay)
    mix_rng = np.random.default_rng(opts.seed + 1)
    epoch, step, history = 0, 0, []
    if opts.resume:
        # weights_only: a state file is data, never code (an unpickled file could run anything)
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as e:  # UnpicklingError for anything but tensors and plain containers
            raise ValueError(f"--resume: {state_path} is not a neurocine training state ({str(e)[:300]})") from e
        if state["preset"] != opts.preset or state["mice"] != [m.mouse for m in mice]:
            raise ValueError(
                f"--resume: {out} was trained with preset {state['preset']!r} on mice {state['mice']}, "
                f"not {opts.preset!r} on {[m.mouse for m in mice]}"
            )
        encoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ema.shadow = state["ema"]
        sampler.set_state(state["sampler"])
        mix_rng.bit_generator.state = state["mix_rng"]
        torch.set_rng_state(state["torch_rng"])
        epoch, step, history = state["epoch"], state["step"], state["history"]
        if epoch >= opts.epochs:
            _log(f"{out}: already trained for {epoch} epochs (asked {opts.epochs}); nothing to do")

    from tqdm import tqdm

    eval_model = build_encoder(encoder.config, encoder.neurons).to(device)
    last_epoch = opts.epochs if opts.stop_after is None else min(opts.epochs, epoch + opts.stop_after)
    while epoch < last_epoch:
        encoder.train()
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{opts.epochs}",
            disable=not opts.progress,
            file=sys.stderr,
            leave=False,
        )
        t0 = time.perf_counter()
        for _ in bar:
            batch = sampler.sample()
            video, beh, resp = _to_torch(batch, device)
            if opts.cutmix and mix_rng.random() < opts.cutmix:
                video, beh, resp = cutmix(video, beh, resp, mix_rng)
            std = encoder.stats[batch.mouse].response_std
            loss = poisson_loss(encoder(video, beh, batch.mouse), resp / std[None, :, None])
            total = loss + opts.stem_smoothness * stem_roughness(encoder) if opts.stem_smoothness else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            ema.update(encoder, step)
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        eval_model.load_state_dict(ema.shadow)
        eval_model.eval()
        scores = {m.mouse: predict_trials(eval_model, m, device) for m in mice}
        valid = [s for s in scores.values() if s is not None]
        score = float(np.mean(valid)) if valid else None
        epoch += 1
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "first_loss": losses[0],
                "last_loss": losses[-1],
                "losses": losses,
                "validation": score,
                "per_mouse": scores,
                "seconds": time.perf_counter() - t0,
            }
        )
        shown = "n/a (no validation trials)" if score is None else f"{score:.4f}"
        _log(f"epoch {epoch}/{opts.epochs}: loss {np.mean(losses):.4f}, validation correlation {shown}")
        _save(out, opts, eval_model, mice, history, score, epoch, step)
        torch.save(
            {
                "preset": opts.preset,
                "mice": [m.mouse for m in mice],
                "model": encoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.shadow,
                "sampler": sampler.state(),
                "mix_rng": mix_rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "step": step,
                "history": history,
            },
            str(state_path) + ".tmp",
        )
        Path(str(state_path) + ".tmp").replace(state_path)
    last = history[-1] if history else {}
    return {
        "model_dir": str(out),
        "epochs": epoch,
        "steps": step,
        "loss": last.get("loss"),
        "validation": last.get("validation"),
        "history": history,
    }


def _save(
    out: Path,
    opts: TrainOptions,
    model: Encoder,
    mice: list[MouseData],
    history: list[dict],
    score: float | None,
    epoch: int,
    step: int,
) -> None:
    extra = {
        "validation": {
            "tier": opts.valid_tier,
            "metric": "sensorium single-trial correlation (skip 50 frames)",
            "score": score,
            "per_mouse": history[-1]["per_mouse"],
            "epoch": epoch,
        },
        "training": {
            "data": [str(Path(d).resolve()) for d in opts.data],
            "epochs": epoch,
            "steps": step,
            "seed": opts.seed,
            "batch_size": opts.batch_size,
            "lr": opts.lr,
            "weight_decay": opts.weight_decay,
            "ema_decay": opts.ema_decay,
            "cutmix": opts.cutmix,
            "loss_per_epoch": [h["loss"] for h in history],
        },
    }
    save_checkpoint(out, model, {m.mouse: m.neuron_ids for m in mice}, extra)


__all__ = ["DataError", "TrainOptions", "lr_factor", "predict_trials", "train"]
