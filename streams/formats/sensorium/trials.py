"""One Sensorium trial: its files' headers checked without reading data, then its frames read and trimmed.

Trial length (the rule the public loaders follow, made explicit): every field is stored NaN-padded to the same
width; a field's padding is its trailing run of frames whose values are all NaN, and the trial ends where the
earliest field's padding begins (neuralpredictors' CutVideos cuts at the earliest first NaN over videos,
responses, behavior and pupil_center; the release's only NaNs are that padding, so the two rules agree on it).
A NaN inside a trial is kept as a value (a neuron not reported, a pupil not tracked) rather than cutting the
trial, except in a video, where it is an error (no frame can be shown with NaN pixels). Frames a later-ending
field holds beyond the trial's end are dropped and reported (`TrialReport.uneven`). When the folder carries
neurocine's meta/trials/n_frames.npy, that length is used, after checking every field is padding beyond it.

Videos: the release stores float frames on a 0..255 scale with no promise of whole numbers. Pixels are rounded
to the nearest integer for the wire (uint8), and how far they were off is counted (`TrialReport`); a pixel more
than PIXEL_SLACK outside 0..255 is not on that scale and is an error, one within it is clipped and counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neurocine.streams.formats import FormatError
from neurocine.streams.formats.sensorium.layout import TRIAL_DIRS
from neurocine.streams.formats.sensorium.store import Store

#: Expected dimensions of each per-trial file (frames on the last axis).
NDIM = {"videos": 3, "behavior": 2, "pupil_center": 2, "responses": 2}
#: How far outside 0..255 a pixel may lie and still be clipped onto the 8-bit scale (interpolation overshoot).
PIXEL_SLACK = 1.0
#: Rows of a responses file scanned at a time when looking for any activity (early exit on real data).
_ACTIVITY_ROWS = 256


@dataclasses.dataclass(frozen=True)
class TrialLayout:
    """A trial's files as their headers describe them (nothing read yet)."""

    index: int
    rels: dict[str, str]
    wheres: dict[str, str]
    n_stored: int
    n_neurons: int
    frame_shape: tuple[int, int] | None
    dtypes: dict[str, np.dtype]


@dataclasses.dataclass(frozen=True)
class TrialReport:
    """What reading one trial found: its length, each field's end, pixel rounding, and whether it holds activity."""

    n_frames: int
    field_ends: dict[str, int]
    pixels: int = 0
    pixels_rounded: int = 0
    max_pixel_offset: float = 0.0
    pixels_clipped: int = 0
    has_activity: bool = True

    @property
    def uneven(self) -> dict[str, int]:
        """Fields that go on after the trial's end: field -> frames dropped."""
        return {k: e - self.n_frames for k, e in self.field_ends.items() if e > self.n_frames}


def trial_layout(store: Store, index: int, has_video: bool) -> TrialLayout:
    """Check one trial's headers: dimensions, number types, (2, T) behaviour, the same T in every file."""
    names = TRIAL_DIRS if has_video else TRIAL_DIRS[1:]
    rels = {name: f"data/{name}/{index}.npy" for name in names}
    headers = {name: store.header(rel) for name, rel in rels.items()}
    for name, h in headers.items():
        if len(h.shape) != NDIM[name]:
            raise FormatError(f"{h.where}: expected {NDIM[name]} dimensions, got shape {h.shape}")
        if h.dtype.kind not in "iuf":
            raise FormatError(f"{h.where}: dtype {h.dtype} is not a real number type")
    for name in ("behavior", "pupil_center"):
        if headers[name].shape[0] != 2:
            raise FormatError(f"{headers[name].where}: expected shape (2, T), got {headers[name].shape}")
    resp = headers["responses"]
    n_stored = resp.shape[1]
    for h in headers.values():
        if h.shape[-1] != n_stored:
            raise FormatError(f"{h.where}: {h.shape[-1]} frames (last axis), but {resp.where} has {n_stored}")
    frame_shape = headers["videos"].shape[:2] if has_video else None
    return TrialLayout(index, rels, {k: h.where for k, h in headers.items()}, n_stored, resp.shape[0],
                       frame_shape, {k: h.dtype for k, h in headers.items()})  # type: ignore[arg-type]


def padding_start(arr: np.ndarray) -> int | None:
    """Where a field's trailing padding begins: after its last frame (last axis) holding any non-NaN value.
    None for an integer field: it cannot hold NaN, so it cannot mark where its trial ends."""
    t = arr.shape[-1]
    if arr.dtype.kind != "f":
        return None
    if t == 0:
        return 0
    values = ~np.isnan(np.asarray(arr).reshape(-1, t)).all(axis=0)
    held = np.flatnonzero(values)
    return int(held[-1]) + 1 if held.size else 0


def has_activity(store: Store, rel: str) -> bool:
    """Whether a responses file holds any value other than 0 and NaN (a placeholder holds none). Scans a block of
    neurons at a time, so real data answers after the first block."""
    arr = store.load(rel)
    return any(np.any(np.abs(arr[r0 : r0 + _ACTIVITY_ROWS]) > 0) for r0 in range(0, arr.shape[0], _ACTIVITY_ROWS))


