"""Folders laid out exactly as the public Sensorium 2023 release is, for tests and `neurocine bench replay-memory`.

Why a generator: the release is ~148 GB and cannot ship with the tests, and what broke on it was its layout,
not its values: every field float64 (NaN-padded to 300 frames), videos on a 0..255 scale that are not whole
numbers, trials numbered in random order, test tiers whose responses are placeholders (zeros), meta/neurons
with the release's descriptive fields, meta/statistics/<key>/all/, and none of neurocine's own files
(no meta/trials/n_frames.npy). Values are random (seeded): this writes the layout, not a mouse. It uses numpy
alone (np.save), so it shares no code with the reader it tests.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

#: Tier sizes of one release mouse (train, oracle, live_test_main, live_test_bonus, final_test_main,
#: final_test_bonus), used as proportions.
RELEASE_TIER_COUNTS = {"train": 348, "oracle": 58, "live_test_main": 56, "live_test_bonus": 58,
                       "final_test_main": 57, "final_test_bonus": 134}
#: Tiers whose responses the public F-J release withholds (zeros in the files).
PLACEHOLDER_TIERS = ("live_test_main", "live_test_bonus", "final_test_main", "final_test_bonus")
RELEASE_FRAMES = 300
RELEASE_FRAME_SHAPE = (36, 64)
#: A release mouse's folder name (mouse A): dynamic<animal>-<session>-<scan>-Video-<hash>.
EXAMPLE_MOUSE = "dynamic29156-11-10-Video-8744edeac3b4d1ce16b680916b5267ce"


def release_tiers(n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """n_trials tier names in the release's proportions (at least one train trial), randomly ordered."""
    names = list(RELEASE_TIER_COUNTS)
    weights = np.array(list(RELEASE_TIER_COUNTS.values()), np.float64)
    counts = np.floor(weights / weights.sum() * n_trials).astype(int)
    counts[0] += n_trials - counts.sum()
    tiers = np.repeat(names, counts)
    rng.shuffle(tiers)
    return tiers.astype("<U16")


def write_release_like(
    folder: str | Path,
    n_trials: int = 20,
    n_neurons: int = 50,
    seed: int = 0,
    *,
    frames: int = RELEASE_FRAMES,
    frame_shape: tuple[int, int] = RELEASE_FRAME_SHAPE,
    short_fraction: float = 0.2,
    placeholders: tuple[str, ...] = PLACEHOLDER_TIERS,
    statistics: bool = True,
) -> Path:
    """Write one mouse in the release's layout; returns the folder. A `short_fraction` of the trials end early
    (NaN-padded), placeholder tiers hold zeros (over the trial's frames, NaN padding after), animal id from the
    folder's name when it is a release name (else 1)."""
    root = Path(folder)
    rng = np.random.default_rng(seed)
    for sub in ("videos", "responses", "behavior", "pupil_center"):
        (root / "data" / sub).mkdir(parents=True, exist_ok=True)
    tiers = release_tiers(n_trials, rng)
    h, w = frame_shape
    first_responses: np.ndarray | None = None
    sums = np.zeros(n_neurons)
    for i in range(n_trials):
        n = frames if rng.random() >= short_fraction else int(rng.integers(frames // 2, frames))
        video = np.full((h, w, frames), np.nan)
        # a smooth-ish movie resampled onto 0..255: whole numbers plus a fraction, as interpolation leaves them
        base = rng.uniform(20, 235, size=(h, w, 1)) + rng.normal(0, 8, size=(h, w, n)).cumsum(axis=2) / 4
        video[:, :, :n] = np.clip(base, 0, 255)
        responses = np.full((n_neurons, frames), np.nan)
        if tiers[i] in placeholders:
            responses[:, :n] = 0.0
        else:
            responses[:, :n] = rng.gamma(0.3, 0.8, size=(n_neurons, n)) * (rng.random((n_neurons, n)) < 0.3)
            sums += responses[:, :n].sum(axis=1)
            if first_responses is None:
                first_responses = responses[:, :n]
        behavior = np.full((2, frames), np.nan)
        behavior[0, :n] = np.abs(rng.normal(5.0, 1.0, n))  # pupil dilation
        behavior[1, :n] = np.abs(rng.normal(0.0, 4.0, n)).cumsum() / np.arange(1, n + 1)  # running speed
        pupil = np.full((2, frames), np.nan)
        pupil[:, :n] = rng.normal(0.0, 2.0, size=(2, n))
        for sub, arr in (("videos", video), ("responses", responses), ("behavior", behavior),
                         ("pupil_center", pupil)):
            np.save(root / "data" / sub / f"{i}.npy", arr)
    _write_meta(root, tiers, n_neurons, rng)
    if statistics:
        _write_statistics(root, n_neurons, first_responses)
    return root


def _animal_id(name: str) -> int:
    head = name.split("-", 1)[0]
    return int(head[len("dynamic"):]) if head.startswith("dynamic") and head[len("dynamic"):].isdigit() else 1


def _write_meta(root: Path, tiers: np.ndarray, n_neurons: int, rng: np.random.Generator) -> None:
    trials, neurons = root / "meta" / "trials", root / "meta" / "neurons"
    trials.mkdir(parents=True, exist_ok=True)
    neurons.mkdir(parents=True, exist_ok=True)
    np.save(trials / "tiers.npy", tiers)
    np.save(neurons / "unit_ids.npy", np.sort(rng.choice(np.arange(1, 4 * n_neurons + 1), n_neurons, replace=False)))
    np.save(neurons / "cell_motor_coordinates.npy", rng.uniform(-400, 400, size=(n_neurons, 3)))
    np.save(neurons / "animal_ids.npy", np.full(n_neurons, _animal_id(root.name), np.int64))
    np.save(neurons / "area.npy", np.full(n_neurons, "V1", "<U2"))
    np.save(neurons / "layer.npy", np.where(rng.random(n_neurons) < 0.7, "L2/3", "L4").astype("<U4"))
    np.save(neurons / "scan_idx.npy", np.full(n_neurons, 10, np.int64))
    np.save(neurons / "sessions.npy", np.full(n_neurons, 11, np.int64))


def _write_statistics(root: Path, n_neurons: int, responses: np.ndarray | None) -> None:
    """meta/statistics/<key>/all/ with the release's file names (values from the first trial: a fixture)."""
    sample = np.zeros((n_neurons, 1)) if responses is None else responses
    per_key = {"videos": np.array([0.0, 255.0]), "responses": sample.T,
               "behavior": np.array([[4.0, 0.0], [6.0, 8.0]]), "pupil_center": np.array([[-2.0, -2.0], [2.0, 2.0]])}
    for key, values in per_key.items():
        out = root / "meta" / "statistics" / key / "all"
        out.mkdir(parents=True, exist_ok=True)
        for name, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("median", np.median),
                         ("std", np.std)):
            np.save(out / f"{name}.npy", np.asarray(fn(values, axis=0)))


def zip_release(folder: str | Path, *, noise: bool = True) -> Path:
    """`<folder>.zip` holding `<name>/data/...` and `<name>/meta/...` as the release's zips do (with the
    `__MACOSX/` folder some zip tools add, when `noise`)."""
    root = Path(folder)
    out = root.parent / f"{root.name}.zip"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root.name}/{path.relative_to(root).as_posix()}")
        if noise:
            zf.writestr(f"__MACOSX/{root.name}/._data", b"\x00\x05\x16\x07")
    return out
