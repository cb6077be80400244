"""Fit a new mouse's point readout on a frozen core's cached feature maps (the heart of `neurocine calibrate`).

Why cached: with the core frozen, its map of every calibration frame is computed once; the readout (a position,
C feature weights and a bias per neuron) is then a small Poisson regression on those maps, minutes on a CPU
where training an encoder takes hours.

1. Start (`initial_readout`): each neuron's receptive field in feature space, the correlation of its
   responses with every (channel, map cell) of the cached maps; its position starts at the peak of the
   summed squared correlations (a local centre of mass around it), its weights at the correlations there.
   Response-weighted stimulus averages would miss the complex cells, whose responses do not follow the
   pixels' sign; the core's features do.
2. Fit (`fit_readout`): Adam on the Poisson loss over random batches of frames, the neurons grouped by the
   2x2 block of map cells they read (`readouts.plan_blocks`), so a step costs N x 4C per frame; the loss on
   held-out frames is checked every `check_every` steps and the best parameters are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from neurocine.decoder.encoder.calibrate import ReadoutFitOptions
from neurocine.decoder.encoder.model import POISSON_EPS
from neurocine.decoder.encoder.readouts import PointReadout, bilinear_taps, plan_blocks, stable_softplus


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns to zero mean and unit std (NaN -> 0 after centring); returns (z, std)."""
    mean = np.nanmean(x, axis=0)
    z = np.nan_to_num(x - mean)
    std = np.sqrt((z * z).mean(axis=0))
    return z / np.maximum(std, 1e-6), std


