"""A Sensorium tier as a session whose frames stay on disk: indexed by frame rows like a Session's arrays.

Why: training samples random 32-frame windows from every trial of several mice; holding a release mouse in
memory costs ~7 GB (float32), ten of them do not fit a 24 GB machine. `FramesOnDisk` reads each chosen trial
once when it is made (`scan`: the trial-length rule, 8-bit checks, and whatever statistics the caller gathers
from each trial) and keeps only the trials' places on its frame axis; afterwards `traces[rows]`,
`behaviour[rows]` and `stimulus[rows]` copy just those frames out of the memory-mapped files. So memory holds
a batch, not a folder. It has what the trainer reads of a Session: trials (start/stop on its frame axis),
n_frames, neuron ids, mouse id; `load()` gives the Session itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from neurocine.streams.formats.sensorium import trials as trial_files
from neurocine.streams.formats.sensorium.folder import SensoriumFolder
from neurocine.streams.formats.sensorium.layout import SENSORIUM_FRAME_RATE
from neurocine.streams.session import Session, Trial, TrialFrames, regular_timestamps


class FrameView:
    """One field of a FramesOnDisk, indexed by frame rows: an int, a slice, or an int array of any shape
    (the result has that shape plus the field's own: (N,), (4,) or (H, W))."""

    def __init__(self, owner: FramesOnDisk, what: str, item_shape: tuple[int, ...], dtype: Any) -> None:
        self._owner, self._what = owner, what
        self.shape = (owner.n_frames, *item_shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice):
            rows = np.arange(*key.indices(n))
        elif isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        else:
            rows = np.asarray(key)
            if rows.dtype.kind not in "iu":
                raise IndexError(f"frame rows must be integers, got {rows.dtype}")
        flat = rows.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"frame row out of range [0, {n})")
        out = np.empty((flat.size, *self.shape[1:]), self.dtype)
        owner = self._owner
        which = np.searchsorted(owner.starts, flat, side="right") - 1
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            local = flat[sel] - owner.starts[k]
            lo, hi = int(local.min()), int(local.max()) + 1
            block = trial_files.read_columns(owner.folder.store, owner.folder.layouts[owner.trials[k].index],
                                             self._what, lo, hi)
            out[sel] = block[local - lo]
        return out.reshape(*rows.shape, *self.shape[1:])


@dataclasses.dataclass
class FramesOnDisk:
    """Chosen trials of one mouse, their frames on disk (see the module docstring). Make it with `scan`."""

    folder: SensoriumFolder
    trials: list[Trial]

    def __post_init__(self) -> None:
        self.starts = np.asarray([tr.start for tr in self.trials], np.int64)
        self.n_frames = self.trials[-1].stop if self.trials else 0
        self.traces = FrameView(self, "traces", (self.n_neurons,), np.float32)
        self.behaviour = FrameView(self, "behaviour", (4,), np.float32)
        shape = self.folder.frame_shape
        self.stimulus = None if shape is None else FrameView(self, "stimulus", shape, np.uint8)

    @classmethod
    def scan(cls, folder: SensoriumFolder, indices: Sequence[int],
             visit: Callable[[TrialFrames], None] | None = None, max_frames: int | None = None) -> FramesOnDisk:
        """Read each trial once (checks, lengths; `visit` sees its frames), keep where each one lies; trials
        without activity are left out, with a warning. `max_frames`: stop once that many frames are kept (whole
        trials: the first minutes of a recording)."""
        trials, pos = [], 0
        for k, index in enumerate(indices):
            if max_frames is not None and pos >= max_frames:
                break
            got = folder.read_frames(Trial(index, 0, 0, folder.tiers[index], cut=k > 0))
            if got is None:
                continue
            n = got.n_frames
            placed = dataclasses.replace(got.trial, start=pos, stop=pos + n, cut=pos > 0)
            if visit is not None:
                visit(dataclasses.replace(got, trial=placed))
            trials.append(placed)
            pos += n
        return cls(folder, trials)

    @property
    def neuron_ids(self) -> np.ndarray:
        return self.folder.neuron_ids

    @property
    def n_neurons(self) -> int:
        return self.folder.n_neurons

    @property
    def mouse_id(self) -> str:
        return self.folder.mouse_id

    @property
    def frame_rate(self) -> float:
        return SENSORIUM_FRAME_RATE

    @property
    def stimulus_shape(self) -> tuple[int, int] | None:
        return self.folder.frame_shape

    def __len__(self) -> int:
        return self.n_frames

    def iter_trials(self) -> Iterator[TrialFrames]:
        """Each trial's frames, one trial in memory at a time."""
        stamps = regular_timestamps(self.n_frames, SENSORIUM_FRAME_RATE)
        for tr in self.trials:
            rows = slice(tr.start, tr.stop)
            stim = None if self.stimulus is None else self.stimulus[rows]
            yield TrialFrames(tr, self.traces[rows], self.behaviour[rows], stim, stamps[rows])

    def load(self) -> Session:
        """Every frame in memory, as one Session."""
        rows = slice(0, self.n_frames)
        return Session(
            traces=self.traces[rows],
            behaviour=self.behaviour[rows],
            timestamps_ns=regular_timestamps(self.n_frames, SENSORIUM_FRAME_RATE),
            neuron_ids=self.neuron_ids,
            frame_rate=SENSORIUM_FRAME_RATE,
            mouse_id=self.mouse_id,
            stimulus=None if self.stimulus is None else self.stimulus[rows],
            trials=list(self.trials),
        )
