"""The ground-truth mouse: its neurons' receptive fields, behavioural modulation and indicator.

Every parameter is drawn from `seed` (the default seed 0 is the built-in mouse). Neurons are drawn in
blocks of 1,000, each block from its own random stream, so the first 1,000 neurons of an 8,000-neuron
mouse are the 1,000-neuron mouse of the same seed (handy for "fraction of neurons" ablations).

Model of one neuron n (numbers from mouse V1 literature, simplified):
- spatial: a pair of Gabor filters in quadrature (even, odd); RF centre follows the cortical position
  (retinotopy) plus scatter; sigma 5-10 deg (RF size 10-20 deg), spatial frequency around 0.04 cyc/deg;
  DC removed and unit L2 norm, so a uniform (grey) frame drives nothing;
- temporal: a biphasic filter h1 (difference of gamma kernels, peak 1-4 Hz) and a slower monophasic h2;
  a quarter of the neurons add h2 on the quadrature filter, which makes them direction selective;
- 1/3 simple cells: drive = L_a (linear); 2/3 complex: drive = sqrt(L_a^2 + L_b^2 + d^2) - d + eps L_a
  (energy of a quadrature pair, plus a small phase-sensitive part so the gradient at grey is not zero);
- rate (spikes/s) = base + gain(run) * sat(amp * softplus_k(drive - threshold)) + arousal_w * arousal(pupil),
  sat(r) = r / (1 + r / max_rate) (a still mouse's firing saturates near 60 spikes/s),
  gain(run) = 1 + (run_gain - 1) * (1 - exp(-speed / 3 cm/s)) (about x2 when running).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.synthetic.stimuli import DEG_PER_PX, FRAME_RATE, FRAME_SHAPE

DEFAULT_SEED = 0
DEFAULT_NEURONS = 1000
BLOCK = 1000
N_TAPS = 24  # temporal filter length in frames (0.8 s at 30 Hz)
MODEL_VERSION = 1

#: Per-neuron arrays saved in params.npz (name -> dtype).
NEURON_FIELDS: dict[str, Any] = {
    "neuron_ids": np.int64, "cell_coordinates": np.float32,
    "rf_x": np.float64, "rf_y": np.float64, "sigma_px": np.float64, "aspect": np.float64,
    "sf_cpd": np.float64, "orientation": np.float64, "phase": np.float64,
    "is_complex": bool, "direction_weight": np.float64, "tf_hz": np.float64,
    "h1": np.float32, "h2": np.float32,
    "threshold": np.float32, "amplitude": np.float32, "baseline": np.float32,
    "run_gain": np.float32, "arousal_weight": np.float32, "brightness": np.float32,
}


class MouseError(ValueError):
    """Mouse parameters are missing, inconsistent, or were asked for with bad arguments."""


@dataclasses.dataclass
class Mouse:
    """All parameters of a synthetic mouse; per-neuron arrays have N rows (see NEURON_FIELDS)."""

    seed: int
    neurons: dict[str, np.ndarray]
    frame_shape: tuple[int, int] = FRAME_SHAPE
    fps: float = FRAME_RATE
    deg_per_px: float = DEG_PER_PX
    # nonlinearity
    softplus_sharpness: float = 3.0
    complex_offset: float = 0.5
    complex_phase_weight: float = 0.1
    run_speed_scale: float = 3.0  # cm/s
    pupil_rest: float = 12.0  # pupil dilation units
    pupil_range: float = 10.0
    max_rate: float = 60.0  # spikes/s: the visual response saturates towards it
    # indicator (GCaMP6s-like) and noise
    tau_rise: float = 0.08
    tau_decay: float = 1.5
    saturation_half: float = 20.0  # calcium (in single-spike peak units) at half-maximal dF/F
    dff_per_spike: float = 0.25
    read_noise: float = 3.0  # photons per frame (std)
    burst_mean: float = 1.5  # mean spikes per event (geometric bursts); 1 = Poisson spikes
    deconv_kernel: tuple[float, ...] = (0.30, 0.24, 0.18, 0.13, 0.09, 0.06)
    version: int = MODEL_VERSION
    _filters: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ facts
    @property
    def n_neurons(self) -> int:
        return int(self.neurons["neuron_ids"].shape[0])

    @property
    def neuron_ids(self) -> np.ndarray:
        return self.neurons["neuron_ids"]

    @property
    def mouse_id(self) -> str:
        return f"synthetic-{self.seed}"

    @property
    def n_taps(self) -> int:
        return int(self.neurons["h1"].shape[1])

    @property
    def dmax(self) -> float:
        """Saturated dF/F; slope at zero is dff_per_spike per single-spike calcium unit."""
        return self.dff_per_spike * self.saturation_half

    def designed_run_gain(self) -> float:
        """Mean over neurons of the visual gain at full running (what the running test checks)."""
        return float(np.mean(self.neurons["run_gain"]))

    # ------------------------------------------------------------------ filters
    def spatial_filters(self) -> np.ndarray:
        """(2N, H*W) float32: rows 0..N-1 the even Gabors, N..2N-1 the odd ones (cached)."""
        if self._filters is None:
            self._filters = build_spatial_filters(self)
        return self._filters

    def subset(self, n: int) -> Mouse:
        """The first `n` neurons (the same neurons a mouse of this seed with N=n has)."""
        if not 0 < n <= self.n_neurons:
            raise MouseError(f"subset size must be in 1..{self.n_neurons}, got {n}")
        return dataclasses.replace(self, neurons={k: v[:n].copy() for k, v in self.neurons.items()},
                                   _filters=None)

    # ------------------------------------------------------------------ saving
    def scalars(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("neurons", "_filters"):
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        out["n_neurons"] = self.n_neurons
        return out

    def save(self, folder: str | Path) -> None:
        """Write folder/params.npz (per-neuron arrays) and folder/mouse.json (everything else)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "params.npz", "wb") as fh:
            np.savez(fh, **self.neurons)
        text = json.dumps({"model": "neurocine synthetic mouse", **self.scalars()}, indent=2, sort_keys=True)
        (folder / "mouse.json").write_text(text + "\n")


