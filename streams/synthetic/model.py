"""The mouse's noise-free expected activity: stimulus + behaviour -> rates -> expected deconvolved trace.

Two implementations of one model, equal up to float32 rounding: `expected_activity` (a whole movie at
once, numpy) and `ExpectedActivityStream` (one frame at a time, O(N) state, used by the live rig and
the dataset simulator). decoder/encoder/oracle.py is the differentiable PyTorch twin of `expected_activity`.

Per frame t (contrast x_t = (frame - 127.5) / 127.5, 0 is grey):
1. the eye looks at gaze (pupil_x, pupil_y) degrees, so the retina sees the screen shifted: bilinear
   sample of x_t at (row + pupil_y / deg_per_px, col + pupil_x / deg_per_px), grey outside, shift
   clipped to +-MAX_SHIFT_PX;
2. s_t = W x_t (W: 2N Gabor filters); L_a = drive_scale (h1*s_e + d h2*s_o), L_b = drive_scale
   (h1*s_o - d h2*s_e), causal FIR over the last N_TAPS frames (grey before the first frame);
3. drive v = L_a (simple) or sqrt(L_a^2 + L_b^2 + c^2) - c + eps L_a (complex);
4. rate = base + amp * gain(run) * softplus_k(v - threshold) + arousal_w * max(pupil - rest, 0) / range;
5. expected trace E_t = sum_j kappa_j rate_{t-j} / fps (kappa: the deconvolution's smoothing, so E is
   the expectation of what the deconvolved trace estimates); rates before the first frame are those of
   a grey screen with the first frame's behaviour.
"""

from __future__ import annotations

import numpy as np

from neurocine.streams.synthetic.mouse import Mouse

MAX_SHIFT_PX = 18.0
#: Global scale that gives the filter outputs roughly unit spread on the naturalistic movies.
DRIVE_SCALE = 1.0


class ModelInputError(ValueError):
    """Video or behaviour handed to the model has the wrong shape, dtype or values."""


def to_contrast(frames: np.ndarray) -> np.ndarray:
    """uint8 (or float 0..255) frames -> float32 contrast, 0 = mid-grey (127.5)."""
    return (np.asarray(frames, dtype=np.float32) - np.float32(127.5)) / np.float32(127.5)


