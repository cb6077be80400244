"""Training data: Sensorium-layout mouse folders -> random 32-frame windows and whole validation trials.

Each folder is read once with neurocine.streams.formats.sensorium (trials trimmed of their NaN padding, behaviour in
BEHAVIOUR_CHANNELS order) and kept in memory; windows are sampled inside trials, never across a boundary.
Normalisation statistics come from the training tier: behaviour mean/std per channel, response std per
neuron, video mean/std overall. No torch here: batches are numpy arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurocine.decoder.analysis.metrics import corr
from neurocine.streams.session import Session

#: Trials shorter than a window cannot be trained on; a std below this is treated as this.
MIN_STD = 1e-3

#: Frames skipped at the start of each trial by the Sensorium metric.
METRIC_SKIP_FRAMES = 50


class DataError(ValueError):
    """A training folder cannot be used (missing tiers, too-short trials, inconsistent mice)."""


@dataclasses.dataclass
class MouseData:
    """One mouse: its training and validation sessions and the statistics derived from training."""

    mouse: str
    folder: str
    train: Session
    valid: Session | None
    behaviour_mean: np.ndarray  # (4,)
    behaviour_std: np.ndarray  # (4,)
    response_std: np.ndarray  # (N,)
    video_mean: float
    video_std: float

    @property
    def neuron_ids(self) -> np.ndarray:
        return self.train.neuron_ids

    @property
    def n_neurons(self) -> int:
        return self.train.n_neurons

    def statistics(self) -> dict[str, list[float]]:
        return {
            "behaviour_mean": self.behaviour_mean.tolist(),
            "behaviour_std": self.behaviour_std.tolist(),
            "response_std": self.response_std.tolist(),
            "video_mean": float(self.video_mean),
            "video_std": float(self.video_std),
        }


def mouse_id_from_folder(folder: str | Path) -> str:
    """The folder's name, made safe as a module key ('.' is not allowed there)."""
    name = Path(folder).resolve().name.replace(".", "_")
    if not name:
        raise DataError(f"{folder}: cannot derive a mouse id from this path")
    return name


def _statistics(session: Session) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    beh = session.behaviour
    beh_mean = np.nan_to_num(np.nanmean(beh, axis=0), nan=0.0)
    beh_std = np.maximum(np.nan_to_num(np.nanstd(beh, axis=0), nan=1.0), MIN_STD)
    resp_std = np.maximum(np.nan_to_num(np.nanstd(session.traces, axis=0), nan=1.0), MIN_STD)
    if session.stimulus is None:
        raise DataError(f"mouse {session.mouse_id}: the training tier has no videos (data/videos missing)")
    video = session.stimulus.astype(np.float32)
    return (
        beh_mean.astype(np.float32),
        beh_std.astype(np.float32),
        resp_std.astype(np.float32),
        float(video.mean()),
        max(float(video.std()), MIN_STD),
    )


def load_training_data(folder: str | Path, window: int, valid_tier: str = "oracle") -> MouseData:
    """Read the train tier (and the validation tier, if the folder has one) of one mouse folder."""
    from neurocine.streams.formats import FormatError
    from neurocine.streams.formats.sensorium import read_sensorium

    try:
        train = read_sensorium(folder, tier="train")
    except FormatError as err:
        raise DataError(f"{folder}: cannot read the train tier: {err}") from err
    usable = [tr for tr in train.trials if tr.n_frames >= window]
    if not usable:
        raise DataError(f"{folder}: no train trial has the {window} frames a window needs")
    try:
        valid = read_sensorium(folder, tier=valid_tier)
    except FormatError:
        valid = None
    mean, std, rstd, vmean, vstd = _statistics(train)
    return MouseData(mouse_id_from_folder(folder), str(folder), train, valid, mean, std, rstd, vmean, vstd)


def load_mice(folders: Sequence[str | Path], window: int, valid_tier: str = "oracle") -> list[MouseData]:
    if not folders:
        raise DataError("no data folders given")
    mice = [load_training_data(f, window, valid_tier) for f in folders]
    ids = [m.mouse for m in mice]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"two data folders give the same mouse id {dupes}; rename one folder")
    return mice


@dataclasses.dataclass
class Batch:
    mouse: str
    video: np.ndarray  # (B, T, 36, 64) float32 0..255
    behaviour: np.ndarray  # (B, T, 4) float32, raw, NaN replaced by the training mean
    responses: np.ndarray  # (B, N, T) float32, raw, NaN where not reported


class WindowSampler:
    """Random windows inside trials; each batch is from one mouse, mice drawn in proportion to frames."""

    def __init__(self, mice: Sequence[MouseData], window: int, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.mice = list(mice)
        self.window = window
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self._starts = []
        for m in self.mice:
            starts = [np.arange(tr.start, tr.stop - window + 1) for tr in m.train.trials if tr.n_frames >= window]
            self._starts.append(np.concatenate(starts))
        sizes = np.array([len(s) for s in self._starts], dtype=np.float64)
        self._p = sizes / sizes.sum()

    def windows_per_epoch(self) -> int:
        """Non-overlapping windows in the training data: the natural epoch length."""
        return max(1, int(sum(len(s) for s in self._starts) // self.window))

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self) -> Batch:
        k = int(self.rng.choice(len(self.mice), p=self._p))
        m = self.mice[k]
        starts = self.rng.choice(self._starts[k], size=self.batch_size)
        rows = starts[:, None] + np.arange(self.window)[None, :]
        assert m.train.stimulus is not None
        beh = m.train.behaviour[rows]
        beh = np.where(np.isnan(beh), m.behaviour_mean, beh).astype(np.float32)
        return Batch(
            mouse=m.mouse,
            video=m.train.stimulus[rows].astype(np.float32),
            behaviour=beh,
            responses=np.ascontiguousarray(m.train.traces[rows].transpose(0, 2, 1)),
        )


def trial_windows(n_frames: int, window: int) -> list[int]:
    """Window starts that cover [0, n_frames) with stride `window`, the last one aligned to the end."""
    if n_frames < window:
        return []
    starts = list(range(0, n_frames - window + 1, window))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return starts


def sensorium_correlation(
    pred: Sequence[np.ndarray], obs: Sequence[np.ndarray], skip: int = METRIC_SKIP_FRAMES
) -> float:
    """Single-trial correlation: per neuron, Pearson r of prediction vs recording over all trials' frames
    after the first `skip` of each trial, then the mean over neurons. `analysis.metrics.corr`'s rules: NaN
    frames are left out per neuron, a flat neuron scores 0 and counts. pred/obs: per trial (T, N)."""
    p = np.concatenate([x[skip:] for x in pred]).astype(np.float64)
    o = np.concatenate([x[skip:] for x in obs]).astype(np.float64)
    if p.shape != o.shape or p.size == 0:
        raise ValueError(f"predictions {p.shape} and recordings {o.shape} must be equal and non-empty")
    return float(np.nanmean(corr(p, o, axis=0)))
