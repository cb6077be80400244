"""Reading a Sensorium folder: the chosen trials as one 30 Hz replay Session, and its meta/statistics.

This module holds everything the reader checks before it trusts a folder (trial files, tiers, trial lengths,
neuron ids and coordinates, the shapes of each trial's files, 8-bit video frames), in two passes so an hour of
data is allocated once. Trials are trimmed of their NaN padding as the layout (`layout`) describes, trusting
``meta/trials/n_frames.npy`` when the writer left one; any fault is a FormatError naming the file.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurocine.streams.formats import FormatError
from neurocine.streams.formats.sensorium.layout import SENSORIUM_FRAME_RATE, STATISTICS, TRIAL_DIRS, _load_npy
from neurocine.streams.session import TIERS, Session, Trial, regular_timestamps

#: How far a float pixel may sit from an integer and still count as an 8-bit value.
_PIXEL_TOLERANCE = 1e-3


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
