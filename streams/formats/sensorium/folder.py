"""An opened Sensorium mouse (folder or release .zip): its trials indexed and checked, read one trial at a time.

Opening reads headers and meta/ only (every trial's files are checked for shape and number type, so a folder
mixing float and integer trials, or trials of different neurons, is refused before anything plays); frames
are read when a trial is asked for, so memory never grows with the folder (`stream` hands a replay a
StreamedSession). Tiers whose responses are all zero or NaN hold no responses (the public release's withheld
test tiers): the default selection skips them and says so, and naming one is an error. The mouse id is the
mouse folder's name (the release names it ``dynamic<animal>-<session>-<scan>-Video-<hash>``; a .zip's is the
folder inside it, else the zip's name), the same name `train` gives the mouse's readout.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.formats import FormatError
from neurocine.streams.formats.sensorium import meta, trials
from neurocine.streams.formats.sensorium.layout import SENSORIUM_FRAME_RATE
from neurocine.streams.formats.sensorium.store import Store, open_store
from neurocine.streams.session import TIERS, StreamedSession, Trial, TrialFrames

log = logging.getLogger("neurocine.sensorium")


@dataclasses.dataclass
class ReadingReport:
    """What reading trials has found so far (pixels rounded to 8 bits, uneven field ends, trials skipped)."""

    trials_read: int = 0
    frames: int = 0
    pixels: int = 0
    pixels_rounded: int = 0
    max_pixel_offset: float = 0.0
    pixels_clipped: int = 0
    trials_with_uneven_ends: int = 0
    frames_dropped_at_uneven_ends: int = 0
    trials_without_activity: list[int] = dataclasses.field(default_factory=list)

    def add(self, index: int, rep: trials.TrialReport) -> None:
        self.trials_read += 1
        self.frames += rep.n_frames
        self.pixels += rep.pixels
        self.pixels_rounded += rep.pixels_rounded
        self.max_pixel_offset = max(self.max_pixel_offset, rep.max_pixel_offset)
        self.pixels_clipped += rep.pixels_clipped
        if rep.uneven:
            self.trials_with_uneven_ends += 1
            self.frames_dropped_at_uneven_ends += max(rep.uneven.values())
        if not rep.has_activity:
            self.trials_without_activity.append(index)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_pixel_offset"] = round(self.max_pixel_offset, 6)
        d["trials_without_activity"] = self.trials_without_activity[:20]
        d["n_trials_without_activity"] = len(self.trials_without_activity)
        return d


class SensoriumFolder:
    """One mouse: trials indexed and their headers checked at open; frames read per trial (`read`)."""

    def __init__(self, path: str | Path) -> None:
        store = open_store(path)
        self.store: Store = store
        self.location = store.location
        self.mouse_id = store.folder_name
        for name in ("responses", "behavior", "pupil_center"):
            if not store.is_dir(f"data/{name}"):
                raise FormatError(f"{store.where('data/' + name)}: missing folder (required in a Sensorium mouse "
                                  "folder)")
        self.has_video = store.is_dir("data/videos")
        self.indices = self._trial_files()
        self._check_no_lost_responses()
        last = self.indices[-1]
        self.tiers = meta.read_tiers(store, last)
        self.n_frames_hint = meta.read_n_frames(store, last)
        self.layouts = {i: trials.trial_layout(store, i, self.has_video) for i in self.indices}
        first = self.layouts[self.indices[0]]
        self.n_neurons, self.frame_shape = first.n_neurons, first.frame_shape
        self._check_agreement(first)
        self.neurons = meta.read_neurons(store, self.n_neurons, first.wheres["responses"])
        self.report = ReadingReport()
        self._active_tiers: dict[str, bool] = {}
        self._said: set[str] = set()

    @property
    def neuron_ids(self) -> np.ndarray:
        return self.neurons.unit_ids

    # ------------------------------------------------------------------ opening
    def _trial_files(self) -> list[int]:
        """Trial indices: the responses files define which trials exist."""
        found = []
        for name in self.store.npy_names("data/responses"):
            if name.startswith("."):
                continue  # a writer's temporary file
            stem = name[: -len(".npy")]
            if not (stem.isdigit() and str(int(stem)) == stem):
                raise FormatError(f"{self.store.where('data/responses/' + name)}: unexpected file name (trial files "
                                  "are named <index>.npy, e.g. 0.npy)")
            found.append(int(stem))
        if not found:
            raise FormatError(f"{self.store.where('data/responses')}: no trial files (<index>.npy)")
        return sorted(found)

    def _check_no_lost_responses(self) -> None:
        """A trial with behaviour but no responses file before the last trial is a lost file, not a trial still
        being written (the writer writes responses last, so only the newest trial may lack them): an error."""
        last, have = self.indices[-1], set(self.indices)
        for name in ("behavior", "pupil_center"):
            for fname in self.store.npy_names(f"data/{name}"):
                stem = fname[: -len(".npy")]
                if stem.isdigit() and int(stem) < last and int(stem) not in have:
                    raise FormatError(
                        f"{self.store.where('data/responses/' + fname)}: missing, but "
                        f"{self.store.where(f'data/{name}/{fname}')} exists and later trials are complete "
                        "(a lost or deleted responses file; restore it or remove the trial's other files)")

    def _check_agreement(self, first: trials.TrialLayout) -> None:
        """Every trial has the same neurons and frame size, and each field is float in all trials or in none."""
        kinds: dict[str, dict[str, trials.TrialLayout]] = {}
        for lay in self.layouts.values():
            if lay.n_neurons != self.n_neurons:
                raise FormatError(f"{lay.wheres['responses']}: {lay.n_neurons} neurons (rows), but "
                                  f"{first.wheres['responses']} has {self.n_neurons}")
            if lay.frame_shape != self.frame_shape:
                raise FormatError(f"{lay.wheres['videos']}: frames of {lay.frame_shape}, but "
                                  f"{first.wheres['videos']} has frames of {self.frame_shape}")
            for field, dtype in lay.dtypes.items():
                kinds.setdefault(field, {}).setdefault("float" if dtype.kind == "f" else "integer", lay)
        for field, seen in kinds.items():
            if len(seen) > 1:
                a, b = seen["float"], seen["integer"]
                raise FormatError(
                    f"{b.wheres[field]}: {b.dtypes[field]}, but {a.wheres[field]} is {a.dtypes[field]}: a folder's "
                    f"{field} must be float in every trial or in none (trials mixed from two sources?)")

    # ------------------------------------------------------------------ tiers with and without responses
    def tier_of(self, index: int) -> str:
        return self.tiers[index]

    def tier_has_responses(self, tier: str) -> bool:
        """Whether any trial of `tier` holds a response other than 0 or NaN (stops at the first that does)."""
        if tier not in self._active_tiers:
            members = [i for i in self.indices if self.tiers[i] == tier]
            self._active_tiers[tier] = any(trials.has_activity(self.store, self.layouts[i].rels["responses"])
                                           for i in members)
        return self._active_tiers[tier]

    def empty_tiers(self, among: Sequence[int] | None = None) -> dict[str, int]:
        """Tiers (of the trials `among`, default all) whose responses are all zero or NaN: tier -> trials."""
        counts = Counter(self.tiers[i] for i in (self.indices if among is None else among))
        return {t: k for t, k in counts.items() if not self.tier_has_responses(t)}

    def choose(self, chosen_trials: Sequence[int] | None = None, tier: str | None = None) -> list[int]:
        """Trial indices to read, ascending. Default: every trial except those of tiers without responses
        (skipped, and said so); naming such a tier, or a trial in one, is an error."""
        span = f"{len(self.indices)} trials with indices {self.indices[0]}..{self.indices[-1]}"
        if tier is not None and tier not in TIERS:
            raise FormatError(f"{self.location}: unknown tier {tier!r}; Sensorium tiers are {TIERS}")
        if chosen_trials is None:
            chosen = list(self.indices)
        else:
            requested = set()
            for t in chosen_trials:
                try:
                    requested.add(operator.index(t))
                except TypeError:
                    raise FormatError(f"{self.location}: trial index {t!r} is not an integer") from None
            have = set(self.indices)
            missing = sorted(i for i in requested if i not in have)
            if missing:
                raise FormatError(f"{self.store.where('data/responses')}: no trial {missing} (the folder holds {span})")
            chosen = sorted(requested)
            if tier is not None:
                wrong = [i for i in chosen if self.tiers[i] != tier]
                if wrong:
                    raise FormatError(f"{self.location}: trial {wrong[0]} is in tier {self.tiers[wrong[0]]!r}, not "
                                      f"the requested {tier!r}")
        if tier is not None:
            chosen = [i for i in chosen if self.tiers[i] == tier]
        if not chosen:
            what = f"in tier {tier!r}" if tier is not None else "selected"
            raise FormatError(f"{self.location}: no trials {what} (the folder holds {span})")
        empty = self.empty_tiers(chosen)
        if empty and (tier is not None or chosen_trials is not None):
            name = tier if tier is not None else next(self.tiers[i] for i in chosen if self.tiers[i] in empty)
            raise FormatError(
                f"{self.location}: tier {name!r} holds no responses (all {empty[name]} of its trials' responses are "
                "zero or NaN: placeholders, as in the public release's withheld test tiers); tiers with responses: "
                f"{self.tiers_with_responses()}")
        if empty:
            chosen = [i for i in chosen if self.tiers[i] not in empty]
            log.info(f"{self.location}: skipping tier(s) {', '.join(f'{t} ({k} trials)' for t, k in empty.items())}: "
                     "their responses are all zero or NaN (placeholders, not activity)")
            if not chosen:
                raise FormatError(f"{self.location}: no trial holds responses (tiers {sorted(empty)} are all zero or "
                                  "NaN)")
        return chosen

    def tiers_with_responses(self) -> list[str]:
        return [t for t in dict.fromkeys(self.tiers[i] for i in self.indices) if self.tier_has_responses(t)]

    # ------------------------------------------------------------------ reading
    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, trials.TrialReport]:
        """One trial's frames (traces (n, N), behaviour (n, 4), stimulus (n, H, W) uint8 or None) and report."""
        lay = self.layouts[index]
        hint = None if self.n_frames_hint is None else int(self.n_frames_hint[index])
        got = trials.read_trial(self.store, lay, hint, self.store.where("meta/trials/n_frames.npy"))
        rep = got[3]
        self.report.add(index, rep)
        if rep.pixels_rounded and "rounded" not in self._said:
            self._said.add("rounded")
            log.info(f"{self.location}: videos are {lay.dtypes['videos']}, not whole numbers (trial {index}: "
                     f"{rep.pixels_rounded} of {rep.pixels} pixels, up to {rep.max_pixel_offset:.3g} off); rounding "
                     "to 8 bits for the wire (`neurocine inspect` counts them all)")
        if rep.uneven and "uneven" not in self._said:
            self._said.add("uneven")
            ends = ", ".join(f"{lay.wheres[k]} ends at frame {e}" for k, e in rep.field_ends.items())
            log.warning(f"trial {index}: its fields end at different frames ({ends}); the trial ends at the earliest, "
                        f"frame {rep.n_frames} (neuralpredictors' rule); later trials like it are only counted")
        return got

    def read_frames(self, trial: Trial) -> TrialFrames | None:
        """A StreamedSession's reader: the trial's frames, or None (with a warning) when it holds no activity."""
        traces, behaviour, stimulus, rep = self.read(trial.index)
        if not rep.has_activity:
            log.warning(f"{self.layouts[trial.index].wheres['responses']}: no response other than 0 or NaN in its "
                        f"{rep.n_frames} frames; trial {trial.index} skipped (not activity)")
            return None
        placed = dataclasses.replace(trial, start=0, stop=rep.n_frames)
        return TrialFrames(placed, traces, behaviour, stimulus, np.zeros(rep.n_frames, np.int64))

    def stream(self, indices: Sequence[int]) -> StreamedSession:
        """The chosen trials as a StreamedSession (ascending index; every trial after the first follows a cut,
        since the release's file order carries no time)."""
        chosen = [Trial(i, 0, 0, self.tiers[i], cut=k > 0) for k, i in enumerate(indices)]
        return StreamedSession(
            neuron_ids=self.neuron_ids,
            trials=chosen,
            read=self.read_frames,
            frame_rate=SENSORIUM_FRAME_RATE,
            mouse_id=self.mouse_id,
            stimulus_shape=self.frame_shape,
            source="replay",
            report=self.report.as_dict,
        )

    def statistics(self, subset: str | None = "all") -> dict[str, dict[str, Any]]:
        return meta.read_statistics(self.store, subset)

    # ------------------------------------------------------------------ inspect
    def inspect(self, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Everything `neurocine inspect` says about the mouse, reading every trial once (one at a time)."""
        by_tier = Counter(self.tiers[i] for i in self.indices)
        empty = self.empty_tiers()
        nan_traces = frames = placeholder_frames = 0
        for k, i in enumerate(self.indices):
            traces, _, _, rep_i = self.read(i)
            if self.tiers[i] in empty or not rep_i.has_activity:
                placeholder_frames += rep_i.n_frames
            else:
                frames += rep_i.n_frames
                nan_traces += int(np.isnan(traces).sum())
            if progress is not None:
                progress(k + 1)
        rep = self.report.as_dict()
        try:
            stats = {key: sorted(subs) for key, subs in self.statistics(None).items()}
        except FormatError:
            stats = {}
        first = self.layouts[self.indices[0]]
        return {
            "mouse_id": self.mouse_id,
            "neurons": self.n_neurons,
            "frames": frames,
            "frames_without_responses": placeholder_frames,
            "frame_rate": SENSORIUM_FRAME_RATE,
            "stimulus_shape": list(self.frame_shape) if self.frame_shape else None,
            "trials": len(self.indices),
            "tiers": dict(sorted(by_tier.items())),
            "tiers_without_responses": sorted(empty),
            "dtypes": {k: str(v) for k, v in first.dtypes.items()},
            "video_rounding": {k: rep[k] for k in ("pixels", "pixels_rounded", "max_pixel_offset", "pixels_clipped")},
            "trial_ends": {"rule": "earliest end over every field (neuralpredictors)" if self.n_frames_hint is None
                           else "meta/trials/n_frames.npy",
                           "trials_with_uneven_ends": rep["trials_with_uneven_ends"],
                           "frames_dropped_at_uneven_ends": rep["frames_dropped_at_uneven_ends"]},
            "trials_without_activity": rep["n_trials_without_activity"],
            "nan_traces": nan_traces,
            "neuron_table": self.neurons.summary(),
            "statistics": stats,
        }
