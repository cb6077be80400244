"""The published offline reconstruction (Bauer, Margrie & Clopath, eLife 2026), batched, and the alpha mask.

Per iteration (all windows in one batched backend call per encoder):
1. cut the movie estimate into 32-frame windows, stride 8, the last aligned to the end;
2. each encoder: Poisson loss (mean) of predicted vs recorded responses per window, d loss / d window,
   divided by its L2 norm + 1e-6; averaged over encoders (only in `ensemble="gradients"` mode);
3. per frame, the mean over the windows covering it; then the update of decoder/reconstruct/optimiser.py
   (the binary mask alpha >= 0.5, clip +-1, first-moment Adam with beta 0.9, lr 1000 warmed up over 10
   iterations, the video clipped to [0, 255]) with the iteration as the step number.
Start: uniform grey 127.5 (the paper), or a given movie (`init_video`: the inverse decoder's estimate,
decoder/reconstruct/inverse.py). Ensembles (the paper's default): each encoder reconstructs separately and
the videos are averaged (`ensemble="videos"`); averaging gradients is the paper's worse alternative.
Stopping (`AutoStop`, not in the paper): a fixed count overfits single-trial noise (`neurocine bench quality`
scores the counts; README, "The first guess"), and the best count depends on the movie. So a tenth of the
neurons is left out of the loss, their Poisson loss is checked every few iterations, the optimisation stops
once it has not improved for a while, and (by default) restarts with every neuron for the best count found.
No ground truth is needed, and no randomness anywhere: the same inputs give the same movie.

Alpha ("transparency") mask per mouse, learned on the (36, 64) movie frame (the paper's 64x64 is the
DwiseNeuro input with the frame in rows 14..49; the rest is padding no reconstruction touches):
alpha starts at 0; per iteration a trial's video A is blended with another trial's video B as
alpha * A + (1 - alpha) * B, the MSE between predicted and A's recorded responses is differentiated
w.r.t. the blend, d/d alpha_t = g_t * (A_t - B_t) is divided by its L2 norm over (t, y, x), averaged over
time, Gaussian-blurred (sigma 5 px), and alpha takes a step of 10 down that gradient, then is clipped to
[0, 1]. Thresholds: alpha >= 0.5 is the optimisation mask; alpha >= 1 (pixels whose alpha saturated:
fully the trial's own video) is the evaluation mask (the paper's threshold 1 for the evaluation pixels); the
clip to [0, 1] is our reading that makes threshold 1 meaningful.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from neurocine.decoder.reconstruct.backends import Ensemble, GradientBackend, as_ensemble, normalised_window_grad
from neurocine.decoder.reconstruct.optimiser import (
    UpdateSettings,
    blur_gradient,
    momentum_update,
    prepare_gradient,
)
from neurocine.decoder.reconstruct.windows import (
    STRIDE,
    WINDOW,
    WindowError,
    fold_windows,
    gather_windows,
    window_starts,
)

GREY = 127.5
#: The command line's gradient blur (px): not the paper's (0), but the encoders small enough for a CPU have
#: strided stems whose input gradients carry a pixel grid; bench quality measures both.
DEFAULT_GRAD_BLUR = 2.0
MASK_FILE = "alpha_mask.npy"
OPT_THRESHOLD = 0.5
EVAL_THRESHOLD = 1.0


class ReconstructionError(ValueError):
    """Inputs to a reconstruction have the wrong shape or contents."""


@dataclasses.dataclass(frozen=True)
class OfflineConfig(UpdateSettings):
    """The published method's constants (defaults; the update's in UpdateSettings) and the knobs a benchmark
    turns."""

    iterations: int = 1000
    window: int = WINDOW
    stride: int = STRIDE
    init: float = GREY
    ensemble: str = "videos"  # or "gradients"

    def __post_init__(self) -> None:
        if (error := self.update_error()) is not None:
            raise ReconstructionError(error)
        if self.iterations < 0:
            raise ReconstructionError(f"iterations must be >= 0, got {self.iterations}")
        if self.ensemble not in ("videos", "gradients"):
            raise ReconstructionError(f"an offline ensemble must be 'videos' or 'gradients', got {self.ensemble!r}"
                                      + (" (cycle is for streaming, where steps are short of time)"
                                         if self.ensemble == "cycle" else ""))


@dataclasses.dataclass(frozen=True)
class AutoStop:
    """Stop when held-out neurons stop improving (see the module docstring); the numbers are defaults of
    `neurocine reconstruct --iterations auto`, measured in `neurocine bench quality`."""

    holdout: float = 0.1  # fraction of neurons left out of the loss
    check_every: int = 5  # iterations between checks of their loss (a forward pass each)
    patience: int = 4  # checks without a new best before stopping
    max_iterations: int = 400
    refit: bool = True  # optimise again with every neuron for the best count found
    seed: int = 0  # which neurons are held out

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1 or self.check_every < 1 or self.patience < 1 or self.max_iterations < 1:
            raise ReconstructionError(f"bad auto-stop settings in {self}")

    def held_out(self, n: int) -> np.ndarray:
        """(n,) bool: the neurons left out of the loss (deterministic)."""
        k = max(1, round(self.holdout * n))
        mask = np.zeros(n, bool)
        mask[np.random.default_rng(self.seed).permutation(n)[:k]] = True
        return mask


@dataclasses.dataclass
class Reconstruction:
    """A reconstructed movie (T, 36, 64) float32 0..255, the loss per iteration and the time it took."""

    video: np.ndarray
    losses: np.ndarray
    seconds: float
    iterations: int
    provider: str = ""
    snapshots: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    #: with AutoStop: the count chosen per ensemble member, and the held-out loss at each check
    stopped_at: list[int] = dataclasses.field(default_factory=list)
    holdout_losses: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)

    def as_uint8(self) -> np.ndarray:
        return np.clip(np.rint(self.video), 0, 255).astype(np.uint8)


def fill_behaviour(behaviour: np.ndarray, default: np.ndarray | None = None) -> np.ndarray:
    """Replace NaN behaviour by the last measured value of that channel (the default, 0, before any)."""
    b = np.array(behaviour, dtype=np.float32, copy=True)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ReconstructionError(f"behaviour must be (T, 4), got shape {b.shape}")
    last = np.zeros(4, np.float32) if default is None else np.asarray(default, np.float32)
    for t in range(b.shape[0]):
        bad = ~np.isfinite(b[t])
        if bad.any():
            b[t, bad] = last[bad]
        last = b[t]
    return b


def check_inputs(
    ens: Ensemble,
    responses: np.ndarray,
    behaviour: np.ndarray,
    mask: np.ndarray | None,
    weights: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    responses = np.asarray(responses, dtype=np.float32)
    if responses.ndim != 2 or responses.shape[1] != ens.n_neurons:
        raise ReconstructionError(f"responses must be (T, N={ens.n_neurons}), got shape {responses.shape}")
    t = responses.shape[0]
    behaviour = np.asarray(behaviour, dtype=np.float32)
    if behaviour.shape != (t, 4):
        raise ReconstructionError(f"behaviour must be (T={t}, 4), got shape {behaviour.shape}")
    if np.isinf(responses).any():
        raise ReconstructionError("responses hold inf (NaN marks a missing value; inf is never valid)")
    m = np.ones((36, 64), np.float32) if mask is None else np.asarray(mask).astype(np.float32)
    if m.shape != (36, 64):
        raise ReconstructionError(f"mask must be (36, 64), got shape {m.shape}")
    w = np.ones(ens.n_neurons, np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != (ens.n_neurons,):
        raise ReconstructionError(f"neuron weights must be (N={ens.n_neurons},), got shape {w.shape}")
    return responses, fill_behaviour(behaviour), m, w


def _heldout_loss(ens: Ensemble, video_w: np.ndarray, beh_w: np.ndarray, resp_w: np.ndarray,
                  held: np.ndarray) -> float:
    """Poisson loss (mean) of the held-out neurons' recorded responses under the current movie."""
    pred = ens.predict(video_w, beh_w)[:, held, :].astype(np.float64)
    obs = resp_w[:, held, :].astype(np.float64)
    ok = np.isfinite(obs)
    if not ok.any():
        return float("nan")
    return float(np.mean((pred - obs * np.log(pred + 1e-8))[ok]))


