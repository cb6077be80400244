"""From rates to what a two-photon rig delivers: spikes, GCaMP6s-like fluorescence with shot and read
noise, and an online non-negative deconvolution (the "responses" of Sensorium-style data).

All per-frame, vectorised over neurons, with O(N) state, so the live rig and the dataset simulator
share it. Model (dt = 1 / fps):
- spikes: events ~ Poisson(rate dt / m), each a burst of Geometric(1/m) spikes (mean m = burst_mean);
- calcium c (in units of the single-spike peak): an AR(2) process, the sum of a rise (tau 0.08 s) and a
  decay (tau 1.5 s) exponential, c_t = (g_d + g_r) c_{t-1} - g_d g_r c_{t-2} + n_t / peak;
- dF/F = dmax c / (c + c_half) (saturating; slope dff_per_spike at rest);
- photons ~ brightness (1 + dF/F), observed with shot noise (Gaussian approximation) and read noise;
- deconvolution: invert the saturation, invert the AR(2) (exact without noise), smooth with the causal
  kernel kappa (which suppresses the noise the inversion amplifies), clip at 0.
"""

from __future__ import annotations

import numpy as np

from neurocine.streams.synthetic.mouse import Mouse


def ar2_coefficients(mouse: Mouse) -> tuple[float, float, float]:
    """(a1, a2, peak): c_t = a1 c_{t-1} - a2 c_{t-2} + n_t / peak has a unit-peak spike response."""
    dt = 1.0 / mouse.fps
    g_d, g_r = np.exp(-dt / mouse.tau_decay), np.exp(-dt / mouse.tau_rise)
    k = np.arange(int(10 * mouse.fps))
    impulse = (g_d ** (k + 1) - g_r ** (k + 1)) / (g_d - g_r)
    return float(g_d + g_r), float(g_d * g_r), float(impulse.max())


class Spiker:
    """Spike counts per frame from rates, Poisson or bursty (mouse.burst_mean > 1)."""

    def __init__(self, mouse: Mouse, rng: np.random.Generator) -> None:
        self.rng = rng
        self.dt = np.float64(1.0 / mouse.fps)
        self.m = float(mouse.burst_mean)

    def step(self, rate: np.ndarray) -> np.ndarray:
        lam = np.maximum(rate.astype(np.float64), 0) * self.dt
        if self.m <= 1.0:
            return self.rng.poisson(lam).astype(np.float32)
        events = self.rng.poisson(lam / self.m)
        extra = self.rng.negative_binomial(np.maximum(events, 1), 1.0 / self.m)
        return np.where(events > 0, events + extra, 0).astype(np.float32)


class Indicator:
    """Calcium, fluorescence and noise: `step(spikes) -> dF/F as measured` (N,) float32."""

    def __init__(self, mouse: Mouse, rng: np.random.Generator) -> None:
        self.rng = rng
        self.a1, self.a2, self.peak = ar2_coefficients(mouse)
        n = mouse.n_neurons
        self.c1 = np.zeros(n)  # c_{t-1}
        self.c2 = np.zeros(n)  # c_{t-2}
        self.dmax = mouse.dmax
        self.c_half = mouse.saturation_half
        self.brightness = mouse.neurons["brightness"].astype(np.float64)
        self.read_noise = mouse.read_noise

    def step(self, spikes: np.ndarray) -> np.ndarray:
        c = self.a1 * self.c1 - self.a2 * self.c2 + spikes / self.peak
        self.c2, self.c1 = self.c1, c
        dff = self.dmax * c / (c + self.c_half)
        mu = self.brightness * (1.0 + dff)
        noise = self.rng.standard_normal((2, mu.size))
        photons = mu + np.sqrt(mu) * noise[0] + self.read_noise * noise[1]
        return (photons / self.brightness - 1.0).astype(np.float32)


class Deconvolver:
    """Online deconvolution: `step(dF/F) -> non-negative spike-rate estimate` (N,) float32."""

    def __init__(self, mouse: Mouse) -> None:
        self.a1, self.a2, self.peak = ar2_coefficients(mouse)
        n = mouse.n_neurons
        self.dmax, self.c_half = mouse.dmax, mouse.saturation_half
        self.c1 = np.zeros(n)
        self.c2 = np.zeros(n)
        self.kappa = np.asarray(mouse.deconv_kernel, dtype=np.float64)
        self.raw = np.zeros((self.kappa.size, n))  # ring buffer of raw spike estimates
        self.t = 0

    def step(self, dff: np.ndarray) -> np.ndarray:
        y = np.minimum(dff.astype(np.float64), 0.95 * self.dmax)
        c = self.c_half * y / (self.dmax - y)
        raw = self.peak * (c - self.a1 * self.c1 + self.a2 * self.c2)
        self.c2, self.c1 = self.c1, c
        j = self.kappa.size
        self.raw[self.t % j] = raw
        order = (self.t - np.arange(j)) % j
        est = self.kappa @ self.raw[order]
        self.t += 1
        return np.maximum(est, 0.0).astype(np.float32)
