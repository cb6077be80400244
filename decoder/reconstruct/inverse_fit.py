"""Fitting the inverse decoder (inverse.py): reduced-rank ridge regression, closed form, numpy, deterministic.

Per head (its frame offsets, inverse.OFFSETS_FULL / OFFSETS_CAUSAL) the features are every neuron's standardised
response and the 4 behaviour channels at those offsets; the targets are the frames. The cost is one Gram
matrix of the features and one eigendecomposition of it, which then serve every ridge penalty (LAMBDAS) and
every rank (RANKS): both are chosen on held-out trials and the weights come from the same decomposition (no
refit). Everything runs in float32 BLAS. Two reductions keep it bounded at any size:
- the frames are fitted in the space of their top `OUTPUT_COMPONENTS` principal components (36x64 = 2,304
  pixels of smooth movies; the chosen ranks are far below it), and scored back in pixels;
- above `MAX_NEURONS` neurons, the responses are first projected on their top principal components (a
  randomised range finder), and the projection is folded into the exported first layer, so the graph still
  reads every neuron.
Measured by `neurocine bench calibrate` (seconds per stage) and `neurocine calibrate`'s summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from neurocine.decoder.reconstruct.inverse import OFFSETS_CAUSAL, OFFSETS_FULL, InverseError, InverseFit
from neurocine.streams.session import Session

LAMBDAS = (1e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7)  # ridge penalties tried (features standardised: ~T per diagonal)
RANKS = (8, 16, 32, 48, 64, 96, 128)
HOLDOUT = 0.1  # fraction of trials (the last ones) that choose the penalty and the rank
OUTPUT_COMPONENTS = 256
MAX_NEURONS = 1000
#: Frames per block of the Gram matrix's accumulation (a few BLAS calls of this height, bounded memory).
CHUNK_FRAMES = 4096


@dataclasses.dataclass
class _Data:
    """Standardised responses and behaviour per trial, and the frames as flat float32 pixels."""

    resp: list[np.ndarray]  # (T_k, K) per trial: z-scored responses (or their principal components)
    beh: list[np.ndarray]  # (T_k, 4)
    frames: list[np.ndarray]  # (T_k, P)


def features(resp_z: np.ndarray, beh_z: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """(T, len(offsets) * (K + 4)) features of every frame of one trial; outside the trial: 0 (the mean)."""
    t_len, k = resp_z.shape
    out = np.zeros((t_len, len(offsets), k + 4), np.float32)
    for j, o in enumerate(offsets):
        lo, hi = max(0, -o), min(t_len, t_len - o)
        if hi > lo:
            out[lo:hi, j, :k] = resp_z[lo + o : hi + o]
            out[lo:hi, j, k:] = beh_z[lo + o : hi + o]
    return out.reshape(t_len, -1)


def _neuron_components(resp: list[np.ndarray], k: int, seed: int = 0) -> np.ndarray:
    """(N, k) orthonormal directions spanning most of the responses' variance (randomised range finder with
    two power iterations: Halko, Martinsson & Tropp 2011)."""
    x = np.concatenate(resp)
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(x.T @ (x @ rng.standard_normal((x.shape[1], k + 10), dtype=np.float32)))[0]
    for _ in range(2):
        q = np.linalg.qr(x.T @ (x @ q))[0]
    small = x @ q  # (T, k + 10)
    _, _, vt = np.linalg.svd(small, full_matrices=False)
    return (q @ vt.T[:, :k]).astype(np.float32)


def _scores(preds: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """Mean over trials of the Pearson r over all (frame, pixel) pairs."""
    from neurocine.decoder.analysis.metrics import corr

    return float(np.mean([corr(p, y) for p, y in zip(preds, truths, strict=True)]))


def fit_inverse(session: Session, log: Callable[[str], None] = lambda msg: None,
                max_neurons: int = MAX_NEURONS) -> InverseFit:
    """Fit both heads on a training session (trials with their stimulus); deterministic."""
    if session.stimulus is None:
        raise InverseError(f"session {session.mouse_id}: the training tier has no videos to fit frames to")
    trials = [t for t in session.trials if t.stop > t.start]
    if len(trials) < 3:
        raise InverseError(f"fitting an inverse decoder needs at least 3 training trials, got {len(trials)}")
    traces = session.traces
    rows = np.concatenate([np.arange(t.start, t.stop) for t in trials])
    resp_mean = np.nan_to_num(np.nanmean(traces[rows], axis=0)).astype(np.float32)
    resp_std = np.maximum(np.nan_to_num(np.nanstd(traces[rows], axis=0), nan=1.0), 1e-3).astype(np.float32)
    beh_mean = np.nan_to_num(np.nanmean(session.behaviour[rows], axis=0)).astype(np.float32)
    beh_std = np.maximum(np.nan_to_num(np.nanstd(session.behaviour[rows], axis=0), nan=1.0), 1e-3).astype(np.float32)
    data = _Data(
        [np.nan_to_num((traces[t.start : t.stop] - resp_mean) / resp_std).astype(np.float32) for t in trials],
        [np.nan_to_num((session.behaviour[t.start : t.stop] - beh_mean) / beh_std).astype(np.float32)
         for t in trials],
        [session.stimulus[t.start : t.stop].reshape(t.stop - t.start, -1).astype(np.float32) for t in trials])
    n = session.n_neurons
    project = None
    if n > max_neurons:
        project = _neuron_components(data.resp, max_neurons)
        data.resp = [r @ project for r in data.resp]
        log(f"inverse: {n} neurons -> their top {max_neurons} principal components")
    n_hold = max(1, round(HOLDOUT * len(trials)))
    fit_idx, hold_idx = list(range(len(trials) - n_hold)), list(range(len(trials) - n_hold, len(trials)))
    heads, report = {}, {}
    for name, offsets in (("frame", OFFSETS_FULL), ("frame_causal", OFFSETS_CAUSAL)):
        (a, b, bias), report[name] = _fit_head(data, offsets, fit_idx, hold_idx, log, name)
        heads[name] = (_unproject(a, project, len(offsets)), b, bias)
        report[name]["neuron_components"] = None if project is None else max_neurons
    return InverseFit(np.asarray(session.neuron_ids, np.int64), resp_mean, resp_std, beh_mean, beh_std, heads, report)


def _unproject(a: np.ndarray, project: np.ndarray | None, n_offsets: int) -> np.ndarray:
    """First-layer weights over components (L*(K+4), r) -> over neurons (L*(N+4), r)."""
    if project is None:
        return a
    k, r = project.shape[1], a.shape[1]
    blocks = a.reshape(n_offsets, k + 4, r)
    full = np.concatenate([np.einsum("nk,lkr->lnr", project, blocks[:, :k]), blocks[:, k:]], axis=1)
    return full.reshape(-1, r).astype(np.float32)


def _fit_head(data: _Data, offsets: Sequence[int], fit_idx: list[int], hold_idx: list[int],
              log: Callable[[str], None], name: str) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict]:
    """One Gram matrix and one eigendecomposition; the penalty and the rank chosen on the held-out trials."""
    # the frames' principal components (centred): the targets live in their span
    frames_fit = [data.frames[i] for i in fit_idx]
    y_mean = np.mean(np.concatenate(frames_fit), axis=0)
    cov = sum((y - y_mean).T @ (y - y_mean) for y in frames_fit)
    k_out = min(OUTPUT_COMPONENTS, cov.shape[0])
    out_basis = np.linalg.eigh(cov.astype(np.float64))[1][:, ::-1][:, :k_out].astype(np.float32)  # (P, k_out)
    # the Gram matrix of the centred features and their products with the targets' components
    xs, ys = [], []
    for i in fit_idx:
        xs.append(features(data.resp[i], data.beh[i], offsets))
        ys.append((data.frames[i] - y_mean) @ out_basis)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    del xs, ys
    x_mean = x_all.mean(axis=0)
    x_all -= x_mean
    dim = x_all.shape[1]
    gram = np.zeros((dim, dim), np.float32)
    for lo in range(0, x_all.shape[0], CHUNK_FRAMES):
        block = x_all[lo : lo + CHUNK_FRAMES]
        gram += block.T @ block
    c_xy = x_all.T @ y_all  # (F, k_out)
    del x_all, y_all
    evals, evecs = np.linalg.eigh(gram)
    del gram
    evals = np.maximum(evals, 0.0)
    proj = evecs.T @ c_xy  # the targets' products in the features' eigenbasis
    held_x = [(features(data.resp[i], data.beh[i], offsets) - x_mean) @ evecs for i in hold_idx]
    held_truth = [data.frames[i] for i in hold_idx]

    def predict(coef: np.ndarray, basis: np.ndarray | None = None) -> list[np.ndarray]:
        c = coef if basis is None else (coef @ basis) @ basis.T
        return [np.clip((x @ c) @ out_basis.T + y_mean, 0, 255) for x in held_x]

    scores = []
    for lam in LAMBDAS:
        scores.append(_scores(predict(proj / (evals + lam)[:, None]), held_truth))
        log(f"inverse {name}: lambda {lam:g}: held-out r {scores[-1]:.4f}")
    best = int(np.argmax(scores))
    coef = proj / (evals + LAMBDAS[best])[:, None]  # (F, k_out) in the eigenbasis
    # reduced rank: the fitted outputs' principal directions (in the targets' component space)
    fitted = np.sqrt(evals)[:, None] * coef
    directions = np.linalg.eigh((fitted.T @ fitted).astype(np.float64))[1][:, ::-1].astype(np.float32)
    rank_scores = {}
    for r in RANKS:
        if r > directions.shape[1]:
            break
        rank_scores[r] = _scores(predict(coef, directions[:, :r]), held_truth)
        log(f"inverse {name}: rank {r}: held-out r {rank_scores[r]:.4f}")
    rank = next((r for r in rank_scores if rank_scores[r] >= 0.99 * scores[best]), max(rank_scores))
    v = directions[:, :rank]
    a = (evecs @ (coef @ v)).astype(np.float32)  # (F, r): features -> the rank-r code
    b = (v.T @ out_basis.T).astype(np.float32)  # (r, P): code -> pixels
    bias = (y_mean - x_mean @ a @ b).astype(np.float32)
    report = {"offsets": list(offsets), "lambda": LAMBDAS[best], "rank": rank,
              "heldout_r_by_lambda": {f"{lam_:g}": round(s, 4) for lam_, s in zip(LAMBDAS, scores, strict=True)},
              "heldout_r_full_rank": round(scores[best], 4),
              "heldout_r_by_rank": {str(r): round(s, 4) for r, s in rank_scores.items()},
              "heldout_trials": len(hold_idx), "fit_trials": len(fit_idx), "output_components": k_out}
    return (a, b, bias), report
