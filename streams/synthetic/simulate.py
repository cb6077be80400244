"""Simulating the mouse: a frame-by-frame stream (shared by the live rig and the dataset writer, so
both give identical numbers for the same seeds) and whole datasets in Sensorium, NWB or native files.

Seeds: `seed` picks the mouse (make_mouse), `movie_seed` the movies; behaviour and all noise come
from SeedSequence([seed, movie_seed, purpose]). A dataset is one continuous recording: every trial
is preceded by ITI_FRAMES of exact mid-grey (not stored), long enough that each trial's expected
activity is recomputable from its own video and behaviour (expected_activity), except that the first
len(kappa) - 1 frames of a trial see the inter-trial behaviour slightly differently.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from neurocine.streams.commandline import Progress
from neurocine.streams.session import Session, Trial
from neurocine.streams.synthetic.behaviour import BehaviourGenerator
from neurocine.streams.synthetic.calcium import Deconvolver, Indicator, Spiker
from neurocine.streams.synthetic.model import ExpectedActivityStream
from neurocine.streams.synthetic.mouse import DEFAULT_NEURONS, DEFAULT_SEED, Mouse, make_mouse
from neurocine.streams.synthetic.stimuli import NaturalMovie

TRIAL_FRAMES = 300
ITI_FRAMES = 30
DEFAULT_REPEATS = 10
DEFAULT_MOVIE_SEED = 0
FORMATS = ("sensorium", "nwb", "native")


class SimulationError(ValueError):
    """A simulation was asked for with inconsistent sizes or options."""


@dataclasses.dataclass
class SimFrame:
    """One simulated frame: what was on screen (None = grey), behaviour, truth and measurement."""

    seq: int
    stimulus: np.ndarray | None
    behaviour: np.ndarray
    expected: np.ndarray  # noise-free expected deconvolved trace (N,)
    traces: np.ndarray  # noisy deconvolved trace (N,), what a rig publishes
    spikes: np.ndarray  # spike counts (N,)


class MouseStream:
    """The simulated mouse at the microscope, advanced one frame at a time.

    `step(frame)` shows `frame` ((H, W) uint8, or None for mid-grey) and returns a SimFrame. Behaviour
    comes from the mouse's own BehaviourGenerator unless `behaviour` is given (the generator still
    advances, so the noise stays the same). `noise=False` skips spikes and calcium (traces = expected).
    """

    def __init__(self, mouse: Mouse, movie_seed: int = DEFAULT_MOVIE_SEED, noise: bool = True) -> None:
        self.mouse = mouse
        root = [mouse.seed, int(movie_seed)]
        self.behaviour = BehaviourGenerator(np.random.SeedSequence([*root, 1]), mouse.fps, mouse.pupil_rest)
        noise_rng = np.random.default_rng(np.random.SeedSequence([*root, 2]))
        self.model = ExpectedActivityStream(mouse)
        self.noise = noise
        self.spiker = Spiker(mouse, noise_rng)
        self.indicator = Indicator(mouse, noise_rng)
        self.deconvolver = Deconvolver(mouse)
        self.seq = 0

    def step(self, frame: np.ndarray | None, behaviour: np.ndarray | None = None) -> SimFrame:
        beh = self.behaviour.step()
        if behaviour is not None:
            beh = np.asarray(behaviour, dtype=np.float32).reshape(4)
        expected, rate = self.model.step(frame, beh)
        if self.noise:
            spikes = self.spiker.step(rate)
            traces = self.deconvolver.step(self.indicator.step(spikes))
        else:
            spikes = rate / np.float32(self.mouse.fps)
            traces = expected
        out = SimFrame(self.seq, frame, beh, expected, traces, spikes)
        self.seq += 1
        return out

    def run(self, frames: Iterable[np.ndarray | None]) -> Iterator[SimFrame]:
        for frame in frames:
            yield self.step(frame)


# ---------------------------------------------------------------------------------------------- plans
@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """Trial `index` shows clip `clip` of movie split `split`; it belongs to Sensorium tier `tier`."""

    index: int
    tier: str
    split: str
    clip: int


def plan_trials(n_trials: int, repeats: int = DEFAULT_REPEATS, movie_seed: int = DEFAULT_MOVIE_SEED,
                test_movies: int | None = None) -> list[TrialPlan]:
    """Train clips (each once), oracle and final_test_main clips (each `repeats` times), interleaved
    in a seeded random order. Test clips come from the test split of the photos, oracle clips from
    the oracle split, so neither shares any source pixel with the training movies."""
    if repeats < 1:
        raise SimulationError(f"repeats must be >= 1, got {repeats}")
    if test_movies is None:
        test_movies = max(1, round(n_trials / 120))
    if n_trials < 2 * test_movies * repeats + 1:
        raise SimulationError(
            f"{n_trials} trials cannot hold {test_movies} oracle + {test_movies} test movies x {repeats} "
            f"repeats and at least one training trial; ask for >= {2 * test_movies * repeats + 1} trials "
            "or fewer repeats"
        )
    n_train = n_trials - 2 * test_movies * repeats
    items = [("train", "train", k) for k in range(n_train)]
    for tier, split in (("oracle", "oracle"), ("final_test_main", "test")):
        items += [(tier, split, k) for k in range(test_movies) for _ in range(repeats)]
    order = np.random.default_rng([int(movie_seed), 0x0D]).permutation(len(items))
    return [TrialPlan(i, *items[j]) for i, j in enumerate(order)]


def clip_frames(plan: TrialPlan, movie_seed: int, n_frames: int = TRIAL_FRAMES) -> np.ndarray:
    """The movie of one planned trial, (n_frames, 36, 64) uint8; the same clip for every repeat."""
    return NaturalMovie(int(movie_seed) * 1_000_003 + plan.clip, plan.split).frames(n_frames)


def _progress(prefix: str) -> Callable[[int, int], None]:
    """Trials simulated so far, as one progress line."""
    bar: list[Progress] = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(prefix, total, unit="trial"))
        bar[0](done)

    return report


def simulate_trials(
    mouse: Mouse,
    plans: list[TrialPlan],
    movie_seed: int = DEFAULT_MOVIE_SEED,
    n_frames: int = TRIAL_FRAMES,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[TrialPlan, np.ndarray, list[SimFrame]]]:
    """Yield (plan, video, frames) per trial from one continuous MouseStream (grey ITI between)."""
    stream = MouseStream(mouse, movie_seed)
    clips: dict[tuple[str, int], np.ndarray] = {}
    for k, plan in enumerate(plans):
        key = (plan.split, plan.clip)
        video = clips.get(key)
        if video is None:
            video = clip_frames(plan, movie_seed, n_frames)
            if plan.split != "train":
                clips[key] = video
        for _ in range(ITI_FRAMES):
            stream.step(None)
        frames = [stream.step(f) for f in video]
        yield plan, video, frames
        if progress is not None:
            progress(k + 1, len(plans))


def _trial_arrays(frames: list[SimFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.stack([f.traces for f in frames]), np.stack([f.behaviour for f in frames]),
            np.stack([f.expected for f in frames]))


def simulate_dataset(
    out: str | Path,
    n_neurons: int = DEFAULT_NEURONS,
    n_trials: int | None = None,
    minutes: float | None = None,
    seed: int = DEFAULT_SEED,
    movie_seed: int = DEFAULT_MOVIE_SEED,
    fmt: str = "sensorium",
    repeats: int = DEFAULT_REPEATS,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Simulate and write a dataset; returns the path written. The mouse's parameters go alongside
    (Sensorium: OUT/meta/mouse/; otherwise OUT's name + '.mouse/'), with simulation.json (the plan)."""
    if fmt not in FORMATS:
        raise SimulationError(f"format must be one of {FORMATS}, got {fmt!r}")
    if n_trials is None:
        if minutes is None:
            minutes = 60.0
        if minutes <= 0:
            raise SimulationError(f"minutes must be > 0, got {minutes}")
        n_trials = max(1, round(minutes * 60 * 30 / TRIAL_FRAMES))
    if n_trials < 1:
        raise SimulationError(f"number of trials must be >= 1, got {n_trials}")
    mouse = make_mouse(seed, n_neurons)
    plans = plan_trials(n_trials, repeats, movie_seed)
    out = Path(out)
    report = _progress(out.name) if progress else None
    trials = simulate_trials(mouse, plans, movie_seed, progress=report)
    if fmt == "sensorium":
        from neurocine.streams.formats.sensorium import SensoriumWriter

        with SensoriumWriter(out, mouse.neuron_ids, mouse.neurons["cell_coordinates"],
                             frame_shape=mouse.frame_shape, overwrite=overwrite) as writer:
            for plan, video, frames in trials:
                traces, beh, _ = _trial_arrays(frames)
                writer.add_trial(plan.index, plan.tier, video, traces, beh, pad_to=TRIAL_FRAMES)
        mouse_dir = out / "meta" / "mouse"
    else:
        from neurocine.streams.formats import save_session

        suffix = ".nwb" if fmt == "nwb" else ".ncr"
        if out.suffix.lower() != suffix:
            out = out.with_suffix(suffix)
        if out.exists() and not overwrite:
            raise SimulationError(f"{out}: exists (pass overwrite to replace it)")
        # A file is a session that happened: it starts now (the simulation's wall clock, not the 1970 epoch
        # that NWB checkers rightly flag), and its frame times are on that clock, as the live rig's are.
        session = _session_from(mouse, list(trials), movie_seed, start_time_ns=time.time_ns())
        if out.exists():
            out.unlink()
        save_session(session, out)
        mouse_dir = out.with_name(out.stem + ".mouse")
    mouse.save(mouse_dir)
    info = {"seed": seed, "movie_seed": movie_seed, "n_neurons": n_neurons, "repeats": repeats,
            "trial_frames": TRIAL_FRAMES, "iti_frames": ITI_FRAMES,
            "trials": [dataclasses.asdict(p) for p in plans]}
    (mouse_dir / "simulation.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def _session_from(mouse: Mouse, trials: list[tuple[TrialPlan, np.ndarray, list[SimFrame]]],
                  movie_seed: int, start_time_ns: int = 0) -> Session:
    """One Session of the simulated trials; frame k of the recording is acquired at start + k periods."""
    traces, beh, stim, stamps, trial_list = [], [], [], [], []
    pos = 0
    period = 1e9 / mouse.fps
    for plan, video, frames in trials:
        tr, b, _ = _trial_arrays(frames)
        traces.append(tr)
        beh.append(b)
        stim.append(video)
        stamps.append(start_time_ns + np.round(np.array([f.seq for f in frames]) * period).astype(np.int64))
        trial_list.append(Trial(plan.index, pos, pos + len(frames), plan.tier))
        pos += len(frames)
    return Session(
        traces=np.concatenate(traces), behaviour=np.concatenate(beh), timestamps_ns=np.concatenate(stamps),
        neuron_ids=mouse.neuron_ids, frame_rate=mouse.fps, mouse_id=mouse.mouse_id,
        stimulus=np.concatenate(stim), trials=trial_list, source="synthetic", start_time_ns=start_time_ns,
    )


def simulate_session(mouse: Mouse, plans: list[TrialPlan], movie_seed: int = DEFAULT_MOVIE_SEED,
                     n_frames: int = TRIAL_FRAMES) -> Session:
    """The planned trials as one in-memory Session (trials back to back, real acquisition times)."""
    return _session_from(mouse, list(simulate_trials(mouse, plans, movie_seed, n_frames)), movie_seed)


def build_example_session(n_trials: int = 4, n_neurons: int = DEFAULT_NEURONS) -> Session:
    """The built-in example: `n_trials` x 300 frames of the default mouse watching held-out (test)
    movies it was never trained on, one clip each."""
    mouse = make_mouse(DEFAULT_SEED, n_neurons)
    movie_seed = 1  # not the default dataset's movie seed: fresh clips
    plans = [TrialPlan(k, "final_test_main", "test", k) for k in range(n_trials)]
    return simulate_session(mouse, plans, movie_seed)
