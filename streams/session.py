"""The in-memory session: what a rig recorded, frame by frame, and what every file format maps to.

A session is T frames of N neurons at a fixed nominal rate. Frames are the unit that travels on the
wire (one `frame` message each), so every per-frame array has T as its first axis.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from neurocine.streams.protocol import BEHAVIOUR_CHANNELS, SOURCES, SessionHeader

#: Sensorium 2023 tier names.
TIERS: tuple[str, ...] = (
    "train",
    "oracle",
    "live_test_main",
    "live_test_bonus",
    "final_test_main",
    "final_test_bonus",
    "none",
)

DEFAULT_FRAME_RATE = 30.0


class SessionError(ValueError):
    """A session's arrays or metadata are inconsistent (wrong shape, dtype, length)."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial: frames [start, stop) of the session, from source trial `index` of tier `tier`.

    `cut`: this trial was not recorded right after the previous one (the Sensorium release's trials are cut
    from different parts of a recording and stored in random order; a selection can skip trials). A replay
    marks the cut on the wire and a decoder never lets an optimisation window span it. Ignored on trial 0.
    """

    index: int
    start: int
    stop: int
    tier: str = "none"
    cut: bool = False

    @property
    def n_frames(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class TrialFrames:
    """One trial's frames, as a replay or a scan reads them (one trial in memory at a time).

    traces (n, N) float32, behaviour (n, 4) float32, stimulus (n, H, W) uint8 or None, timestamps_ns (n,) int64.
    """

    trial: Trial
    traces: np.ndarray
    behaviour: np.ndarray
    stimulus: np.ndarray | None
    timestamps_ns: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.traces.shape[0])


def new_session_id() -> str:
    """A fresh session id; a new id is how subscribers learn that a publisher restarted."""
    return uuid.uuid4().hex[:16]


@dataclasses.dataclass
class Session:
    """T frames of N neurons plus behaviour, timing and (optionally) the stimulus shown.

    traces:       (T, N) float32, NaN where a neuron was not reported in that frame.
    behaviour:    (T, 4) float32, channels BEHAVIOUR_CHANNELS; NaN where not measured.
    timestamps_ns:(T,) int64 acquisition times on the rig clock.
    neuron_ids:   (N,) int64 unique ids; decoders match neurons by id, not position.
    stimulus:     (T, H, W) uint8 or None, the frame on screen when frame t was acquired.
    trials:       contiguous, non-overlapping trials covering [0, T) in order (one if unknown).
    """

    traces: np.ndarray
    behaviour: np.ndarray
    timestamps_ns: np.ndarray
    neuron_ids: np.ndarray
    frame_rate: float = DEFAULT_FRAME_RATE
    mouse_id: str = "unknown"
    stimulus: np.ndarray | None = None
    trials: list[Trial] = dataclasses.field(default_factory=list)
    session_id: str = dataclasses.field(default_factory=new_session_id)
    source: str = "replay"
    start_time_ns: int = 0

    def __post_init__(self) -> None:
        self.traces = np.ascontiguousarray(self.traces, dtype=np.float32)
        self.behaviour = np.ascontiguousarray(self.behaviour, dtype=np.float32)
        self.timestamps_ns = np.ascontiguousarray(self.timestamps_ns, dtype=np.int64)
        self.neuron_ids = np.ascontiguousarray(self.neuron_ids, dtype=np.int64)
        if self.stimulus is not None:
            self.stimulus = np.ascontiguousarray(self.stimulus)
        if not self.trials:
            self.trials = [Trial(0, 0, self.traces.shape[0] if self.traces.ndim == 2 else 0)]
        self.validate()

    # ------------------------------------------------------------------ shape facts
    @property
    def n_frames(self) -> int:
        return int(self.traces.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.traces.shape[1])

    @property
    def stimulus_shape(self) -> tuple[int, int] | None:
        return None if self.stimulus is None else (int(self.stimulus.shape[1]), int(self.stimulus.shape[2]))

    def __len__(self) -> int:
        return self.n_frames

    def validate(self) -> None:
        """Raise SessionError naming the first inconsistency found."""
        if self.traces.ndim != 2:
            raise SessionError(f"traces must be (T, N), got shape {self.traces.shape}")
        t, n = self.traces.shape
        if self.behaviour.shape != (t, len(BEHAVIOUR_CHANNELS)):
            raise SessionError(
                f"behaviour must be (T={t}, {len(BEHAVIOUR_CHANNELS)}), got shape {self.behaviour.shape}"
            )
        if self.timestamps_ns.shape != (t,):
            raise SessionError(f"timestamps_ns must be (T={t},), got shape {self.timestamps_ns.shape}")
        if self.neuron_ids.shape != (n,):
            raise SessionError(f"neuron_ids must be (N={n},), got shape {self.neuron_ids.shape}")
        if n and np.unique(self.neuron_ids).size != n:
            raise SessionError("neuron_ids must be unique")
        if self.stimulus is not None:
            if self.stimulus.dtype != np.uint8:
                raise SessionError(f"stimulus must be uint8, got {self.stimulus.dtype}")
            if self.stimulus.ndim != 3 or self.stimulus.shape[0] != t:
                raise SessionError(f"stimulus must be (T={t}, H, W), got shape {self.stimulus.shape}")
        if not (np.isfinite(self.frame_rate) and self.frame_rate > 0):
            raise SessionError(f"frame_rate must be positive, got {self.frame_rate}")
        if self.source not in SOURCES:
            raise SessionError(f"source must be one of {SOURCES}, got {self.source!r}")
        expected = 0
        for k, trial in enumerate(self.trials):
            if trial.start != expected or trial.stop < trial.start:
                raise SessionError(
                    f"trial {k} (index {trial.index}) spans [{trial.start}, {trial.stop}); "
                    f"trials must be contiguous from frame 0, expected start {expected}"
                )
            expected = trial.stop
        if expected != t:
            raise SessionError(f"trials cover {expected} frames but the session has {t}")

    # ------------------------------------------------------------------ selection
    def select_trials(self, indices: Sequence[int] | None = None, tier: str | None = None) -> Session:
        """A new session holding the chosen trials (by source index and/or tier), back to back."""
        chosen = [
            tr
            for tr in self.trials
            if (indices is None or tr.index in set(indices)) and (tier is None or tr.tier == tier)
        ]
        if indices is not None:
            missing = sorted(set(indices) - {tr.index for tr in chosen})
            if missing:
                raise SessionError(f"no trial with index {missing} in session (has {self.trial_indices()})")
        if not chosen:
            raise SessionError(f"no trials match indices={indices} tier={tier}")
        rows = np.concatenate([np.arange(tr.start, tr.stop) for tr in chosen])
        trials, pos, previous = [], 0, None
        for tr in chosen:
            # A trial follows its chosen predecessor without a cut only when it did so in this session too.
            cut = previous is not None and (tr.cut or previous.stop != tr.start)
            trials.append(Trial(tr.index, pos, pos + tr.n_frames, tr.tier, cut))
            pos += tr.n_frames
            previous = tr
        return dataclasses.replace(
            self,
            traces=self.traces[rows],
            behaviour=self.behaviour[rows],
            timestamps_ns=self.timestamps_ns[rows],
            stimulus=None if self.stimulus is None else self.stimulus[rows],
            trials=trials,
        )

    def trial_indices(self) -> list[int]:
        return [tr.index for tr in self.trials]

    def trial_tiers(self) -> dict[int, str]:
        """Tier of each source trial index (what the wire header carries)."""
        return {tr.index: tr.tier for tr in self.trials}

    def iter_trials(self) -> Iterator[TrialFrames]:
        """Each trial's frames in order (views, no copies): the contract a replay reads (see StreamedSession)."""
        for tr in self.trials:
            rows = slice(tr.start, tr.stop)
            stim = None if self.stimulus is None else self.stimulus[rows]
            yield TrialFrames(tr, self.traces[rows], self.behaviour[rows], stim, self.timestamps_ns[rows])

    def iter_frames(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """Yield (seq, timestamp_ns, traces[N], behaviour[4], stimulus[H, W] or None) per frame."""
        for i in range(self.n_frames):
            stim = None if self.stimulus is None else self.stimulus[i]
            yield i, int(self.timestamps_ns[i]), self.traces[i], self.behaviour[i], stim


def regular_timestamps(n_frames: int, frame_rate: float, start_ns: int = 0) -> np.ndarray:
    """Acquisition times for frames at a fixed rate, exact in integer nanoseconds."""
    return start_ns + np.round(np.arange(n_frames) * (1e9 / frame_rate)).astype(np.int64)


def header_of(session: Session | StreamedSession) -> SessionHeader:
    """The wire header describing a session (what a replay publishes and a recording stores first)."""
    return SessionHeader(
        session_id=session.session_id,
        source=session.source,
        mouse_id=session.mouse_id,
        frame_rate=session.frame_rate,
        neuron_ids=session.neuron_ids,
        stimulus_shape=session.stimulus_shape,
        start_time_ns=session.start_time_ns,
        trial_tiers=session.trial_tiers(),
    )


def frame_trials(session: Session) -> np.ndarray:
    """Source trial index of every frame (the `trial` field of each frame message)."""
    out = np.empty(session.n_frames, np.int64)
    for tr in session.trials:
        out[tr.start : tr.stop] = tr.index
    return out


def frame_segments(session: Session) -> np.ndarray:
    """Segment number of every frame (the `segment` field of each frame message): 0 from the first frame, one
    more after each cut, so frames of one segment were recorded back to back."""
    out = np.empty(session.n_frames, np.int64)
    segment = 0
    for k, tr in enumerate(session.trials):
        segment += int(k > 0 and tr.cut)
        out[tr.start : tr.stop] = segment
    return out


@dataclasses.dataclass
class StreamedSession:
    """A session read from disk one trial at a time: what replay and inspect need, in memory bounded by a trial.

    Why: a release mouse is ~700 trials x 300 frames x ~8,000 neurons (13 GB of float64 on disk); holding it as
    a Session costs ~7 GB. `trials` lists the chosen trials (index, tier, cut; start/stop are unknown until
    read, so 0); `read(trial)` returns that trial's frames, or None for a trial to skip (e.g. one holding no
    responses). Frames are stamped on a regular `frame_rate` clock, trial after trial, as a replay plays them.
    `load()` gives the whole Session, for callers that need every frame at once.
    """

    neuron_ids: np.ndarray
    trials: list[Trial]
    read: Callable[[Trial], TrialFrames | None]
    frame_rate: float = DEFAULT_FRAME_RATE
    mouse_id: str = "unknown"
    stimulus_shape: tuple[int, int] | None = None
    session_id: str = dataclasses.field(default_factory=new_session_id)
    source: str = "replay"
    start_time_ns: int = 0
    #: what reading has found so far (e.g. video pixels rounded to 8 bits), for the log; None: nothing to say
    report: Callable[[], dict[str, Any]] | None = None

    @property
    def n_neurons(self) -> int:
        return int(self.neuron_ids.shape[0])

    def trial_indices(self) -> list[int]:
        return [tr.index for tr in self.trials]

    def trial_tiers(self) -> dict[int, str]:
        return {tr.index: tr.tier for tr in self.trials}

    def iter_trials(self) -> Iterator[TrialFrames]:
        """Read and yield each trial in turn, with its frames' place (start/stop) on the session's frame axis."""
        pos, skipped = 0, False
        period_ns = 1e9 / self.frame_rate
        for tr in self.trials:
            got = self.read(tr)
            if got is None:
                skipped = True  # the next trial read does not follow the last one read
                continue
            n = got.n_frames
            placed = dataclasses.replace(got.trial, start=pos, stop=pos + n, cut=pos > 0 and (got.trial.cut or skipped))
            skipped = False
            stamps = self.start_time_ns + np.round(np.arange(pos, pos + n) * period_ns).astype(np.int64)
            yield dataclasses.replace(got, trial=placed, timestamps_ns=stamps)
            pos += n

    def load(self) -> Session:
        """Every chosen trial in memory as one Session (frames regular at `frame_rate` from start_time_ns)."""
        parts = list(self.iter_trials())
        n = self.n_neurons
        shape = self.stimulus_shape
        return Session(
            traces=np.concatenate([p.traces for p in parts]) if parts else np.zeros((0, n), np.float32),
            behaviour=np.concatenate([p.behaviour for p in parts]) if parts else np.zeros((0, 4), np.float32),
            timestamps_ns=np.concatenate([p.timestamps_ns for p in parts]) if parts else np.zeros(0, np.int64),
            neuron_ids=self.neuron_ids,
            frame_rate=self.frame_rate,
            mouse_id=self.mouse_id,
            stimulus=None if shape is None else (
                np.concatenate([p.stimulus for p in parts]) if parts else np.zeros((0, *shape), np.uint8)),
            trials=[p.trial for p in parts],
            session_id=self.session_id,
            source=self.source,
            start_time_ns=self.start_time_ns,
        )