def load_mouse(folder: str | Path) -> Mouse:
    """Read a mouse written by Mouse.save (folder holding params.npz and mouse.json)."""
    folder = Path(folder)
    for name in ("params.npz", "mouse.json"):
        if not (folder / name).is_file():
            raise MouseError(f"{folder}: no {name}; not a synthetic mouse folder")
    meta = json.loads((folder / "mouse.json").read_text())
    if meta.get("version") != MODEL_VERSION:
        raise MouseError(f"{folder}/mouse.json: model version {meta.get('version')} != {MODEL_VERSION}")
    with np.load(folder / "params.npz") as z:
        neurons = {k: z[k] for k in z.files}
    missing = sorted(set(NEURON_FIELDS) - set(neurons))
    if missing:
        raise MouseError(f"{folder}/params.npz: missing arrays {missing}")
    n = neurons["neuron_ids"].shape[0]
    for k, v in neurons.items():
        if v.shape[0] != n:
            raise MouseError(f"{folder}/params.npz: {k} has {v.shape[0]} rows, expected {n}")
    kwargs = {f.name: meta[f.name] for f in dataclasses.fields(Mouse)
              if f.name not in ("neurons", "_filters") and f.name in meta}
    for key in ("frame_shape", "deconv_kernel"):
        kwargs[key] = tuple(kwargs[key])
    return Mouse(neurons=neurons, **kwargs)


# ---------------------------------------------------------------------------------------------- drawing
def _gamma_kernel(n: int, t: np.ndarray, tau: np.ndarray) -> np.ndarray:
    from math import factorial

    x = t / tau
    return x**n * np.exp(-x) / (tau * factorial(n))


def _unit_peak_gain(h: np.ndarray) -> np.ndarray:
    gain = np.abs(np.fft.rfft(h, n=256, axis=1)).max(axis=1, keepdims=True)
    return h / gain


def temporal_filters(tf_hz: np.ndarray, fps: float = FRAME_RATE, n_taps: int = N_TAPS) -> tuple[np.ndarray, np.ndarray]:
    """(h1, h2), each (N, n_taps), tap k weighting the frame k steps back; unit peak gain.

    h1 = gamma3 - 0.8 gamma5 (Adelson-Bergen style biphasic kernel) whose continuous-time peak
    frequency is 0.071/tau, so tau = 0.071 / tf_hz; h2 = gamma5 (slow, monophasic).
    """
    tau = (0.071 / np.asarray(tf_hz, dtype=np.float64))[:, None]
    t = (np.arange(n_taps) + 0.5)[None, :] / fps
    h1 = _gamma_kernel(3, t, tau) - 0.8 * _gamma_kernel(5, t, tau)
    h2 = _gamma_kernel(5, t, tau)
    return _unit_peak_gain(h1).astype(np.float32), _unit_peak_gain(h2).astype(np.float32)