def eye_shift_px(behaviour: np.ndarray, deg_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(dy, dx) in stimulus pixels from the gaze channels, clipped to +-MAX_SHIFT_PX."""
    b = np.asarray(behaviour, dtype=np.float32)
    dy = np.clip(b[..., 3] / np.float32(deg_per_px), -MAX_SHIFT_PX, MAX_SHIFT_PX).astype(np.float32)
    dx = np.clip(b[..., 2] / np.float32(deg_per_px), -MAX_SHIFT_PX, MAX_SHIFT_PX).astype(np.float32)
    return dy, dx


_PAD = int(MAX_SHIFT_PX) + 2


def shift_frame(x: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Bilinear sample of x (H, W) at (r + dy, c + dx), zero (grey) outside the frame."""
    h, w = x.shape
    if dy == 0 and dx == 0:
        return x
    padded = np.zeros((h + 2 * _PAD, w + 2 * _PAD), dtype=np.float32)
    padded[_PAD:_PAD + h, _PAD:_PAD + w] = x
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = np.float32(dy - iy), np.float32(dx - ix)
    y0, x0 = _PAD + iy, _PAD + ix
    a = padded[y0:y0 + h, x0:x0 + w]
    b = padded[y0:y0 + h, x0 + 1:x0 + 1 + w]
    c = padded[y0 + 1:y0 + 1 + h, x0:x0 + w]
    d = padded[y0 + 1:y0 + 1 + h, x0 + 1:x0 + 1 + w]
    one = np.float32(1)
    return (one - fy) * ((one - fx) * a + fx * b) + fy * ((one - fx) * c + fx * d)


def _softplus(x: np.ndarray, k: float) -> np.ndarray:
    return (np.logaddexp(np.float32(0), np.float32(k) * x) / np.float32(k)).astype(np.float32)


class _Readout:
    """Per-neuron constants of steps 3-4, as float32 arrays."""

    def __init__(self, mouse: Mouse) -> None:
        p = mouse.neurons
        self.is_complex = p["is_complex"].astype(bool)
        self.threshold = p["threshold"].astype(np.float32)
        self.amplitude = p["amplitude"].astype(np.float32)
        self.baseline = p["baseline"].astype(np.float32)
        self.run_gain = p["run_gain"].astype(np.float32)
        self.arousal_weight = p["arousal_weight"].astype(np.float32)
        self.direction_weight = p["direction_weight"].astype(np.float32)
        self.k = float(mouse.softplus_sharpness)
        self.c = np.float32(mouse.complex_offset)
        self.eps = np.float32(mouse.complex_phase_weight)
        self.speed_scale = np.float32(mouse.run_speed_scale)
        self.pupil_rest = np.float32(mouse.pupil_rest)
        self.pupil_range = np.float32(mouse.pupil_range)
        self.max_rate = np.float32(mouse.max_rate)

    def rates(self, la: np.ndarray, lb: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        """la, lb (..., N); behaviour (..., 4) -> rates (..., N) in spikes/s."""
        energy = np.sqrt(la * la + lb * lb + self.c * self.c) - self.c + self.eps * la
        v = np.where(self.is_complex, energy, la)
        b = np.asarray(behaviour, dtype=np.float32)
        run = np.float32(1) - np.exp(-np.maximum(b[..., 0:1], 0) / self.speed_scale)
        gain = np.float32(1) + (self.run_gain - np.float32(1)) * run
        arousal = np.maximum(b[..., 1:2] - self.pupil_rest, 0) / self.pupil_range
        driven = self.amplitude * _softplus(v - self.threshold, self.k)
        visual = gain * (driven / (np.float32(1) + driven / self.max_rate))
        return (self.baseline + visual + self.arousal_weight * arousal).astype(np.float32)


def _check_inputs(mouse: Mouse, video: np.ndarray, behaviour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    video = np.asarray(video)
    behaviour = np.asarray(behaviour, dtype=np.float32)
    h, w = mouse.frame_shape
    if video.ndim != 3 or video.shape[1:] != (h, w):
        raise ModelInputError(f"video must be (T, {h}, {w}), got shape {video.shape}")
    if behaviour.shape != (video.shape[0], 4):
        raise ModelInputError(f"behaviour must be (T={video.shape[0]}, 4), got shape {behaviour.shape}")
    if not np.isfinite(behaviour).all():
        raise ModelInputError("behaviour contains NaN or inf (fill gaps before computing expectations)")
    return video, behaviour


def expected_activity(mouse: Mouse, video: np.ndarray, behaviour: np.ndarray,
                      return_rates: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(T, N) float32 noise-free expected deconvolved activity for video (T, H, W) 0..255 and behaviour
    (T, 4) in Session channel order; grey before the movie starts. With return_rates also the rates."""
    video, behaviour = _check_inputs(mouse, video, behaviour)
    t_len = video.shape[0]
    n = mouse.n_neurons
    x = to_contrast(video)
    dy, dx = eye_shift_px(behaviour, mouse.deg_per_px)
    shifted = np.stack([shift_frame(x[t], float(dy[t]), float(dx[t])) for t in range(t_len)]) if t_len else x
    s = shifted.reshape(t_len, -1) @ mouse.spatial_filters().T  # (T, 2N)
    k = mouse.n_taps
    s = np.concatenate([np.zeros((k - 1, 2 * n), np.float32), s])
    h1 = mouse.neurons["h1"].astype(np.float32)
    h2 = mouse.neurons["h2"].astype(np.float32)
    se, so = s[:, :n], s[:, n:]
    f1e = np.zeros((t_len, n), np.float32)
    f1o, f2e, f2o = f1e.copy(), f1e.copy(), f1e.copy()
    for tap in range(k):
        rows = slice(k - 1 - tap, k - 1 - tap + t_len)
        f1e += h1[:, tap] * se[rows]
        f1o += h1[:, tap] * so[rows]
        f2e += h2[:, tap] * se[rows]
        f2o += h2[:, tap] * so[rows]
    readout = _Readout(mouse)
    scale = np.float32(DRIVE_SCALE)
    la = scale * (f1e + readout.direction_weight * f2o)
    lb = scale * (f1o - readout.direction_weight * f2e)
    rates = readout.rates(la, lb, behaviour)
    kappa = np.asarray(mouse.deconv_kernel, dtype=np.float32)
    j = kappa.size
    if t_len:
        zero = np.zeros((1, n), np.float32)
        grey = readout.rates(zero, zero, behaviour[:1])
        padded = np.concatenate([np.repeat(grey, j - 1, axis=0), rates])
    else:
        padded = np.zeros((j - 1, n), np.float32)
    expected = np.zeros((t_len, n), np.float32)
    for lag in range(j):
        expected += kappa[lag] * padded[j - 1 - lag:j - 1 - lag + t_len]
    expected *= np.float32(1.0 / mouse.fps)
    return (expected, rates) if return_rates else expected


class ExpectedActivityStream:
    """The same model, one frame at a time: `step(frame, behaviour) -> (expected (N,), rates (N,))`.

    State: the last N_TAPS filter outputs (2N each) and the last len(kappa) rates; per frame one
    (2N x H*W) matrix-vector product plus O(N * N_TAPS) work, no per-neuron Python loop.
    """

    def __init__(self, mouse: Mouse) -> None:
        self.mouse = mouse
        self.n = mouse.n_neurons
        self.filters = mouse.spatial_filters()
        self.k = mouse.n_taps
        # taps as (K, N): row `tap` weighs the frame `tap` steps back
        self.h1 = np.ascontiguousarray(mouse.neurons["h1"].T.astype(np.float32))
        self.h2 = np.ascontiguousarray(mouse.neurons["h2"].T.astype(np.float32))
        self.readout = _Readout(mouse)
        self.kappa = np.asarray(mouse.deconv_kernel, dtype=np.float32)
        self.hist = np.zeros((self.k, 2 * self.n), np.float32)  # ring buffer of s
        self.rate_hist = np.zeros((self.kappa.size, self.n), np.float32)  # ring buffer of rates
        self.t = 0
        self.grey = np.zeros((mouse.frame_shape[0] * mouse.frame_shape[1],), np.float32)

    def step(self, frame: np.ndarray | None, behaviour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance one frame. `frame` (H, W) 0..255 or None for exact mid-grey; behaviour (4,)."""
        b = np.asarray(behaviour, dtype=np.float32)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise ModelInputError(f"behaviour must be 4 finite numbers, got {b!r}")
        if frame is None:
            x = self.grey
        else:
            if np.shape(frame) != self.mouse.frame_shape:
                raise ModelInputError(f"frame must be {self.mouse.frame_shape}, got shape {np.shape(frame)}")
            dy, dx = eye_shift_px(b, self.mouse.deg_per_px)
            x = shift_frame(to_contrast(frame), float(dy), float(dx)).reshape(-1)
        slot = self.t % self.k
        if frame is None:
            self.hist[slot] = 0
        else:
            np.dot(self.filters, x, out=self.hist[slot])
        order = (slot - np.arange(self.k)) % self.k
        past = self.hist[order]
        n = self.n
        se, so = past[:, :n], past[:, n:]
        f1e = np.einsum("kn,kn->n", self.h1, se)
        f1o = np.einsum("kn,kn->n", self.h1, so)
        f2e = np.einsum("kn,kn->n", self.h2, se)
        f2o = np.einsum("kn,kn->n", self.h2, so)
        d = self.readout.direction_weight
        scale = np.float32(DRIVE_SCALE)
        la = scale * (f1e + d * f2o)
        lb = scale * (f1o - d * f2e)
        rate = self.readout.rates(la, lb, b)
        j = self.kappa.size
        if self.t == 0:
            zero = np.zeros(n, np.float32)
            self.rate_hist[:] = self.readout.rates(zero, zero, b)
        self.rate_hist[self.t % j] = rate
        lag_order = (self.t - np.arange(j)) % j
        expected = np.zeros(n, np.float32)
        for lag in range(j):
            expected += self.kappa[lag] * self.rate_hist[lag_order[lag]]
        expected *= np.float32(1.0 / self.mouse.fps)
        self.t += 1
        return expected, rate
