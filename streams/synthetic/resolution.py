"""The resolution analysis's stimuli (Bauer, Margrie & Clopath, eLife 2026) and the synthetic mouse watching them.

Two families of 60-frame, 36x64 clips at 30 Hz:
- Gaussian noise (`noise_clips`): white noise smoothed by Gaussians of a spatial length constant (px) and a
  temporal one (frames), each cell of the grid at the same RMS contrast; `instances` independent noise draws
  per cell (the paper's "repeats") and, for each, its phase-inverted copy (255 - frame: the sign of every
  deviation from grey flipped).
- Drifting gratings (`grating_clips`): full-contrast sine gratings in 4 directions, spatial frequency in cycles
  per *pixel* (0.5 is one cycle per 2 px, the Nyquist limit), temporal frequency in Hz (15 Hz at 30 Hz is half
  a cycle per frame: the grating flips sign every frame, whatever its direction), a seeded random phase each.

`programme` lays the clips back to back with mid-grey between them, so one reconstruction covers them all;
`watch` shows that movie to the synthetic mouse (neurocine.streams.synthetic) and returns its noisy deconvolved
responses and behaviour, one presentation per trial seed. numpy only (no decoder imports).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from neurocine.streams.synthetic.behaviour import BehaviourGenerator
from neurocine.streams.synthetic.mouse import Mouse
from neurocine.streams.synthetic.simulate import MouseStream
from neurocine.streams.synthetic.stimuli import (
    NOISE_SPATIAL_LENGTHS,
    NOISE_TEMPORAL_LENGTHS,
    StimulusError,
    drifting_grating,
    gaussian_noise_movie,
)

CLIP_FRAMES = 60
#: The paper's grating grid (cycles per pixel; Hz at 30 Hz) and directions (degrees; 0 = rightwards).
GRATING_SF_CPP: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625)
GRATING_TF_HZ: tuple[float, ...] = (15.0, 7.5, 3.75, 1.88, 0.94, 0.47, 0.0)
GRATING_DIRECTIONS: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
__all__ = [
    "CLIP_FRAMES", "GRATING_DIRECTIONS", "GRATING_SF_CPP", "GRATING_TF_HZ", "NOISE_SPATIAL_LENGTHS",
    "NOISE_TEMPORAL_LENGTHS", "Clip", "grating_clips", "mean_behaviour", "noise_clips", "programme", "watch",
]


@dataclasses.dataclass
class Clip:
    """One stimulus clip: its family ("noise" / "grating"), its grid cell (x, y), which draw of the cell it is,
    whether it is a phase-inverted copy, and its frames (T, 36, 64) uint8."""

    family: str
    cell: tuple[float, float]  # noise: (spatial px, temporal frames); grating: (sf cycles/px, tf Hz)
    instance: int
    inverted: bool
    frames: np.ndarray
    direction: float | None = None


def noise_clips(
    spatial: Sequence[float] = NOISE_SPATIAL_LENGTHS,
    temporal: Sequence[float] = NOISE_TEMPORAL_LENGTHS,
    instances: int = 2,
    n_frames: int = CLIP_FRAMES,
    seed: int = 0,
    inverted: bool = True,
) -> list[Clip]:
    """Every (spatial, temporal) cell: `instances` noise draws, each followed by its inverted copy."""
    if instances < 1:
        raise StimulusError(f"noise clips need instances >= 1, got {instances}")
    out = []
    for s in spatial:
        for t in temporal:
            for k in range(instances):
                frames = gaussian_noise_movie(n_frames, float(s), float(t), seed=seed * 1000 + k)
                out.append(Clip("noise", (float(s), float(t)), k, False, frames))
                if inverted:
                    out.append(Clip("noise", (float(s), float(t)), k, True, 255 - frames))
    return out


def grating_clips(
    sfs_cpp: Sequence[float] = GRATING_SF_CPP,
    tfs_hz: Sequence[float] = GRATING_TF_HZ,
    directions: Sequence[float] = GRATING_DIRECTIONS,
    n_frames: int = CLIP_FRAMES,
    seed: int = 0,
) -> list[Clip]:
    """Every (sf, tf) cell in every direction; each clip starts at a seeded random phase."""
    rng = np.random.default_rng([int(seed), 0x6A])
    out = []
    for sf in sfs_cpp:
        for tf in tfs_hz:
            for k, d in enumerate(directions):
                # deg_per_px 1: the spatial frequency is in cycles per pixel
                phase = float(rng.uniform(0, 2 * np.pi))
                frames = drifting_grating(n_frames, float(d), float(sf), float(tf), phase=phase, deg_per_px=1.0)
                out.append(Clip("grating", (float(sf), float(tf)), k, False, frames, float(d)))
    return out


def programme(clips: Sequence[Clip], lead: int = 30, gap: int = 16) -> tuple[np.ndarray, list[int]]:
    """All clips back to back in one movie: `lead` grey frames first, `gap` grey frames after each clip.

    Returns (movie (T, 36, 64) uint8, first frame of each clip). The grey lets the responses to one clip fade
    (the mouse's temporal filters last 24 frames, most of their weight in the first 10) before the next."""
    if not clips:
        raise StimulusError("programme: no clips")
    if lead < 0 or gap < 0:
        raise StimulusError(f"programme: lead and gap must be >= 0, got {lead}, {gap}")
    shape = clips[0].frames.shape[1:]
    parts, starts, t = [np.full((lead, *shape), 128, np.uint8)], [], lead
    for c in clips:
        starts.append(t)
        parts += [c.frames, np.full((gap, *shape), 128, np.uint8)]
        t += c.frames.shape[0] + gap
    return np.concatenate(parts), starts


def mean_behaviour(mouse: Mouse, n_frames: int = 9000, seed: int = 999) -> np.ndarray:
    """The mouse's mean behaviour (4,) over `n_frames` of its behaviour alone (default 5 minutes): the
    constant behaviour the paper reconstructs predicted activity with. Cheap: no neurons are simulated."""
    gen = BehaviourGenerator(np.random.SeedSequence([mouse.seed, int(seed), 1]), mouse.fps, mouse.pupil_rest)
    return gen.frames(n_frames).mean(axis=0).astype(np.float32)


def watch(mouse: Mouse, movie: np.ndarray, trial_seeds: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The synthetic mouse's noisy deconvolved responses (T, N) and behaviour (T, 4) to `movie`, one
    presentation per seed (each its own behaviour and spike/calcium noise; the same seed, the same numbers)."""
    out = []
    for s in trial_seeds:
        stream = MouseStream(mouse, movie_seed=int(s))
        frames = [stream.step(f) for f in movie]
        out.append((np.stack([f.traces for f in frames]).astype(np.float32),
                    np.stack([f.behaviour for f in frames]).astype(np.float32)))  # fmt: skip
    return out