def _optimise(
    ens: Ensemble,
    responses: np.ndarray,
    behaviour: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    cfg: OfflineConfig,
    progress: Callable[[int, int, float], None] | None,
    snapshots: Sequence[int] = (),
    init_video: np.ndarray | None = None,
    auto: AutoStop | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], int, list[tuple[int, float]]]:
    """(movie, loss per iteration, snapshots, iterations kept, held-out loss per check).

    With `auto`: the neurons it holds out get weight 0, their loss is checked every `check_every` iterations,
    and the movie returned is the one of the best check (early stopping after `patience` checks without one).
    """
    t_len = responses.shape[0]
    window = ens.window or cfg.window
    try:
        starts = window_starts(t_len, window, cfg.stride)
    except WindowError as err:
        raise ReconstructionError(str(err)) from None
    beh_w = gather_windows(behaviour, starts, window)  # (B, W, 4)
    resp_w = np.ascontiguousarray(gather_windows(responses, starts, window).transpose(0, 2, 1))  # (B, N, W)
    if init_video is None:
        video = np.full((t_len, 36, 64), cfg.init, np.float32)
    else:
        video = np.clip(np.asarray(init_video, np.float32), 0.0, 255.0).copy()
        if video.shape != (t_len, 36, 64):
            raise ReconstructionError(f"init_video must be (T={t_len}, 36, 64), got {video.shape}")
    iterations = auto.max_iterations if auto else cfg.iterations
    held = auto.held_out(responses.shape[1]) if auto else None
    if held is not None:
        weights = np.where(held, 0.0, weights).astype(np.float32)
    m = np.zeros_like(video)
    losses = np.zeros(iterations, np.float32)
    wanted = set(snapshots)
    taken: dict[int, np.ndarray] = {}
    checks: list[tuple[int, float]] = []
    best: tuple[float, int, np.ndarray] | None = None
    if held is not None:
        checks.append((0, _heldout_loss(ens, gather_windows(video, starts, window), beh_w, resp_w, held)))
        best = (checks[0][1], 0, video.copy())
    done = iterations
    for i in range(1, iterations + 1):
        loss, g_win = normalised_window_grad(
            ens, gather_windows(video, starts, window), beh_w, resp_w, weights, cfg.norm_eps
        )
        g = prepare_gradient(fold_windows(g_win, starts, t_len, average=True), mask, cfg)
        momentum_update(video, m, g, i, cfg)
        losses[i - 1] = float(loss.mean())
        if i in wanted:
            taken[i] = video.copy()
        if progress is not None:
            progress(i, iterations, losses[i - 1])
        if held is not None and best is not None and i % auto.check_every == 0:  # type: ignore[union-attr]
            checks.append((i, _heldout_loss(ens, gather_windows(video, starts, window), beh_w, resp_w, held)))
            if checks[-1][1] < best[0]:
                best = (checks[-1][1], i, video.copy())
            elif (i - best[1]) >= auto.patience * auto.check_every:  # type: ignore[union-attr]
                done = i
                break
    if best is not None:
        return best[2], losses[:done], taken, best[1], checks
    return video, losses, taken, iterations, checks


