"""A Sensorium folder's meta/: trial tiers and lengths, the neuron table, and the release's statistics.

What the release holds (checked against lRomul/sensorium, bryanlimy/ViV1T and the dataset's README):
``meta/trials/tiers.npy`` (K,) strings; ``meta/neurons/`` unit_ids (N,), cell_motor_coordinates (N, 3) in
microns, and per-neuron animal_ids, area, layer, scan_idx, sessions; ``meta/statistics/<key>/all/
{min,max,mean,median,std}.npy`` for videos, responses, behavior and pupil_center (the 2023 loaders read
``all``; other sub-folders, such as the 2022 layout's ``stimulus_frames``, are read when present). Only the tiers
are required; a neuron field that is present must have one entry per neuron, and one that is a pickle is left
out with a warning (a descriptive field never costs the folder). neurocine's own addition:
``meta/trials/n_frames.npy`` (K,), each trial's exact length.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np

from neurocine.streams.formats import FormatError
from neurocine.streams.formats.sensorium.layout import STATISTICS
from neurocine.streams.formats.sensorium.store import Store
from neurocine.streams.session import TIERS

log = logging.getLogger("neurocine.sensorium")

#: Per-neuron descriptive fields of meta/neurons/, read when present (besides unit_ids and coordinates).
NEURON_FIELDS: tuple[str, ...] = ("animal_ids", "area", "layer", "scan_idx", "sessions")


def read_tiers(store: Store, max_index: int) -> list[str]:
    """meta/trials/tiers.npy as one tier name per trial; at least max_index + 1 of them."""
    rel = "meta/trials/tiers.npy"
    where = store.where(rel)
    if not store.exists(rel):
        raise FormatError(f"{where}: missing file")
    arr = store.load(rel, mmap=False)
    if arr.ndim != 1:
        raise FormatError(f"{where}: expected one tier name per trial, shape (K,), got {arr.shape}")
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    if arr.dtype.kind != "U":
        raise FormatError(f"{where}: expected strings, got dtype {arr.dtype}")
    tiers = [str(t) for t in arr]
    for k, name in enumerate(tiers):
        if name not in TIERS:
            raise FormatError(f"{where}: entry {k} is {name!r}, not a Sensorium tier {TIERS}")
    if len(tiers) <= max_index:
        raise FormatError(
            f"{where}: has {len(tiers)} entries, but data/responses/ holds trial {max_index} "
            f"(needs at least {max_index + 1}: one tier per trial)"
        )
    return tiers


def read_n_frames(store: Store, max_index: int) -> np.ndarray | None:
    """The writer's exact trial lengths (neurocine addition), or None when absent."""
    rel = "meta/trials/n_frames.npy"
    if not store.exists(rel):
        return None
    where = store.where(rel)
    arr = store.load(rel, mmap=False)
    if arr.ndim != 1 or arr.size <= max_index or not np.issubdtype(arr.dtype, np.integer):
        raise FormatError(f"{where}: expected (K>={max_index + 1},) integer trial lengths, got {arr.dtype} {arr.shape}")
    if (arr < 0).any():
        raise FormatError(f"{where}: negative trial length at entry {int(np.flatnonzero(arr < 0)[0])}")
    return arr.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class NeuronTable:
    """meta/neurons/: ids (arange(N) when the folder has none), coordinates and descriptive fields present."""

    unit_ids: np.ndarray
    coordinates: np.ndarray | None
    fields: dict[str, np.ndarray]
    ids_from_file: bool

    def summary(self) -> dict[str, Any]:
        """What `inspect` shows: each descriptive field's distinct values and counts (at most 20)."""
        out: dict[str, Any] = {"unit_ids": "meta/neurons/unit_ids.npy" if self.ids_from_file else "absent: 0..N-1",
                               "coordinates": self.coordinates is not None}
        for name, values in self.fields.items():
            counts = Counter(_plain(v) for v in values)
            out[name] = dict(counts.most_common(20))
        return out


