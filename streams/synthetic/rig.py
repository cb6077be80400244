"""The live synthetic rig: the simulated mouse watches an endless held-out movie and every frame is
published in real time (traces, behaviour and the true stimulus), generated on the fly.

Frames go out on absolute deadlines start + seq / fps (no drift: a late frame does not push the next
ones back; a frame is never skipped, so a rig that falls behind catches up by sending at once and
counts the late frames). While waiting for a deadline the publisher's `tick()` keeps heartbeats and
header re-sends flowing.

Steerable (`control=`, streams/control.py): a closed-loop client switches the screen between movies, a
target image and grey; the rig shows the change at the next frame and acknowledges it with that frame.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np

from neurocine.streams.commandline import Progress, get_logger
from neurocine.streams.control import FRAME_SHAPE, GREY, TARGETS, Command, ControlServer
from neurocine.streams.synthetic.mouse import DEFAULT_NEURONS, DEFAULT_SEED, Mouse, make_mouse
from neurocine.streams.synthetic.simulate import DEFAULT_MOVIE_SEED, MouseStream, SimFrame
from neurocine.streams.synthetic.stimuli import NaturalMovie

log = get_logger("rig")

LATE_TOLERANCE_S = 0.010


class Screen:
    """What the mouse sees: movie K (NaturalMovie(movie_seed + K), from its start), a target image or grey.
    Movie 0 is the rig's default movie, so an unsteered rig shows what `live_frames` gives."""

    def __init__(self, movie_seed: int = DEFAULT_MOVIE_SEED, split: str = "test") -> None:
        self.movie_seed, self.split = movie_seed, split
        self._still: np.ndarray | None = None
        self.showing = "movie 0"
        self._movie: Iterator[np.ndarray] = iter(NaturalMovie(movie_seed, split))

    def apply(self, cmd: Command) -> None:
        if cmd.cmd == "movie":
            self._movie, self._still = iter(NaturalMovie(self.movie_seed + cmd.k, self.split)), None
        elif cmd.cmd == "target":
            self._still = TARGETS[cmd.name]
        elif cmd.cmd == "grey":
            self._still = np.full(FRAME_SHAPE, GREY, np.uint8)
        self.showing = cmd.describe()

    def next(self) -> np.ndarray:
        return next(self._movie) if self._still is None else self._still


def live_frames(mouse: Mouse, movie_seed: int = DEFAULT_MOVIE_SEED, split: str = "test") -> Iterator[SimFrame]:
    """The rig's frames, unbounded: the same numbers for the same (mouse, movie_seed, split)."""
    stream = MouseStream(mouse, movie_seed)
    for frame in NaturalMovie(movie_seed, split):
        yield stream.step(frame)


@dataclasses.dataclass
class RigReport:
    frames: int = 0
    late: int = 0
    commands: int = 0  # control commands shown
    refused: int = 0  # malformed control commands (answered with an error; publishing went on)
    max_lateness_ms: float = 0.0
    seconds: float = 0.0