def mix_prior(video: np.ndarray, prior: np.ndarray, weight: float) -> np.ndarray:
    """weight x prior (clipped to 0..255) + (1 - weight) x video, float32 (one definition: `batch` merges
    an ensemble's members and mixes after, bit for bit as reconstruct_offline does)."""
    g = np.float32(weight)
    return g * np.clip(np.asarray(prior, np.float32), 0.0, 255.0) + (1 - g) * np.asarray(video, np.float32)


def reconstruct_offline(
    backends: GradientBackend | Ensemble | Sequence[GradientBackend],
    responses: np.ndarray,
    behaviour: np.ndarray,
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    config: OfflineConfig | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    snapshots: Sequence[int] = (),
    init_video: np.ndarray | None = None,
    auto_stop: AutoStop | None = None,
    prior_mix: float = 0.0,
) -> Reconstruction:
    """Reconstruct one movie from responses (T, N) (NaN = not reported) and behaviour (T, 4).

    mask (36, 64): the optimisation mask (alpha >= 0.5), None for every pixel. weights (N,): per-neuron
    loss weights (0 drops a neuron). Several backends: see OfflineConfig.ensemble. snapshots: iterations
    after which to keep a copy of the movie (Reconstruction.snapshots; quality vs iterations in one run).
    init_video (T, 36, 64): the starting movie (default: grey). auto_stop: choose the iteration count by
    held-out neurons instead of `config.iterations` (see AutoStop). prior_mix: the result (and its snapshots)
    is prior_mix x init_video + the rest x the optimised movie (the inverse decoder's estimate as a prior:
    neurocine.decoder.reconstruct.inverse.INVERSE_MIX); 0 = the optimised movie alone.
    """
    if not 0.0 <= prior_mix <= 1.0 or (prior_mix and init_video is None):
        raise ReconstructionError(f"prior_mix must be in [0, 1] and needs init_video, got {prior_mix}")
    cfg = config or OfflineConfig()
    ens = as_ensemble(backends)
    responses, behaviour, m, w = check_inputs(ens, responses, behaviour, mask, weights)
    start = time.perf_counter()
    groups = [ens] if cfg.ensemble == "gradients" or len(ens) == 1 else [Ensemble([b]) for b in ens.members]
    runs = []
    for group in groups:
        video, losses, snaps, kept, checks = _optimise(group, responses, behaviour, m, w, cfg, progress, snapshots,
                                                       init_video, auto_stop)
        if auto_stop is not None and auto_stop.refit and kept > 0:
            video, losses, snaps, _, _ = _optimise(group, responses, behaviour, m, w,
                                                   dataclasses.replace(cfg, iterations=kept), progress, snapshots,
                                                   init_video)
        runs.append((video, losses, snaps, kept, checks))
    video = np.mean([r[0] for r in runs], axis=0).astype(np.float32)
    n_loss = min(len(r[1]) for r in runs)
    losses = np.mean([r[1][:n_loss] for r in runs], axis=0).astype(np.float32)
    snaps = {i: np.mean([r[2][i] for r in runs], axis=0).astype(np.float32)
             for i in runs[0][2] if all(i in r[2] for r in runs)}
    if prior_mix:
        video = mix_prior(video, init_video, prior_mix)
        snaps = {i: mix_prior(v, init_video, prior_mix) for i, v in snaps.items()}
    provider = ",".join(sorted({getattr(b, "provider", "?") for b in ens.members}))
    kept = [r[3] for r in runs]
    return Reconstruction(video, losses, time.perf_counter() - start, max(kept), provider, snaps,
                          stopped_at=kept if auto_stop else [],
                          holdout_losses=[r[4] for r in runs] if auto_stop else [])


