"""The oracle encoder: a differentiable PyTorch twin of the synthetic mouse's noise-free model.

It computes exactly what neurocine.streams.synthetic.model.expected_activity computes (equal within 1e-4
relative, tested), so it is the best encoder any training can reach on synthetic data: reconstructing
through it gives the upper bound of a decoder's quality. Built from a Mouse or from the parameters a
dataset folder carries (`OracleEncoder.from_dataset(folder)`).

forward(video (B, T, 36, 64) float 0..255, behaviour (B, T, 4) in Session channel order)
-> expected responses (B, N, T), non-negative.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neurocine.streams.synthetic.model import DRIVE_SCALE, MAX_SHIFT_PX
from neurocine.streams.synthetic.mouse import Mouse, load_mouse


def find_mouse_folder(path: str | Path) -> Path:
    """The folder holding params.npz for a dataset: a Sensorium folder (meta/mouse), an .nwb/.ncr file
    (its sibling NAME.mouse/), or a mouse folder itself."""
    p = Path(path)
    for cand in (p, p / "meta" / "mouse", p.with_name(p.stem + ".mouse")):
        if (cand / "params.npz").is_file():
            return cand
    raise FileNotFoundError(f"{p}: no synthetic mouse parameters (looked for params.npz in {p}, "
                            f"{p / 'meta' / 'mouse'} and {p.with_name(p.stem + '.mouse')})")


class OracleEncoder(nn.Module):
    """Noise-free expected activity of a synthetic mouse, differentiable with respect to the video."""

    def __init__(self, mouse: Mouse) -> None:
        super().__init__()
        self.mouse_id = mouse.mouse_id
        self.n_neurons = mouse.n_neurons
        self.frame_shape = tuple(mouse.frame_shape)
        self.deg_per_px = float(mouse.deg_per_px)
        self.fps = float(mouse.fps)
        p = mouse.neurons

        def buf(name: str, value: object, dtype: torch.dtype = torch.float32) -> None:
            self.register_buffer(name, torch.as_tensor(value, dtype=dtype).clone(), persistent=True)

        buf("filters", mouse.spatial_filters())  # (2N, H*W)
        # conv1d is a cross-correlation, so flip the taps (tap 0 = current frame goes last)
        buf("h1", torch.as_tensor(p["h1"]).flip(-1))
        buf("h2", torch.as_tensor(p["h2"]).flip(-1))
        buf("is_complex", p["is_complex"], torch.bool)
        for name in ("threshold", "amplitude", "baseline", "run_gain", "arousal_weight", "direction_weight"):
            buf(name, p[name])
        buf("kappa", torch.as_tensor(mouse.deconv_kernel, dtype=torch.float32).flip(-1))
        self.k = float(mouse.softplus_sharpness)
        self.c = float(mouse.complex_offset)
        self.eps = float(mouse.complex_phase_weight)
        self.speed_scale = float(mouse.run_speed_scale)
        self.pupil_rest = float(mouse.pupil_rest)
        self.pupil_range = float(mouse.pupil_range)
        self.max_rate = float(mouse.max_rate)
        self.n_taps = int(p["h1"].shape[1])

    @classmethod
    def from_dataset(cls, path: str | Path) -> OracleEncoder:
        return cls(load_mouse(find_mouse_folder(path)))

    # ------------------------------------------------------------------ pieces
    def _shift(self, x: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        """x (M, H, W) contrast, behaviour (M, 4): sample at (r + dy, c + dx), zeros outside."""
        m, h, w = x.shape
        dy = (behaviour[:, 3] / self.deg_per_px).clamp(-MAX_SHIFT_PX, MAX_SHIFT_PX)
        dx = (behaviour[:, 2] / self.deg_per_px).clamp(-MAX_SHIFT_PX, MAX_SHIFT_PX)
        rows = torch.arange(h, dtype=x.dtype, device=x.device)
        cols = torch.arange(w, dtype=x.dtype, device=x.device)
        gy = (rows[None, :, None] + dy[:, None, None]) * (2.0 / (h - 1)) - 1.0
        gx = (cols[None, None, :] + dx[:, None, None]) * (2.0 / (w - 1)) - 1.0
        grid = torch.stack([gx.expand(m, h, w), gy.expand(m, h, w)], dim=-1)
        return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]

    def _rates(self, la: torch.Tensor, lb: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        """la, lb (B, T, N); behaviour (B, T, 4) -> rates (B, T, N)."""
        energy = torch.sqrt(la * la + lb * lb + self.c * self.c) - self.c + self.eps * la
        v = torch.where(self.is_complex, energy, la)
        run = 1.0 - torch.exp(-behaviour[..., 0:1].clamp(min=0) / self.speed_scale)
        gain = 1.0 + (self.run_gain - 1.0) * run
        arousal = (behaviour[..., 1:2] - self.pupil_rest).clamp(min=0) / self.pupil_range
        driven = self.amplitude * F.softplus(v - self.threshold, beta=self.k)
        visual = gain * (driven / (1.0 + driven / self.max_rate))
        return self.baseline + visual + self.arousal_weight * arousal

    # ------------------------------------------------------------------ forward
    def forward(self, video: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        if video.dim() != 4 or tuple(video.shape[2:]) != self.frame_shape:
            raise ValueError(f"video must be (B, T, {self.frame_shape[0]}, {self.frame_shape[1]}), "
                             f"got {tuple(video.shape)}")
        b, t = video.shape[:2]
        if tuple(behaviour.shape) != (b, t, 4):
            raise ValueError(f"behaviour must be (B={b}, T={t}, 4), got {tuple(behaviour.shape)}")
        n = self.n_neurons
        beh = behaviour.to(self.filters.dtype)
        x = (video.to(self.filters.dtype) - 127.5) / 127.5
        x = self._shift(x.reshape(b * t, *self.frame_shape), beh.reshape(b * t, 4))
        s = x.reshape(b, t, -1) @ self.filters.T  # (B, T, 2N)
        s = F.pad(s.transpose(1, 2), (self.n_taps - 1, 0))  # (B, 2N, T + K - 1), grey before
        h1 = torch.cat([self.h1, self.h1])[:, None]  # (2N, 1, K): even then odd channels
        h2 = torch.cat([self.h2, self.h2])[:, None]
        f1 = F.conv1d(s, h1, groups=2 * n)  # (B, 2N, T)
        f2 = F.conv1d(s, h2, groups=2 * n)
        d = self.direction_weight[:, None]
        la = DRIVE_SCALE * (f1[:, :n] + d * f2[:, n:])
        lb = DRIVE_SCALE * (f1[:, n:] - d * f2[:, :n])
        rates = self._rates(la.transpose(1, 2), lb.transpose(1, 2), beh)  # (B, T, N)
        j = self.kappa.numel()
        zero = torch.zeros(b, 1, n, dtype=rates.dtype, device=rates.device)
        grey = self._rates(zero, zero, beh[:, :1]).expand(b, j - 1, n)
        padded = torch.cat([grey, rates], dim=1).transpose(1, 2).reshape(b * n, 1, t + j - 1)
        expected = F.conv1d(padded, self.kappa.view(1, 1, j)).reshape(b, n, t)
        return expected / self.fps