def initial_readout(features: np.ndarray, responses: np.ndarray, size: tuple[int, int], n_init: int = 6000
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (N, 2) as (x, y) in -1..1, feature weights (N, C), bias (N,)) from response-feature
    correlations. features (T, C, H, W) float32 (the frozen core's map per frame); responses (T, N) in the
    readout's units (NaN = not reported)."""
    t, c, h, w = features.shape
    step = max(1, t // n_init)
    x = features[::step].reshape(-1, c * h * w)
    r = responses[::step]
    xz, xstd = _standardise(x)
    rz, _ = _standardise(r)
    corr = (xz.T @ rz) / max(1, xz.shape[0])  # (C*H*W, N)
    corr = corr.reshape(c, h * w, -1)
    score = (corr**2).sum(axis=0).T  # (N, H*W)
    peak = score.argmax(axis=1)
    py, px = np.divmod(peak, w)
    # centre of mass of the score in the 3x3 cells around the peak: a position between cell centres
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    near = (np.abs(yy.reshape(1, -1) - py[:, None]) <= 1) & (np.abs(xx.reshape(1, -1) - px[:, None]) <= 1)
    mass = score * near
    mass /= np.maximum(mass.sum(axis=1, keepdims=True), 1e-12)
    gy, gx = mass @ yy.reshape(-1), mass @ xx.reshape(-1)
    position = np.stack([gx / max(w - 1, 1) * 2 - 1, gy / max(h - 1, 1) * 2 - 1], axis=1)
    # weights: the correlations at the peak, in units of the raw features, scaled to a modest first drive
    scale = xstd.reshape(c, h * w)[:, peak].T  # (N, C)
    weights = corr[:, peak, np.arange(peak.size)].T / np.maximum(scale, 1e-6)
    drive = np.sqrt((corr[:, peak, np.arange(peak.size)].T ** 2).sum(axis=1, keepdims=True))
    weights = weights * (0.5 / np.maximum(drive, 1e-6))
    mean_rate = np.maximum(np.nan_to_num(np.nanmean(responses, axis=0), nan=0.1), 1e-3)
    bias = np.log(np.expm1(mean_rate))  # softplus^-1: the mean rate before any drive
    return position.astype(np.float32), weights.astype(np.float32), bias.astype(np.float32)


def point_rates(maps: torch.Tensor, position: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                size: tuple[int, int], block: int) -> torch.Tensor:
    """Rates (F, N) of a point readout on maps (F, C, H*W), differentiable in position, weights and bias.

    Neurons are grouped by the 2x2 block of cells they read (their grouping follows their positions at
    every call): per block one (F, 4C) x (4C, block) product."""
    f, c, _ = maps.shape
    n = position.shape[0]
    index, taps_w = bilinear_taps(position, size)
    width = size[1]
    cells_w = max(width - 1, 1)
    cell = (index[:, 0] // width) * cells_w + index[:, 0] % width
    n_cells = max(size[0] - 1, 1) * cells_w
    block_cell, slot, _ = plan_blocks(cell, n_cells, block)
    nb = int(block_cell.numel())
    tap_of_cell = torch.zeros(n_cells, 4, dtype=torch.long)
    tap_of_cell[cell] = index
    picked = maps.index_select(2, tap_of_cell[block_cell].reshape(-1))  # (F, C, nb*4)
    picked = picked.reshape(f, c, nb, 4).permute(2, 0, 3, 1).reshape(nb, f, 4 * c)
    w = (taps_w[:, :, None] * weights[:, None, :]).reshape(n, 4 * c)
    padded = w.new_zeros(nb * block, 4 * c).index_copy(0, slot, w).reshape(nb, block, 4 * c)
    y = torch.bmm(picked, padded.transpose(1, 2)).permute(1, 0, 2).reshape(f, nb * block)  # (F, slots)
    return stable_softplus(y.index_select(1, slot) + bias, 1.0)


def _poisson(rates: torch.Tensor, obs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    nll = rates - torch.nan_to_num(obs) * torch.log(rates + POISSON_EPS)
    return (nll * present).sum() / present.sum().clamp_min(1.0)


def fit_readout(readout: PointReadout, features: np.ndarray, responses: np.ndarray, fit_rows: np.ndarray,
                check_rows: np.ndarray, opts: ReadoutFitOptions = ReadoutFitOptions(),  # noqa: B008 (frozen)
                progress: Callable[[int, int, float], None] | None = None) -> dict[str, float]:
    """Fit `readout` (its current values are the start) in place; returns what happened (losses, best step).

    features (T, C, H, W) the frozen core's maps; responses (T, N) in the readout's units; fit_rows and
    check_rows index the frames used to fit and to pick the best step (held out)."""
    if readout.beta != 1.0:
        raise ValueError("fit_readout assumes softplus beta 1 (the point presets' value)")
    gen = torch.Generator().manual_seed(opts.seed)
    t, c, h, w = features.shape
    maps = torch.from_numpy(np.ascontiguousarray(features.reshape(t, c, h * w)))
    obs = torch.from_numpy(np.ascontiguousarray(responses, dtype=np.float32))
    present_all = (~torch.isnan(obs)).float()
    size = (h, w)
    params = [readout.features, readout.bias]
    optimiser = torch.optim.Adam([{"params": [readout.features], "weight_decay": opts.weight_decay},
                                  {"params": [readout.bias]},
                                  {"params": [readout.position], "lr": opts.position_lr}], lr=opts.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + np.cos(np.pi * min(1.0, s / max(1, opts.steps)))))
    fit_idx = torch.from_numpy(np.asarray(fit_rows, np.int64))
    check_idx = torch.from_numpy(np.asarray(check_rows, np.int64))

    def check_loss() -> float:
        with torch.no_grad():
            losses = []
            for part in torch.split(check_idx, 2048):
                rates = point_rates(maps[part], readout.position, readout.features, readout.bias, size, opts.block)
                losses.append(float(_poisson(rates, obs[part], present_all[part])) * len(part))
            return sum(losses) / max(1, len(check_idx))

    best = (check_loss(), 0, [p.detach().clone() for p in (*params, readout.position)])
    first = best[0]
    for step in range(1, opts.steps + 1):
        rows = fit_idx[torch.randint(len(fit_idx), (min(opts.batch_frames, len(fit_idx)),), generator=gen)]
        rates = point_rates(maps[rows], readout.position, readout.features, readout.bias, size, opts.block)
        loss = _poisson(rates, obs[rows], present_all[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            readout.position.clamp_(-1.0, 1.0)
        if step % opts.check_every == 0 or step == opts.steps:
            held = check_loss()
            if held < best[0]:
                best = (held, step, [p.detach().clone() for p in (*params, readout.position)])
            if progress:
                progress(step, opts.steps, held)
            if step - best[1] >= opts.patience * opts.check_every:
                break
    with torch.no_grad():
        for p, v in zip((*params, readout.position), best[2], strict=True):
            p.copy_(v)
    return {"heldout_loss_start": round(first, 5), "heldout_loss_best": round(best[0], 5), "best_step": best[1],
            "steps": step}