def read_trial(store: Store, lay: TrialLayout, hint: int | None, hint_where: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, TrialReport]:
    """(traces (n, N) float32, behaviour (n, 4) float32, stimulus (n, H, W) uint8 or None, report) of one trial."""
    arrays = {name: store.load(rel) for name, rel in lay.rels.items()}
    found = {name: padding_start(arr) for name, arr in arrays.items()}
    ends = {name: end for name, end in found.items() if end is not None}
    if hint is not None:
        n = int(hint)
        if n > lay.n_stored:
            raise FormatError(f"{hint_where}: trial {lay.index} has {n} frames, but {lay.wheres['responses']} "
                              f"stores only {lay.n_stored}")
        for name in sorted(ends, key=lambda k: k != "responses"):
            if ends[name] > n:
                arr = arrays[name]
                held = ~np.isnan(np.asarray(arr).reshape(-1, arr.shape[-1])[:, n:]).all(axis=0)
                what = "responses" if name == "responses" else "values"
                raise FormatError(f"{lay.wheres[name]}: column {n + int(np.argmax(held))} holds {what}, but "
                                  f"meta/trials/n_frames.npy ends trial {lay.index} after {n} frames")
    else:
        n = min(ends.values(), default=lay.n_stored)
    traces = np.ascontiguousarray(np.asarray(arrays["responses"][:, :n]).T, dtype=np.float32)
    _check_finite(traces, lay.wheres["responses"], "response")
    behaviour = np.empty((n, 4), np.float32)
    behavior, pupil = np.asarray(arrays["behavior"][:, :n]), np.asarray(arrays["pupil_center"][:, :n])
    behaviour[:, 0] = behavior[1]  # running speed
    behaviour[:, 1] = behavior[0]  # pupil dilation
    behaviour[:, 2:] = pupil.T
    _check_finite(behaviour[:, :2], lay.wheres["behavior"], "behaviour value")
    _check_finite(behaviour[:, 2:], lay.wheres["pupil_center"], "pupil position")
    stimulus, pixel_facts = None, {}
    if "videos" in arrays:
        stimulus, pixel_facts = video_frames_uint8(arrays["videos"], n, lay.wheres["videos"])
    active = bool(np.any(np.abs(traces) > 0))
    return traces, behaviour, stimulus, TrialReport(n, ends, has_activity=active, **pixel_facts)


def _check_finite(values: np.ndarray, where: str, what: str) -> None:
    bad = np.isinf(values)
    if bad.any():
        t, k = (int(v) for v in np.argwhere(bad)[0])
        raise FormatError(f"{where}: {what} {k} of frame {t} is {float(values[t, k])} "
                          "(infinite values are not measurements)")


def video_frames_uint8(video: np.ndarray, n: int, where: str) -> tuple[np.ndarray, dict]:
    """(H, W, T) stored frames -> (n, H, W) uint8 and what rounding did: pixels counted, rounded, max offset,
    clipped. A NaN pixel inside the trial, or one more than PIXEL_SLACK outside 0..255, is an error."""
    frames = np.moveaxis(np.asarray(video[:, :, :n]), 2, 0)
    facts = {"pixels": int(frames.size)}
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames), facts
    values = frames.astype(np.float64)
    bad = ~np.isfinite(values) | (values < -PIXEL_SLACK) | (values > 255 + PIXEL_SLACK)
    if bad.any():
        t, y, x = (int(v) for v in np.argwhere(bad)[0])
        raise FormatError(
            f"{where}: frame {t} pixel (y={y}, x={x}) is {float(frames[t, y, x])}, not an 8-bit value (videos hold "
            f"0..255 in their {n} frames; every field of the trial reaches frame {n}, so this frame is shown)"
        )
    rounded = np.rint(values)
    offset = np.abs(values - rounded)
    clipped = (rounded < 0) | (rounded > 255)
    facts.update(pixels_rounded=int(np.count_nonzero(offset)), max_pixel_offset=float(offset.max(initial=0.0)),
                 pixels_clipped=int(np.count_nonzero(clipped)))
    return np.clip(rounded, 0, 255).astype(np.uint8), facts


def read_columns(store: Store, lay: TrialLayout, what: str, lo: int, hi: int) -> np.ndarray:
    """Frames [lo, hi) of a trial already read once (its length and pixels checked): 'traces' (k, N) float32,
    'behaviour' (k, 4) float32 or 'stimulus' (k, H, W) uint8. Only those frames' columns are copied out of the
    memory-mapped files, so a training window costs a window, not a trial."""
    if what == "traces":
        return np.ascontiguousarray(np.asarray(store.load(lay.rels["responses"])[:, lo:hi]).T, dtype=np.float32)
    if what == "behaviour":
        behavior = np.asarray(store.load(lay.rels["behavior"])[:, lo:hi])
        pupil = np.asarray(store.load(lay.rels["pupil_center"])[:, lo:hi])
        return np.stack([behavior[1], behavior[0], pupil[0], pupil[1]], axis=1).astype(np.float32)
    video = np.moveaxis(np.asarray(store.load(lay.rels["videos"])[:, :, lo:hi]), 2, 0)
    if video.dtype == np.uint8:
        return np.ascontiguousarray(video)
    return np.clip(np.rint(video.astype(np.float64)), 0, 255).astype(np.uint8)