def run_rig(
    bind: str,
    n_neurons: int = DEFAULT_NEURONS,
    seed: int = DEFAULT_SEED,
    movie_seed: int = DEFAULT_MOVIE_SEED,
    max_frames: int | None = None,
    split: str = "test",
    verbose: bool = True,
    wait_subscribers: int = 0,
    wait_timeout_s: float | None = None,
    control: str | None = None,
    speed: float = 1.0,
) -> RigReport:
    """Publish the synthetic mouse on `bind` until max_frames (None: until interrupted); first wait
    (up to wait_timeout_s) for `wait_subscribers` subscribers so that they see frame 0.

    With `control` (an endpoint), the rig is steerable (streams/control.py): a change received before a
    frame's deadline is shown in that frame, which is then generated at its deadline (a few ms late, on
    purpose: without control each frame is computed ahead and sent on time). `speed` > 1 publishes that many
    times faster than real time; the frames' acquisition times stay on the 30 Hz clock."""
    from neurocine.streams.protocol import SessionHeader
    from neurocine.streams.session import new_session_id
    from neurocine.streams.transport import Publisher

    if max_frames is not None and max_frames < 0:
        raise ValueError(f"number of frames must be >= 0, got {max_frames}")
    mouse = make_mouse(seed, n_neurons)
    mouse.spatial_filters()  # build before the clock starts
    screen = Screen(movie_seed, split)  # loads the photographs before the clock starts
    stream = MouseStream(mouse, movie_seed)
    ctl = None if control is None else ControlServer(control, status=lambda: {"showing": screen.showing})
    sim = None if ctl else stream.step(screen.next())  # unsteered: each frame is computed ahead
    period_ns = round(1e9 / mouse.fps)
    report = RigReport()
    with Publisher(bind) as pub:
        if wait_subscribers > 0:
            pub.wait_subscribers(wait_subscribers, wait_timeout_s)
        start_wall = time.time_ns()
        header = SessionHeader(
            session_id=new_session_id(), source="synthetic", mouse_id=mouse.mouse_id, frame_rate=mouse.fps,
            neuron_ids=mouse.neuron_ids, stimulus_shape=mouse.frame_shape, start_time_ns=start_wall,
        )
        pub.begin(header)
        if verbose:
            log.info(f"publishing {mouse.mouse_id} ({mouse.n_neurons} neurons, movie seed {movie_seed}) "
                     f"on {pub.endpoint} at {mouse.fps:g} Hz; Ctrl-C stops")
            if ctl is not None:
                log.info(f"commands on {ctl.endpoint} (movie K, target NAME, grey, status)")
        start = time.monotonic_ns()
        reason = "complete"
        shown = Progress("rig", max_frames, unit="frame") if verbose else None
        try:
            seq = 0
            while max_frames is None or seq < max_frames:
                deadline = start + round(seq * period_ns / speed)
                while True:
                    left = deadline - time.monotonic_ns()
                    if left <= 0:
                        break
                    pub.tick()
                    if ctl is None:
                        time.sleep(min(left / 1e9, 0.005))
                    else:
                        ctl.poll(min(left / 1e9, 0.005))
                lateness = (time.monotonic_ns() - deadline) / 1e9
                if lateness > LATE_TOLERANCE_S:
                    report.late += 1
                report.max_lateness_ms = max(report.max_lateness_ms, lateness * 1e3)
                change = None if ctl is None else ctl.take()
                if ctl is not None:
                    if change is not None:
                        screen.apply(change)
                    sim = stream.step(screen.next())
                t_shown = start_wall + seq * period_ns
                t_pub = pub.send_frame(seq, t_shown, sim.traces, sim.behaviour, sim.stimulus)
                if change is not None:
                    ctl.shown(seq, t_shown, t_pub)
                if ctl is None and (max_frames is None or seq + 1 < max_frames):
                    sim = stream.step(screen.next())
                seq += 1
                report.frames = seq
                if shown is not None:
                    shown(seq, late=report.late)
        except KeyboardInterrupt:
            reason = "interrupted"
        finally:
            report.seconds = (time.monotonic_ns() - start) / 1e9
            if shown is not None:
                shown.close()
            pub.end(reason)
            if ctl is not None:
                report.commands, report.refused = ctl.accepted, ctl.refused
                ctl.close()
    if verbose:
        log.info(f"sent {report.frames} frames in {report.seconds:.1f} s, {report.late} late "
                 f"(max {report.max_lateness_ms:.1f} ms); {report.commands} commands shown, {report.refused} refused")
    return report


def first_frames(n: int, n_neurons: int = DEFAULT_NEURONS, seed: int = DEFAULT_SEED,
                 movie_seed: int = DEFAULT_MOVIE_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(traces (n, N), behaviour (n, 4), stimulus (n, H, W)) the rig would publish first (for tests)."""
    it = live_frames(make_mouse(seed, n_neurons), movie_seed)
    frames = [next(it) for _ in range(n)]
    return (np.stack([f.traces for f in frames]), np.stack([f.behaviour for f in frames]),
            np.stack([f.stimulus for f in frames]))