def _plain(value: Any) -> Any:
    """A numpy scalar as a JSON-able Python value."""
    v = value.item() if hasattr(value, "item") else value
    return v.decode() if isinstance(v, bytes) else v


def read_unit_ids(store: Store) -> np.ndarray | None:
    rel = "meta/neurons/unit_ids.npy"
    if not store.exists(rel):
        return None
    where = store.where(rel)
    arr = store.load(rel, mmap=False)
    if arr.ndim != 1:
        raise FormatError(f"{where}: expected shape (N,), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise FormatError(f"{where}: dtype {arr.dtype} is not a real number type")
    with np.errstate(invalid="ignore"):
        ids = arr.astype(np.int64)
    if not np.array_equal(ids, arr):
        raise FormatError(f"{where}: unit ids must be integers")
    if np.unique(ids).size != ids.size:
        values, counts = np.unique(ids, return_counts=True)
        raise FormatError(f"{where}: unit ids are not unique (e.g. {int(values[counts > 1][0])} appears "
                          f"{int(counts.max())} times); decoders match neurons by id")
    return ids


def read_neurons(store: Store, n_neurons: int, first_responses: str) -> NeuronTable:
    """The neuron table for N neurons; a present field of another length is an error naming it."""
    ids = read_unit_ids(store)
    if ids is not None and ids.size != n_neurons:
        raise FormatError(
            f"{store.where('meta/neurons/unit_ids.npy')}: lists {ids.size} neurons, but {first_responses} has "
            f"{n_neurons} rows"
        )
    coords = None
    rel = "meta/neurons/cell_motor_coordinates.npy"
    if store.exists(rel):
        coords = store.load(rel, mmap=False)
        if coords.shape != (n_neurons, 3):
            raise FormatError(f"{store.where(rel)}: expected shape (N={n_neurons}, 3), got {coords.shape}")
    fields: dict[str, np.ndarray] = {}
    for name in NEURON_FIELDS:
        rel = f"meta/neurons/{name}.npy"
        if not store.exists(rel):
            continue
        try:
            values = store.load(rel, mmap=False)
        except FormatError as err:
            if "pickle" in str(err) or "allow_pickle" in str(err) or "object" in str(err):
                log.warning(f"{store.where(rel)}: a pickled array; left out (neurocine never unpickles a file)")
                continue
            raise
        if values.ndim != 1 or values.shape[0] != n_neurons:
            raise FormatError(f"{store.where(rel)}: expected one value per neuron, shape (N={n_neurons},), "
                              f"got {values.shape}")
        fields[name] = values
    unit_ids = ids if ids is not None else np.arange(n_neurons, dtype=np.int64)
    return NeuronTable(unit_ids, coords, fields, ids is not None)


def read_statistics(store: Store, subset: str | None = "all") -> dict[str, dict[str, Any]]:
    """meta/statistics as {key: {stat: array}} for one subset ('all'), or {key: {subset: {stat: array}}} for
    every subset present (subset=None). Stat files that are absent are left out; none at all is an error."""
    base = "meta/statistics"
    if not store.is_dir(base):
        raise FormatError(f"{store.where(base)}: missing folder (no statistics in this Sensorium folder)")
    out: dict[str, dict[str, Any]] = {}
    for key in store.subdirs(base):
        subsets = store.subdirs(f"{base}/{key}")
        found: dict[str, dict[str, np.ndarray]] = {}
        for sub in subsets if subset is None else [s for s in subsets if s == subset]:
            stats = {s: store.load(f"{base}/{key}/{sub}/{s}.npy", mmap=False) for s in STATISTICS
                     if store.exists(f"{base}/{key}/{sub}/{s}.npy")}
            if stats:
                found[sub] = stats
        if found:
            out[key] = found if subset is None else found[subset]
    if not out:
        raise FormatError(f"{store.where(base)}: holds no statistics files "
                          f"(<key>/{subset or '<subset>'}/{{{','.join(STATISTICS)}}}.npy)")
    return out