def _draw_block(rng: np.random.Generator, n: int, first_id: int, centre: np.ndarray, fps: float,
                deg_per_px: float, frame_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    h, w = frame_shape
    fov = 630.0  # um, the imaged field of view
    pos = np.column_stack([rng.uniform(0, fov, n), rng.uniform(0, fov, n), rng.uniform(200, 380, n)])
    # retinotopy: the FOV maps to ~40 x 20 px of the screen, plus scatter
    rf_x = centre[0] + (pos[:, 0] / fov - 0.5) * 40 + rng.normal(0, 4.0, n)
    rf_y = centre[1] + (pos[:, 1] / fov - 0.5) * 20 + rng.normal(0, 3.0, n)
    rf_x = np.clip(rf_x, 2, w - 3)
    rf_y = np.clip(rf_y, 2, h - 3)
    is_complex = rng.random(n) < 2 / 3
    direction_weight = np.where(rng.random(n) < 0.25, rng.uniform(0.5, 1.0, n), 0.0)
    tf_hz = np.exp(rng.uniform(np.log(1.0), np.log(4.0), n))
    h1, h2 = temporal_filters(tf_hz, fps)
    threshold = np.where(is_complex, rng.normal(1.4, 0.3, n), rng.normal(0.8, 0.3, n))
    return {
        "neuron_ids": np.arange(first_id, first_id + n, dtype=np.int64),
        "cell_coordinates": pos.astype(np.float32),
        "rf_x": rf_x,
        "rf_y": rf_y,
        "sigma_px": rng.uniform(5.0, 10.0, n) / deg_per_px,
        "aspect": rng.uniform(0.6, 1.0, n),
        "sf_cpd": np.clip(np.exp(rng.normal(np.log(0.04), 0.35, n)), 0.015, 0.12),
        "orientation": rng.uniform(0, np.pi, n),
        "phase": rng.uniform(0, 2 * np.pi, n),
        "is_complex": is_complex,
        "direction_weight": direction_weight,
        "tf_hz": tf_hz,
        "h1": h1,
        "h2": h2,
        "threshold": threshold.astype(np.float32),
        "amplitude": np.exp(rng.normal(np.log(60.0), 0.4, n)).astype(np.float32),
        "baseline": np.exp(rng.normal(np.log(0.3), 0.5, n)).astype(np.float32),
        "run_gain": np.exp(rng.normal(np.log(2.0), 0.2, n)).astype(np.float32),
        "arousal_weight": rng.exponential(1.0, n).astype(np.float32),
        "brightness": np.exp(rng.normal(np.log(1400.0), 0.4, n)).astype(np.float32),
    }


def make_mouse(seed: int = DEFAULT_SEED, n_neurons: int = DEFAULT_NEURONS) -> Mouse:
    """Draw a mouse from its seed; the same (seed, n_neurons) always gives the same mouse."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MouseError(f"mouse seed must be a non-negative integer, got {seed!r}")
    if not isinstance(n_neurons, (int, np.integer)) or n_neurons < 1:
        raise MouseError(f"number of neurons must be a positive integer, got {n_neurons!r}")
    seed = int(seed)
    centre_rng = np.random.default_rng([seed, 0xC0])
    centre = np.array([32.0 + centre_rng.uniform(-6, 6), 18.0 + centre_rng.uniform(-3, 3)])
    blocks = []
    for b in range(int(np.ceil(n_neurons / BLOCK))):
        n = min(BLOCK, n_neurons - b * BLOCK)
        rng = np.random.default_rng([seed, 0xB1, b])
        blocks.append(_draw_block(rng, BLOCK, b * BLOCK, centre, FRAME_RATE, DEG_PER_PX, FRAME_SHAPE))
        blocks[-1] = {k: v[:n] for k, v in blocks[-1].items()}
    neurons = {k: np.concatenate([blk[k] for blk in blocks]).astype(NEURON_FIELDS[k]) for k in NEURON_FIELDS}
    return Mouse(seed=seed, neurons=neurons)


def build_spatial_filters(mouse: Mouse, chunk: int = 1000) -> np.ndarray:
    """(2N, H*W) float32 even/odd Gabor pairs, DC-free and unit-norm (chunked to bound memory)."""
    h, w = mouse.frame_shape
    p = mouse.neurons
    n = mouse.n_neurons
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((2 * n, h * w), dtype=np.float32)
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        dx = xx[None] - p["rf_x"][sl, None, None]
        dy = yy[None] - p["rf_y"][sl, None, None]
        th = p["orientation"][sl, None, None]
        xr = dx * np.cos(th) + dy * np.sin(th)
        yr = -dx * np.sin(th) + dy * np.cos(th)
        sigma = p["sigma_px"][sl, None, None]
        env = np.exp(-(xr**2 + (yr / p["aspect"][sl, None, None]) ** 2) / (2 * sigma**2))
        k = 2 * np.pi * p["sf_cpd"][sl, None, None] * mouse.deg_per_px
        arg = k * xr + p["phase"][sl, None, None]
        for half, carrier in ((0, np.cos(arg)), (1, np.sin(arg))):
            g = env * carrier
            g -= env * (g.sum(axis=(1, 2), keepdims=True) / env.sum(axis=(1, 2), keepdims=True))
            g /= np.sqrt((g**2).sum(axis=(1, 2), keepdims=True)) + 1e-12
            out[half * n + sl.start: half * n + sl.stop] = g.reshape(g.shape[0], -1)
    return out