def predict_movie(
    backends: GradientBackend | Ensemble | Sequence[GradientBackend],
    video: np.ndarray,
    behaviour: np.ndarray,
    stride: int = STRIDE,
    window: int = WINDOW,
) -> np.ndarray:
    """(T, N) predicted responses for a whole movie, windowed like the reconstruction (mean over windows)."""
    ens = as_ensemble(backends)
    video = np.asarray(video, np.float32)
    beh = fill_behaviour(behaviour)
    w = ens.window or window
    starts = window_starts(video.shape[0], w, stride)
    pred = ens.predict(gather_windows(video, starts, w), gather_windows(beh, starts, w))  # (B, N, W)
    return fold_windows(np.ascontiguousarray(pred.transpose(0, 2, 1)), starts, video.shape[0])


# ---------------------------------------------------------------------------------------------- alpha mask
@dataclasses.dataclass(frozen=True)
class MaskConfig:
    iterations: int = 1000
    step: float = 10.0
    blur_sigma: float = 5.0
    init: float = 0.0
    window: int = WINDOW
    stride: int = STRIDE


def train_alpha_mask(
    mse_backend: GradientBackend,
    trials: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    config: MaskConfig | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> np.ndarray:
    """Learn the (36, 64) alpha mask from trials [(video (T,36,64), behaviour (T,4), responses (T,N))].

    mse_backend must compute the MSE loss (TorchBackend(..., loss="mse")). Trial k is blended with trial
    k + 1 (cyclically), cycling through the trials over the iterations. Deterministic.
    """
    cfg = config or MaskConfig()
    if len(trials) < 2:
        raise ReconstructionError(f"the alpha mask needs at least 2 trials to blend, got {len(trials)}")
    if getattr(mse_backend, "loss", "mse") != "mse":
        raise ReconstructionError("train_alpha_mask needs a backend with loss='mse'")
    prepared = []
    for k, (video, beh, resp) in enumerate(trials):
        video = np.asarray(video, np.float32)
        if video.ndim != 3 or video.shape[1:] != (36, 64):
            raise ReconstructionError(f"trial {k}: video must be (T, 36, 64), got {video.shape}")
        prepared.append((video, fill_behaviour(beh), np.asarray(resp, np.float32)))
    alpha = np.full((36, 64), cfg.init, np.float32)
    window = mse_backend.window or cfg.window
    for i in range(cfg.iterations):
        va, beh, resp = prepared[i % len(prepared)]
        vb = prepared[(i + 1) % len(prepared)][0]
        t_len = min(va.shape[0], vb.shape[0])
        va, vb, beh, resp = va[:t_len], vb[:t_len], beh[:t_len], resp[:t_len]
        starts = window_starts(t_len, window, cfg.stride)
        blend = alpha * va + (1.0 - alpha) * vb
        loss, g_win = mse_backend.loss_and_grad(
            gather_windows(blend, starts, window),
            gather_windows(beh, starts, window),
            np.ascontiguousarray(gather_windows(resp, starts, window).transpose(0, 2, 1)),
        )
        g = fold_windows(g_win, starts, t_len, average=False) * (va - vb)
        g /= np.sqrt(np.sum(g.astype(np.float64) ** 2)) + 1e-6
        g_alpha = blur_gradient(g.mean(axis=0), cfg.blur_sigma)
        alpha = np.clip(alpha - cfg.step * g_alpha, 0.0, 1.0).astype(np.float32)
        if progress is not None:
            progress(i + 1, cfg.iterations, float(loss.mean()))
    return alpha


def masks_from_alpha(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(optimisation mask alpha >= 0.5, evaluation mask alpha >= 1) as bool (36, 64) arrays."""
    alpha = np.asarray(alpha, np.float32)
    return alpha >= OPT_THRESHOLD, alpha >= EVAL_THRESHOLD - 1e-6


def save_alpha_mask(alpha: np.ndarray, model_path: str | Path) -> Path:
    """Write alpha beside the model: MODEL_DIR/alpha_mask.npy (a file model: its folder)."""
    p = Path(model_path)
    folder = p if p.is_dir() else p.parent
    out = folder / MASK_FILE
    np.save(out, np.asarray(alpha, np.float32))
    return out


def load_alpha_mask(model_path: str | Path) -> np.ndarray | None:
    """The alpha mask saved beside a model, or None when there is none."""
    p = Path(model_path)
    for cand in (p / MASK_FILE, p.parent / MASK_FILE):
        if cand.is_file():
            try:
                alpha = np.load(cand, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise ReconstructionError(f"{cand}: not a readable .npy alpha mask ({e})") from e
            if not (alpha.shape == (36, 64) and alpha.dtype.kind in "fiu" and np.isfinite(alpha).all()):
                raise ReconstructionError(
                    f"{cand}: alpha mask must be finite numbers of shape (36, 64), got {alpha.dtype} {alpha.shape}")
            return alpha
    return None
