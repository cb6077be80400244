"""Training data: Sensorium-layout mouse folders -> random 32-frame windows and whole validation trials.

Each folder's train (and validation) tier is scanned once with neurocine.streams.formats.sensorium (trials trimmed
of their NaN padding by the release's rule, placeholder tiers refused, behaviour in BEHAVIOUR_CHANNELS order) and
stays on disk: `MouseData.train` / `.valid` are `FramesOnDisk`, indexed by frame rows like a Session's arrays
(`train.traces[rows]` (..., N), `.behaviour[rows]` (..., 4), `.stimulus[rows]` (..., 36, 64) uint8, `.trials`,
`.n_frames`), each index copying just those frames out of the memory-mapped files. So memory holds a batch, not
the data: ten release mice (~13 GB of float64 each) train in a few hundred MB of data (`neurocine bench
train-memory`). The scan also gathers the normalisation statistics of the training tier: behaviour mean/std per
channel, response std per neuron, video mean/std overall. Windows are sampled inside trials, never across a
boundary (nor a cut). No torch here: batches are numpy arrays.

The API callers build on (train, and multi-mouse / calibration code): `load_training_data(folder, window,
valid_tier)` -> MouseData, `load_mice(folders, window, valid_tier)`, `WindowSampler(mice, window, batch_size, seed)`
-> Batch, `trial_windows`, `sensorium_correlation`, `DataError`. `frames.load()` gives a tier as an in-memory
Session where one is really needed (a small calibration recording).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurocine.decoder.analysis.metrics import corr
from neurocine.streams.commandline import get_logger
from neurocine.streams.formats.sensorium.frames import FramesOnDisk
from neurocine.streams.formats.sensorium.layout import SENSORIUM_FRAME_RATE
from neurocine.streams.session import Session, TrialFrames

#: Trials shorter than a window cannot be trained on; a std below this is treated as this.
MIN_STD = 1e-3

#: Frames skipped at the start of each trial by the Sensorium metric.
METRIC_SKIP_FRAMES = 50

log = get_logger("train")


class DataError(ValueError):
    """A training folder cannot be used (missing tiers, too-short trials, inconsistent mice)."""


@dataclasses.dataclass
class MouseData:
    """One mouse: its training and validation frames (on disk) and the statistics derived from training."""

    mouse: str
    folder: str
    train: FramesOnDisk
    valid: FramesOnDisk | None
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


class TierStatistics:
    """Normalisation statistics gathered one trial at a time (NaN left out, population std, as np.nanstd):
    behaviour per channel and responses per neuron by merged moments (Chan et al.), pixels by an exact 256-bin
    histogram."""

    def __init__(self, n_neurons: int) -> None:
        self.beh = _Moments(4)
        self.resp = _Moments(n_neurons)
        self.pixels = np.zeros(256, np.int64)
        self.has_video = True

    def add(self, part: TrialFrames) -> None:
        self.beh.add(part.behaviour)
        self.resp.add(part.traces)
        if part.stimulus is None:
            self.has_video = False
        else:
            self.pixels += np.bincount(part.stimulus.reshape(-1), minlength=256)

    def result(self, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """(behaviour mean, behaviour std, response std, video mean, video std), as the trainer expects them."""
        if not self.has_video or not self.pixels.sum():
            raise DataError(f"{where}: the training tier has no videos (data/videos missing)")
        beh_mean = np.nan_to_num(self.beh.mean(), nan=0.0)
        beh_std = np.maximum(np.nan_to_num(self.beh.std(), nan=1.0), MIN_STD)
        resp_std = np.maximum(np.nan_to_num(self.resp.std(), nan=1.0), MIN_STD)
        values = np.arange(256, dtype=np.float64)
        n = self.pixels.sum()
        vmean = float((values * self.pixels).sum() / n)
        vstd = float(np.sqrt((self.pixels * (values - vmean) ** 2).sum() / n))
        return (beh_mean.astype(np.float32), beh_std.astype(np.float32), resp_std.astype(np.float32), vmean,
                max(vstd, MIN_STD))


class _Moments:
    """Per-column count, mean and sum of squared deviations over row blocks, NaN left out."""

    def __init__(self, n: int) -> None:
        self.count = np.zeros(n, np.float64)
        self.mean_ = np.zeros(n, np.float64)
        self.m2 = np.zeros(n, np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        ok = ~np.isnan(x)
        count = ok.sum(axis=0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, np.where(ok, x, 0.0).sum(axis=0) / np.maximum(count, 1), 0.0)
            m2 = np.where(ok, (x - mean) ** 2, 0.0).sum(axis=0)
            total = self.count + count
            delta = mean - self.mean_
            self.mean_ = np.where(total > 0, self.mean_ + delta * count / np.maximum(total, 1), 0.0)
            self.m2 = self.m2 + m2 + delta**2 * self.count * count / np.maximum(total, 1)
        self.count = total

    def mean(self) -> np.ndarray:
        return np.where(self.count > 0, self.mean_, np.nan)

    def std(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, np.sqrt(self.m2 / self.count), np.nan)


def _open_mouse(folder: str | Path):  # -> SensoriumFolder
    from neurocine.streams.formats import FormatError
    from neurocine.streams.formats.sensorium import SensoriumFolder
    from neurocine.streams.formats.sensorium.store import unzip_command

    try:
        mouse = SensoriumFolder(folder)
    except FormatError as err:
        raise DataError(f"{folder}: cannot read the train tier: {err}") from err
    if not mouse.store.random_access:
        raise DataError(f"{folder}: training reads windows at random, which a .zip cannot serve; unpack it first "
                        f"({unzip_command(folder)}) and pass the folder")
    return mouse


def load_training_data(folder: str | Path, window: int, valid_tier: str = "oracle",
                       minutes: float | None = None) -> MouseData:
    """Scan the train tier (and the validation tier, if the folder has one with responses) of one mouse folder;
    their frames stay on disk. `minutes`: only the train tier's first trials holding that many minutes."""
    from neurocine.streams.formats import FormatError

    mouse = _open_mouse(folder)
    try:
        chosen = mouse.choose(tier="train")
    except FormatError as err:
        raise DataError(f"{folder}: cannot read the train tier: {err}") from err
    stats = TierStatistics(mouse.n_neurons)
    limit = None if minutes is None else round(minutes * 60 * SENSORIUM_FRAME_RATE)
    train = FramesOnDisk.scan(mouse, chosen, visit=stats.add, max_frames=limit)
    if not any(tr.n_frames >= window for tr in train.trials):
        raise DataError(f"{folder}: no train trial has the {window} frames a window needs")
    mean, std, rstd, vmean, vstd = stats.result(str(folder))
    try:
        valid: FramesOnDisk | None = FramesOnDisk.scan(mouse, mouse.choose(tier=valid_tier))
    except FormatError as err:
        log.info(f"{folder}: no validation tier {valid_tier!r} ({err})")
        valid = None
    if valid is not None and not valid.trials:
        valid = None
    return MouseData(mouse_id_from_folder(folder), str(folder), train, valid, mean, std, rstd, vmean, vstd)


def load_mice(folders: Sequence[str | Path], window: int, valid_tier: str = "oracle",
              minutes: float | None = None) -> list[MouseData]:
    if not folders:
        raise DataError("no data folders given")
    mice = [load_training_data(f, window, valid_tier, minutes) for f in folders]
    ids = [m.mouse for m in mice]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"two data folders give the same mouse id {dupes}; rename one folder")
    return mice


def first_minutes(session: Session, minutes: float) -> Session:
    """The first whole trials of an in-memory session holding `minutes` (what `train --minutes` trains on)."""
    limit, total, keep = round(minutes * 60 * session.frame_rate), 0, []
    for tr in session.trials:
        if total >= limit:
            break
        keep.append(tr.index)
        total += tr.n_frames
    return session.select_trials(keep)


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
        # each field reads just these windows' frames out of the memory-mapped trial files
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
