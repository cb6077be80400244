"""Sensorium 2023 per-mouse folders: read chosen trials as one Session, write Sessions (or a simulator's
stream of trials) in the same layout.

Layout (one folder per mouse; trial ``i`` is one file in each ``data/`` sub-folder)::

    data/videos/{i}.npy        (H=36, W=64, T)  8-bit frames, stored as float32 so padding can be NaN
    data/responses/{i}.npy     (N, T)           deconvolved, unnormalised activity
    data/behavior/{i}.npy      (2, T)           [pupil dilation, running speed]
    data/pupil_center/{i}.npy  (2, T)           [x, y]
    meta/trials/tiers.npy      (K,)             tier name of each trial index
    meta/neurons/unit_ids.npy  (N,)             neuron ids (optional when reading: arange(N))
    meta/neurons/cell_motor_coordinates.npy (N, 3)
    meta/statistics/{videos,responses,behavior,pupil_center}/all/{min,max,mean,median,std}.npy

Trials are NaN-padded after their end (T up to 300 at 30 Hz). A padding column is one where every
response is NaN; a trial ends after its last column that is not padding, so a NaN neuron inside a trial
("not reported") is kept as NaN.

neurocine addition: the writer also stores ``meta/trials/n_frames.npy`` (K,) int64, the exact length of
each trial. When present the reader trusts it (after checking that the columns after it are padding);
this keeps a trial whose last frames report no neuron at all intact. Other readers ignore the file.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from streams.formats import FormatError
from streams.session import TIERS, Session, Trial, regular_timestamps

#: Per-trial sub-folders of data/, in the order the writer replaces them (responses last: a trial
#: exists for the reader only once its responses file does, so a crash never exposes half a trial).
TRIAL_DIRS: tuple[str, ...] = ("videos", "behavior", "pupil_center", "responses")

#: Statistics stored per key under meta/statistics/<key>/all/.
STATISTICS: tuple[str, ...] = ("min", "max", "mean", "median", "std")

#: Sensorium folders have no frame-rate field: they are 30 Hz by definition.
SENSORIUM_FRAME_RATE = 30.0

DEFAULT_PAD_TO = 300
DEFAULT_FRAME_SHAPE = (36, 64)

#: How far a float pixel may sit from an integer and still count as an 8-bit value.
_PIXEL_TOLERANCE = 1e-3

#: Memory used per block of neurons when the writer re-reads responses to take their medians.
_MEDIAN_BLOCK_BYTES = 256 * 2**20


# ---------------------------------------------------------------------------------------------- reading
def read_sensorium(folder: str | Path, trials: Sequence[int] | None = None, tier: str | None = None) -> Session:
    """The chosen trials (by file index and/or tier) played back to back as one 30 Hz replay session.

    Trials come in ascending index order with their NaN padding trimmed; each becomes one Trial
    (index, start, stop, tier). Raises FormatError naming the file and the fault on any bad input.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FormatError(f"{root}: no such folder (expected a Sensorium 2023 mouse folder)")
    data = root / "data"
    for name in ("responses", "behavior", "pupil_center"):
        if not (data / name).is_dir():
            raise FormatError(f"{data / name}: missing folder (required in a Sensorium mouse folder)")
    has_video = (data / "videos").is_dir()

    available = _trial_files(data / "responses")
    _check_no_lost_responses(data, available)
    tiers = _read_tiers(root / "meta" / "trials" / "tiers.npy", max(available))
    n_frames_hint = _read_n_frames(root / "meta" / "trials" / "n_frames.npy", max(available))
    chosen = _choose_trials(root, available, tiers, trials, tier)
    unit_ids = _read_unit_ids(root / "meta" / "neurons" / "unit_ids.npy")

    # Pass 1: shapes and lengths only, so the output can be allocated once (an hour is ~3.5 GB).
    layouts = [_inspect_trial(data, i, has_video, n_frames_hint) for i in chosen]
    n_neurons, first_resp = layouts[0].n_neurons, layouts[0].paths["responses"]
    for lay in layouts[1:]:
        if lay.n_neurons != n_neurons:
            raise FormatError(
                f"{lay.paths['responses']}: {lay.n_neurons} neurons (rows), but {first_resp} has {n_neurons}"
            )
    if unit_ids is not None and unit_ids.size != n_neurons:
        raise FormatError(
            f"{root / 'meta' / 'neurons' / 'unit_ids.npy'}: lists {unit_ids.size} neurons, "
            f"but {first_resp} has {n_neurons} rows"
        )
    _check_coordinates(root / "meta" / "neurons" / "cell_motor_coordinates.npy", n_neurons)
    frame_shape = layouts[0].frame_shape
    for lay in layouts[1:]:
        if lay.frame_shape != frame_shape:
            raise FormatError(
                f"{lay.paths['videos']}: frames of {lay.frame_shape}, but {layouts[0].paths['videos']} "
                f"has frames of {frame_shape}"
            )

    # Pass 2: copy the valid frames of each trial into place.
    total = sum(lay.n_valid for lay in layouts)
    traces = np.empty((total, n_neurons), dtype=np.float32)
    behaviour = np.empty((total, 4), dtype=np.float32)
    stimulus = None if frame_shape is None else np.empty((total, *frame_shape), dtype=np.uint8)
    session_trials: list[Trial] = []
    pos = 0
    for lay in layouts:
        n = lay.n_valid
        stop = pos + n
        traces[pos:stop] = _load_npy(lay.paths["responses"])[:, :n].T
        behavior = _load_npy(lay.paths["behavior"])
        pupil = _load_npy(lay.paths["pupil_center"])
        behaviour[pos:stop, 0] = behavior[1, :n]  # running speed
        behaviour[pos:stop, 1] = behavior[0, :n]  # pupil dilation
        behaviour[pos:stop, 2] = pupil[0, :n]
        behaviour[pos:stop, 3] = pupil[1, :n]
        if stimulus is not None:
            stimulus[pos:stop] = _video_frames_uint8(_load_npy(lay.paths["videos"]), n, lay.paths["videos"])
        session_trials.append(Trial(lay.index, pos, stop, tiers[lay.index]))
        pos = stop

    return Session(
        traces=traces,
        behaviour=behaviour,
        timestamps_ns=regular_timestamps(total, SENSORIUM_FRAME_RATE),
        neuron_ids=np.arange(n_neurons, dtype=np.int64) if unit_ids is None else unit_ids,
        frame_rate=SENSORIUM_FRAME_RATE,
        mouse_id=Path(os.path.abspath(root)).name,
        stimulus=stimulus,
        trials=session_trials,
        source="replay",
    )


