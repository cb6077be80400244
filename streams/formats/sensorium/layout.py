"""The Sensorium 2023 folder layout, the constants that pin it down, and the checked .npy loader.

This module exists so that the reader and the writer share one definition of the format (and one loader that
turns every bad file into a FormatError) without importing each other; it is the lowest module of the package.

Layout (one folder per mouse; trial ``i`` is one file in each ``data/`` sub-folder)::

    data/videos/{i}.npy        (H=36, W=64, T)  frames on a 0..255 scale: the release stores float64 and not always
                                                whole numbers (rounded for the wire); neurocine writes float32
    data/responses/{i}.npy     (N, T)           deconvolved, unnormalised activity
    data/behavior/{i}.npy      (2, T)           [pupil dilation, running speed]
    data/pupil_center/{i}.npy  (2, T)           [x, y]
    meta/trials/tiers.npy      (K,)             tier name of each trial index
    meta/neurons/unit_ids.npy  (N,)             neuron ids (optional when reading: arange(N))
    meta/neurons/cell_motor_coordinates.npy (N, 3); animal_ids, area, layer, scan_idx, sessions (N,) (read if there)
    meta/statistics/{videos,responses,behavior,pupil_center}/all/{min,max,mean,median,std}.npy

Trials are NaN-padded after their end (T up to 300 at 30 Hz); a trial ends where the earliest field's padding
begins (`trials` states the rule). Trial files are numbered 0..K-1 in random order: file order carries no
time, so a replay marks a cut between every two trials. Tiers whose responses are all zero hold placeholders
(the public release withholds its test tiers' responses): `folder` skips them.

neurocine addition: the writer also stores ``meta/trials/n_frames.npy`` (K,) int64, the exact length of
each trial. When present the reader trusts it (after checking that the columns after it are padding);
this keeps a trial whose last frames report no neuron at all intact. Other readers ignore the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurocine.streams.formats import FormatError

#: Per-trial sub-folders of data/, in the order the writer replaces them (responses last: a trial
#: exists for the reader only once its responses file does, so a crash never exposes half a trial).
TRIAL_DIRS: tuple[str, ...] = ("videos", "behavior", "pupil_center", "responses")

#: Statistics stored per key under meta/statistics/<key>/all/.
STATISTICS: tuple[str, ...] = ("min", "max", "mean", "median", "std")

#: Sensorium folders have no frame-rate field: they are 30 Hz by definition.
SENSORIUM_FRAME_RATE = 30.0

DEFAULT_PAD_TO = 300
DEFAULT_FRAME_SHAPE = (36, 64)


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
