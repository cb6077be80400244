"""Writing a Sensorium folder: `SensoriumWriter` one trial at a time, `write_sensorium` for a whole Session.

The writer exists apart from the reader because writing has its own concerns: an hour of data (or a
simulator's stream of trials) must never sit in memory at once, every .npy is replaced atomically with
responses last so a reader never sees half a trial, and close() writes meta/ (tiers, the exact trial lengths
in ``meta/trials/n_frames.npy``, neurons and the statistics of `statistics`).
"""

from __future__ import annotations

import operator
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from neurocine.streams.formats import FormatError
from neurocine.streams.formats.sensorium.layout import (
    DEFAULT_FRAME_SHAPE,
    DEFAULT_PAD_TO,
    SENSORIUM_FRAME_RATE,
    TRIAL_DIRS,
    _load_npy,
)
from neurocine.streams.formats.sensorium.statistics import _column_statistics, _histogram_statistics, _nanmedian_rows
from neurocine.streams.session import TIERS, Session

#: Memory used per block of neurons when the writer re-reads responses to take their medians.
_MEDIAN_BLOCK_BYTES = 256 * 2**20


class SensoriumWriter:
    """Writes a Sensorium folder one trial at a time, so an hour of data never sits in memory at once.

    Each .npy is written to a temporary name and renamed into place, responses last; meta/ (tiers,
    neurons, statistics) is written by close(), which needs the trial indices to be exactly 0..K-1.
    Used as a context manager, an exception inside the block skips close(): a folder without meta/ is
    visibly unfinished rather than silently short. Bad input raises FormatError naming the trial.
    """

    def __init__(
        self,
        folder: str | Path,
        neuron_ids: Sequence[int] | np.ndarray,
        cell_coordinates: np.ndarray | None = None,
        frame_shape: tuple[int, int] = DEFAULT_FRAME_SHAPE,
        *,
        overwrite: bool = False,
    ) -> None:
        self.folder = Path(folder)
        ids = np.asarray(neuron_ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise FormatError(f"{self.folder}: neuron_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if np.unique(ids).size != ids.size:
            raise FormatError(f"{self.folder}: neuron_ids are not unique")
        self.neuron_ids = ids.astype(np.int64)
        n = self.neuron_ids.size
        if cell_coordinates is None:
            coords = np.zeros((n, 3), dtype=np.float32)
        else:
            coords = np.asarray(cell_coordinates, dtype=np.float32)
            if coords.shape != (n, 3):
                raise FormatError(f"{self.folder}: cell_coordinates must be (N={n}, 3), got {coords.shape}")
        self.cell_coordinates = coords
        if len(frame_shape) != 2 or min(frame_shape) <= 0:
            raise FormatError(f"{self.folder}: frame_shape must be (H, W) > 0, got {frame_shape}")
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))

        self._prepare_folder(overwrite)
        self._tiers: dict[int, str] = {}
        self._lengths: dict[int, int] = {}
        self._has_video: bool | None = None
        self._closed = False
        # Running statistics: responses per neuron (Chan et al. pairwise update), pixels as a histogram
        # (exact for 8-bit frames), behaviour kept whole (4 floats a frame) for its medians.
        self._resp_count = np.zeros(n, dtype=np.int64)
        self._resp_mean = np.zeros(n, dtype=np.float64)
        self._resp_m2 = np.zeros(n, dtype=np.float64)
        self._resp_min = np.full(n, np.inf)
        self._resp_max = np.full(n, -np.inf)
        self._pixel_hist = np.zeros(256, dtype=np.int64)
        self._behaviour_parts: list[np.ndarray] = []

    @property
    def n_neurons(self) -> int:
        return int(self.neuron_ids.size)

    @property
    def n_trials(self) -> int:
        return len(self._tiers)

    def _prepare_folder(self, overwrite: bool) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise FormatError(f"{self.folder}: exists and is not a folder")
        if self.folder.is_dir() and any(self.folder.iterdir()):
            if not overwrite:
                raise FormatError(
                    f"{self.folder}: folder exists and is not empty; refusing to mix trials "
                    "(pass overwrite=True to replace its data/ and meta/)"
                )
            for sub in ("data", "meta"):
                if (self.folder / sub).exists():
                    shutil.rmtree(self.folder / sub)
        for name in TRIAL_DIRS[1:]:
            (self.folder / "data" / name).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ trials
    def add_trial(
        self,
        index: int,
        tier: str,
        video: np.ndarray | None,
        responses: np.ndarray,
        behaviour: np.ndarray,
        pad_to: int | None = DEFAULT_PAD_TO,
    ) -> None:
        """Write trial `index`: video (T, H, W) uint8 or None, responses (T, N), behaviour (T, 4) in
        Session order, each NaN-padded to `pad_to` frames (None: stored at its own length)."""
        if self._closed:
            raise FormatError(f"{self.folder}: writer is closed")
        try:
            index = operator.index(index)
        except TypeError:
            raise FormatError(f"{self.folder}: trial index {index!r} is not an integer") from None
        where = f"{self.folder}: trial {index}"
        if index < 0:
            raise FormatError(f"{where}: index must be >= 0")
        if index in self._tiers:
            raise FormatError(f"{where}: already written (trial indices must be unique)")
        if tier not in TIERS:
            raise FormatError(f"{where}: unknown tier {tier!r}; Sensorium tiers are {TIERS}")
        resp = np.asarray(responses)
        if resp.ndim != 2 or resp.shape[1] != self.n_neurons:
            raise FormatError(f"{where}: responses must be (T, N={self.n_neurons}), got {resp.shape}")
        if not (np.issubdtype(resp.dtype, np.floating) or np.issubdtype(resp.dtype, np.integer)):
            raise FormatError(f"{where}: responses must be real numbers, got {resp.dtype}")
        n = resp.shape[0]
        beh = np.asarray(behaviour)
        if beh.shape != (n, 4):
            raise FormatError(f"{where}: behaviour must be (T={n}, 4), got {beh.shape}")
        if not (np.issubdtype(beh.dtype, np.floating) or np.issubdtype(beh.dtype, np.integer)):
            raise FormatError(f"{where}: behaviour must be real numbers, got {beh.dtype}")
        if video is not None:
            video = np.asarray(video)
            if video.shape != (n, *self.frame_shape):
                raise FormatError(
                    f"{where}: video must be (T={n}, {self.frame_shape[0]}, {self.frame_shape[1]}), got {video.shape}"
                )
            if video.dtype != np.uint8:
                raise FormatError(f"{where}: video must be uint8, got {video.dtype}")
        has_video = video is not None
        if self._has_video is not None and has_video != self._has_video:
            raise FormatError(
                f"{where}: {'has' if has_video else 'lacks'} a video, unlike the trials written before "
                "(either every trial has one or none does)"
            )
        if pad_to is not None and n > pad_to:
            raise FormatError(f"{where}: {n} frames, longer than pad_to={pad_to}")
        width = n if pad_to is None else int(pad_to)

        resp32 = resp.astype(np.float32, copy=False)
        beh32 = beh.astype(np.float32, copy=False)
        files: list[tuple[str, np.ndarray]] = []
        if video is not None:
            vid = np.full((*self.frame_shape, width), np.nan, dtype=np.float32)
            vid[:, :, :n] = np.moveaxis(video, 0, 2)
            files.append(("videos", vid))
        files.append(("behavior", _padded(beh32[:, [1, 0]].T, width)))
        files.append(("pupil_center", _padded(beh32[:, [2, 3]].T, width)))
        files.append(("responses", _padded(resp32.T, width)))
        if has_video and self._has_video is None:
            (self.folder / "data" / "videos").mkdir(parents=True, exist_ok=True)
        for name, arr in files:  # responses last: the trial appears only once it is whole
            _save_atomic(self.folder / "data" / name / f"{index}.npy", arr)

        self._has_video = has_video
        self._tiers[index] = tier
        self._lengths[index] = n
        self._update_statistics(video, resp32, beh32)

    def _update_statistics(self, video: np.ndarray | None, resp: np.ndarray, beh: np.ndarray) -> None:
        if video is not None:
            self._pixel_hist += np.bincount(video.ravel(), minlength=256)
        self._behaviour_parts.append(beh.copy())
        if resp.shape[0] == 0:
            return
        missing = np.isnan(resp)
        any_missing = bool(missing.any())
        x = resp.astype(np.float64)
        if any_missing:
            x[missing] = 0.0
        count = resp.shape[0] - missing.sum(axis=0) if any_missing else np.full(self.n_neurons, resp.shape[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = x.sum(axis=0) / count
            x -= mean
            if any_missing:
                x[missing] = 0.0
            m2 = np.einsum("tn,tn->n", x, x)
            total = self._resp_count + count
            delta = mean - self._resp_mean
            has = count > 0
            self._resp_mean = np.where(has, self._resp_mean + delta * count / np.maximum(total, 1), self._resp_mean)
            self._resp_m2 = np.where(
                has,
                self._resp_m2 + m2 + delta**2 * self._resp_count * count / np.maximum(total, 1),
                self._resp_m2,
            )
        self._resp_count = total
        self._resp_min = np.fmin(self._resp_min, np.fmin.reduce(resp, axis=0))
        self._resp_max = np.fmax(self._resp_max, np.fmax.reduce(resp, axis=0))

    # ------------------------------------------------------------------ finishing
    def close(self) -> None:
        """Write meta/ (tiers, trial lengths, neurons, statistics); trial indices must be 0..K-1."""
        if self._closed:
            return
        if not self._tiers:
            raise FormatError(f"{self.folder}: no trials were added; a Sensorium folder needs at least one")
        k = len(self._tiers)
        missing = sorted(set(range(k)) - set(self._tiers))
        if missing:
            extra = sorted(i for i in self._tiers if i >= k)
            raise FormatError(
                f"{self.folder}: trial indices must be 0..{k - 1} without gaps; missing {missing[:10]}, "
                f"beyond range {extra[:10]}"
            )
        meta = self.folder / "meta"
        for sub in ("trials", "neurons"):
            (meta / sub).mkdir(parents=True, exist_ok=True)
        _save_atomic(meta / "trials" / "tiers.npy", np.array([self._tiers[i] for i in range(k)], dtype="<U16"))
        _save_atomic(meta / "trials" / "n_frames.npy", np.array([self._lengths[i] for i in range(k)], np.int64))
        _save_atomic(meta / "neurons" / "unit_ids.npy", self.neuron_ids)
        _save_atomic(meta / "neurons" / "cell_motor_coordinates.npy", self.cell_coordinates)
        for key, stats in self._statistics().items():
            out = meta / "statistics" / key / "all"
            out.mkdir(parents=True, exist_ok=True)
            for name, value in stats.items():
                _save_atomic(out / f"{name}.npy", np.asarray(value, dtype=np.float32))
        self._closed = True

    def _statistics(self) -> dict[str, dict[str, np.ndarray]]:
        stats: dict[str, dict[str, np.ndarray]] = {}
        if self._has_video:
            stats["videos"] = _histogram_statistics(self._pixel_hist)
        seen = self._resp_count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            stats["responses"] = {
                "min": np.where(seen, self._resp_min, np.nan),
                "max": np.where(seen, self._resp_max, np.nan),
                "mean": np.where(seen, self._resp_mean, np.nan),
                "median": self._response_medians(),
                "std": np.sqrt(np.where(seen, self._resp_m2 / self._resp_count, np.nan)),
            }
        beh = np.concatenate(self._behaviour_parts).astype(np.float64)
        stats["behavior"] = _column_statistics(beh[:, [1, 0]])
        stats["pupil_center"] = _column_statistics(beh[:, [2, 3]])
        return stats

    def _response_medians(self) -> np.ndarray:
        """Per-neuron medians over valid frames, re-reading the written files a block of neurons at a time."""
        n = self.n_neurons
        total = sum(self._lengths.values())
        medians = np.full(n, np.nan)
        if n == 0 or total == 0:
            return medians
        rows = max(1, min(n, _MEDIAN_BLOCK_BYTES // (4 * total)))
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            block = np.empty((r1 - r0, total), dtype=np.float32)
            pos = 0
            for i in sorted(self._lengths):
                length = self._lengths[i]
                if length:
                    stored = _load_npy(self.folder / "data" / "responses" / f"{i}.npy")
                    block[:, pos : pos + length] = stored[r0:r1, :length]
                    del stored
                pos += length
            medians[r0:r1] = _nanmedian_rows(block)
        return medians

    def __enter__(self) -> SensoriumWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True


def write_sensorium(
    session: Session,
    folder: str | Path,
    pad_to: int | None = DEFAULT_PAD_TO,
    *,
    renumber: bool = False,
    overwrite: bool = False,
) -> None:
    """Write one file per Session trial (tier from the Trial). Trial indices must be 0..K-1, or pass
    renumber=True to number trials 0..K-1 in session order. Everything is checked before writing."""
    folder = Path(folder)
    if abs(session.frame_rate - SENSORIUM_FRAME_RATE) > 1e-6:
        raise FormatError(
            f"{folder}: Sensorium folders are {SENSORIUM_FRAME_RATE:g} Hz, the session is "
            f"{session.frame_rate:g} Hz (resample it first)"
        )
    k = len(session.trials)
    indices = list(range(k)) if renumber else [tr.index for tr in session.trials]
    if sorted(indices) != list(range(k)):
        raise FormatError(
            f"{folder}: session trial indices {indices[:10]}{'...' if k > 10 else ''} are not 0..{k - 1}; "
            "pass renumber=True to number them in session order"
        )
    for tr in session.trials:
        if tr.tier not in TIERS:
            raise FormatError(f"{folder}: trial {tr.index} has unknown tier {tr.tier!r}; tiers are {TIERS}")
        if pad_to is not None and tr.n_frames > pad_to:
            raise FormatError(f"{folder}: trial {tr.index} has {tr.n_frames} frames, longer than pad_to={pad_to}")
    frame_shape = session.stimulus_shape or DEFAULT_FRAME_SHAPE
    with SensoriumWriter(folder, session.neuron_ids, frame_shape=frame_shape, overwrite=overwrite) as writer:
        for index, tr in zip(indices, session.trials, strict=True):
            rows = slice(tr.start, tr.stop)
            writer.add_trial(
                index,
                tr.tier,
                None if session.stimulus is None else session.stimulus[rows],
                session.traces[rows],
                session.behaviour[rows],
                pad_to=pad_to,
            )


# ---------------------------------------------------------------------------------------------- helpers
def _padded(arr: np.ndarray, width: int) -> np.ndarray:
    """(C, T) -> (C, width) float32 with NaN after column T."""
    out = np.full((arr.shape[0], width), np.nan, dtype=np.float32)
    out[:, : arr.shape[1]] = arr
    return out


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    """np.save to a hidden temporary name, then rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