def read_sensorium_statistics(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """meta/statistics as {key: {stat: array}} for the keys present (what normalisation needs)."""
    base = Path(folder) / "meta" / "statistics"
    if not base.is_dir():
        raise FormatError(f"{base}: missing folder (no statistics in this Sensorium folder)")
    out: dict[str, dict[str, np.ndarray]] = {}
    for key_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        out[key_dir.name] = {s: _load_npy(key_dir / "all" / f"{s}.npy", mmap=False) for s in STATISTICS}
    return out


@dataclasses.dataclass(frozen=True)
class _TrialLayout:
    """What pass 1 learnt about one trial: its files, valid length, N and frame shape."""

    index: int
    paths: dict[str, Path]
    n_valid: int
    n_neurons: int
    frame_shape: tuple[int, int] | None


def _load_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    """np.load with every failure (missing, truncated, corrupt, pickled) turned into a FormatError."""
    if not path.is_file():
        raise FormatError(f"{path}: missing file")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:
        raise FormatError(f"{path}: not a readable .npy file (truncated or corrupt?): {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise FormatError(f"{path}: holds an .npz archive, expected a single .npy array")
    return arr


def _check_numeric(arr: np.ndarray, path: Path) -> None:
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise FormatError(f"{path}: dtype {arr.dtype} is not a real number type")


def _trial_files(responses_dir: Path) -> dict[int, Path]:
    """Trial index -> responses file; the responses files define which trials exist."""
    found: dict[int, Path] = {}
    for path in responses_dir.glob("*.npy"):
        if path.name.startswith("."):
            continue  # a writer's temporary file
        stem = path.stem
        if not (stem.isdigit() and str(int(stem)) == stem):
            raise FormatError(f"{path}: unexpected file name (trial files are named <index>.npy, e.g. 0.npy)")
        found[int(stem)] = path
    if not found:
        raise FormatError(f"{responses_dir}: no trial files (<index>.npy)")
    return dict(sorted(found.items()))


def _check_no_lost_responses(data: Path, available: dict[int, Path]) -> None:
    """A trial with behaviour but no responses file before the last trial is a lost file, not a trial still
    being written (the writer writes responses last, so only the newest trial may lack them): an error."""
    last = max(available)
    for name in ("behavior", "pupil_center"):
        for path in (data / name).glob("*.npy"):
            stem = path.stem
            if stem.isdigit() and int(stem) < last and int(stem) not in available:
                raise FormatError(
                    f"{data / 'responses' / path.name}: missing, but {path} exists and later trials are complete "
                    "(a lost or deleted responses file; restore it or remove the trial's other files)")


def _read_tiers(path: Path, max_index: int) -> list[str]:
    arr = _load_npy(path, mmap=False)
    if arr.ndim != 1:
        raise FormatError(f"{path}: expected one tier name per trial, shape (K,), got {arr.shape}")
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    if arr.dtype.kind != "U":
        raise FormatError(f"{path}: expected strings, got dtype {arr.dtype}")
    tiers = [str(t) for t in arr]
    for k, name in enumerate(tiers):
        if name not in TIERS:
            raise FormatError(f"{path}: entry {k} is {name!r}, not a Sensorium tier {TIERS}")
    if len(tiers) <= max_index:
        raise FormatError(
            f"{path}: has {len(tiers)} entries, but data/responses/ holds trial {max_index} "
            f"(needs at least {max_index + 1})"
        )
    return tiers


def _read_n_frames(path: Path, max_index: int) -> np.ndarray | None:
    """The writer's exact trial lengths (neurocine addition), or None when absent."""
    if not path.exists():
        return None
    arr = _load_npy(path, mmap=False)
    if arr.ndim != 1 or arr.size <= max_index or not np.issubdtype(arr.dtype, np.integer):
        raise FormatError(f"{path}: expected (K>={max_index + 1},) integer trial lengths, got {arr.dtype} {arr.shape}")
    if (arr < 0).any():
        raise FormatError(f"{path}: negative trial length at entry {int(np.flatnonzero(arr < 0)[0])}")
    return arr.astype(np.int64)


def _choose_trials(
    root: Path,
    available: dict[int, Path],
    tiers: list[str],
    trials: Sequence[int] | None,
    tier: str | None,
) -> list[int]:
    span = f"{len(available)} trials with indices {min(available)}..{max(available)}"
    if tier is not None and tier not in TIERS:
        raise FormatError(f"{root}: unknown tier {tier!r}; Sensorium tiers are {TIERS}")
    if trials is None:
        chosen = sorted(available)
    else:
        requested = set()
        for t in trials:
            try:
                requested.add(operator.index(t))
            except TypeError:
                raise FormatError(f"{root}: trial index {t!r} is not an integer") from None
        missing = sorted(i for i in requested if i not in available)
        if missing:
            raise FormatError(f"{root / 'data' / 'responses'}: no trial {missing} (the folder holds {span})")
        chosen = sorted(requested)
        if tier is not None:
            wrong = [i for i in chosen if tiers[i] != tier]
            if wrong:
                raise FormatError(
                    f"{root}: trial {wrong[0]} is in tier {tiers[wrong[0]]!r}, not the requested {tier!r}"
                )
    if tier is not None:
        chosen = [i for i in chosen if tiers[i] == tier]
    if not chosen:
        what = f"in tier {tier!r}" if tier is not None else "selected"
        raise FormatError(f"{root}: no trials {what} (the folder holds {span})")
    return chosen


def _read_unit_ids(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    arr = _load_npy(path, mmap=False)
    if arr.ndim != 1:
        raise FormatError(f"{path}: expected shape (N,), got {arr.shape}")
    _check_numeric(arr, path)
    ids = arr.astype(np.int64)
    if not np.array_equal(ids, arr):
        raise FormatError(f"{path}: unit ids must be integers")
    if np.unique(ids).size != ids.size:
        raise FormatError(f"{path}: unit ids are not unique")
    return ids


def _check_coordinates(path: Path, n_neurons: int) -> None:
    if not path.exists():
        return
    arr = _load_npy(path)
    if arr.shape != (n_neurons, 3):
        raise FormatError(f"{path}: expected shape (N={n_neurons}, 3), got {arr.shape}")


def _inspect_trial(data: Path, index: int, has_video: bool, n_frames_hint: np.ndarray | None) -> _TrialLayout:
    """Check one trial's files agree (ndim, shape, T) and find how many of its frames are valid."""
    names = TRIAL_DIRS if has_video else TRIAL_DIRS[1:]
    paths = {name: data / name / f"{index}.npy" for name in names}
    expected_ndim = {"videos": 3, "behavior": 2, "pupil_center": 2, "responses": 2}
    arrays: dict[str, np.ndarray] = {}
    for name, path in paths.items():
        arr = _load_npy(path)
        if arr.ndim != expected_ndim[name]:
            raise FormatError(f"{path}: expected {expected_ndim[name]} dimensions, got shape {arr.shape}")
        _check_numeric(arr, path)
        arrays[name] = arr
    for name in ("behavior", "pupil_center"):
        if arrays[name].shape[0] != 2:
            raise FormatError(f"{paths[name]}: expected shape (2, T), got {arrays[name].shape}")
    resp = arrays["responses"]
    n_stored = resp.shape[1]
    for name, arr in arrays.items():
        if arr.shape[-1] != n_stored:
            raise FormatError(
                f"{paths[name]}: {arr.shape[-1]} frames (last axis), but {paths['responses']} has {n_stored}"
            )
    padding = np.isnan(resp).all(axis=0) if np.issubdtype(resp.dtype, np.floating) else np.zeros(n_stored, bool)
    if n_frames_hint is not None:
        n_valid = int(n_frames_hint[index])
        if n_valid > n_stored:
            raise FormatError(
                f"{data.parent / 'meta' / 'trials' / 'n_frames.npy'}: trial {index} has {n_valid} frames, "
                f"but {paths['responses']} stores only {n_stored}"
            )
        if not padding[n_valid:].all():
            col = n_valid + int(np.flatnonzero(~padding[n_valid:])[0])
            raise FormatError(
                f"{paths['responses']}: column {col} holds responses, but meta/trials/n_frames.npy ends "
                f"trial {index} after {n_valid} frames"
            )
    else:
        reported = np.flatnonzero(~padding)
        n_valid = int(reported[-1]) + 1 if reported.size else 0
    frame_shape = (int(arrays["videos"].shape[0]), int(arrays["videos"].shape[1])) if has_video else None
    return _TrialLayout(index, paths, n_valid, int(resp.shape[0]), frame_shape)


def _video_frames_uint8(video: np.ndarray, n_valid: int, path: Path) -> np.ndarray:
    """(H, W, T) stored frames -> (n_valid, H, W) uint8; only integer pixel values in 0..255 pass."""
    frames = np.moveaxis(np.asarray(video[:, :, :n_valid]), 2, 0)
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.integer):
        bad = (frames < 0) | (frames > 255)
        rounded = frames
    else:
        rounded = np.rint(frames)
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(frames - rounded) <= _PIXEL_TOLERANCE) | (rounded < 0) | (rounded > 255)
    if bad.any():
        t, y, x = (int(v) for v in np.argwhere(bad)[0])
        raise FormatError(
            f"{path}: frame {t} pixel (y={y}, x={x}) is {frames[t, y, x]!r}, not an 8-bit value "
            f"(videos must hold integers 0..255 in their {n_valid} valid frames)"
        )
    return rounded.astype(np.uint8)


# ---------------------------------------------------------------------------------------------- writing
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


def _histogram_statistics(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Exact min/max/mean/median/std of 8-bit pixels from their 256-bin histogram."""
    n = int(hist.sum())
    if n == 0:
        return {name: np.array(np.nan) for name in STATISTICS}
    values = np.arange(256, dtype=np.float64)
    present = np.flatnonzero(hist)
    mean = float((values * hist).sum() / n)
    std = float(np.sqrt((hist * (values - mean) ** 2).sum() / n))
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    hi = int(np.searchsorted(cum, n // 2, side="right"))
    return {
        "min": np.array(float(present[0])),
        "max": np.array(float(present[-1])),
        "mean": np.array(mean),
        "median": np.array((lo + hi) / 2),
        "std": np.array(std),
    }


def _column_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """NaN-ignoring statistics per column of (T, C); NaN for a column with no values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "min": np.nanmin(x, axis=0) if x.shape[0] else np.full(x.shape[1], np.nan),
            "max": np.nanmax(x, axis=0) if x.shape[0] else np.full(x.shape[1], np.nan),
            "mean": np.nanmean(x, axis=0),
            "median": np.nanmedian(x, axis=0),
            "std": np.nanstd(x, axis=0),
        }


def _nanmedian_rows(block: np.ndarray) -> np.ndarray:
    """Row medians ignoring NaN (NaN for an all-NaN row); sorts `block` in place."""
    if not np.isnan(block).any():
        return np.median(block, axis=1, overwrite_input=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(block, axis=1, overwrite_input=True)


__all__ = ["SensoriumWriter", "read_sensorium", "read_sensorium_statistics", "write_sensorium"]
