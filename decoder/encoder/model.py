"""The DwiseNeuro encoder family: video + behaviour windows -> non-negative activity of each neuron.

Layout (see presets.py for the numbers): a pointwise stem, inverted-residual 3D blocks (pointwise expand,
depthwise spatial, depthwise temporal, squeeze-excite, pointwise project, parameter-free shortcut with a
BatchNorm) each preceded by a fixed 3D sine/cosine positional encoding, a mean over space, the "cortex"
(grouped pointwise Conv1d layers with channel shuffles), and one readout per mouse.

Parameter-count facts the `dwiseneuro` preset reproduces (core 3,075,736 at expansion 6, 3,673,404 at 7;
cortex 5,402,624): convolutions without bias except in squeeze-excite (both 1x1x1 convs with bias, hidden
width = expanded width // 32) and the readout; a BatchNorm after every convolution (SiLU after all but the
stem's and the projection's) plus one on every shortcut; block i maps core_features[i] ->
core_features[i + 1] with expansion applied to its input width; each cortex layer is a grouped conv, a
BatchNorm + SiLU, a channel shuffle and a tiled, BatchNormed shortcut.

Input planes (presets.INPUT_PLANES): video, then running_speed, pupil_dilation, pupil_x, pupil_y (the order
of neurocine.streams.session.BEHAVIOUR_CHANNELS), each behaviour value a constant plane.

Everything is written with plain, ONNX-friendly operations (strided slices instead of interpolation, a mean
instead of adaptive pooling, an explicit softplus) so the same module can be traced for export.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from neurocine.decoder.encoder.presets import EncoderConfig
from neurocine.decoder.encoder.readouts import READOUT_KINDS

#: Rows of the 64x64 input that hold the 36-row movie frame (rows 14..49) in the pad64 layout.
PAD64_TOP = 14

#: Added to the prediction inside the Poisson log so that a zero prediction stays finite.
POISSON_EPS = 1e-8


def positional_encoding_3d(channels: int, frames: int, height: int, width: int) -> torch.Tensor:
    """Fixed (1, C, T, H, W) sine/cosine code of (t, y, x): a third of the channels per axis.

    Why fixed: it carries no parameters and, computed for the exported window, it is a constant.
    """
    per_axis = 2 * math.ceil(channels / 6)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, per_axis, 2, dtype=torch.float64) / per_axis))
    codes = []
    for axis, size in enumerate((frames, height, width)):
        angle = freqs[:, None] * torch.arange(size, dtype=torch.float64)[None, :]  # (per_axis/2, size)
        code = torch.cat([angle.sin(), angle.cos()], dim=0)  # (per_axis, size)
        shape = [per_axis, 1, 1, 1]
        shape[axis + 1] = size
        codes.append(code.reshape(shape).expand(per_axis, frames, height, width))
    return torch.cat(codes, dim=0)[None, :channels].to(torch.float32).contiguous()


def tile_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat the channel axis (dim 1) cyclically up to `channels` (the parameter-free widening)."""
    have = x.shape[1]
    if have == channels:
        return x
    x = torch.cat([x] * math.ceil(channels / have), dim=1)
    return x if x.shape[1] == channels else x[:, :channels]


class DropPath(nn.Module):
    """Drops a residual branch for whole samples during training (stochastic depth)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class SqueezeExcite3d(nn.Module):
    """Channel gating from the (T, H, W) mean: reduce, SiLU, expand (both with bias), sigmoid."""

    def __init__(self, channels: int, reduce: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduce)
        self.reduce = nn.Conv3d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv3d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3, 4), keepdim=True)
        gate = self.expand(F.silu(self.reduce(gate)))
        return x * torch.sigmoid(gate)


class InvertedResidual3d(nn.Module):
    """Pointwise expand -> depthwise (1,k,k) -> depthwise (kt,1,1) -> SE -> pointwise project, + shortcut.

    Convolutions have no bias (each is followed by a BatchNorm); the shortcut subsamples by striding,
    tiles channels up to the output width and passes a BatchNorm of its own.
    """

    def __init__(self, cfg: EncoderConfig, in_ch: int, out_ch: int, stride: int, drop_path: float) -> None:
        super().__init__()
        mid = in_ch * cfg.expansion
        ks, kt = cfg.spatial_kernel, cfg.temporal_kernel
        self.stride = stride
        self.out_ch = out_ch
        self.expand = nn.Conv3d(in_ch, mid, 1, bias=False)
        self.bn_expand = nn.BatchNorm3d(mid)
        self.spatial = nn.Conv3d(
            mid, mid, (1, ks, ks), stride=(1, stride, stride), padding=(0, ks // 2, ks // 2), groups=mid, bias=False
        )
        self.bn_spatial = nn.BatchNorm3d(mid)
        self.temporal = nn.Conv3d(mid, mid, (kt, 1, 1), padding=(kt // 2, 0, 0), groups=mid, bias=False)
        self.bn_temporal = nn.BatchNorm3d(mid)
        self.se = SqueezeExcite3d(mid, cfg.se_reduce) if cfg.squeeze_excite else nn.Identity()
        self.project = nn.Conv3d(mid, out_ch, 1, bias=False)
        self.bn_project = nn.BatchNorm3d(out_ch)
        self.bn_shortcut = nn.BatchNorm3d(out_ch)
        self.drop_path = DropPath(drop_path)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :, :: self.stride, :: self.stride]
        return self.bn_shortcut(tile_channels(x, self.out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn_expand(self.expand(x)))
        y = F.silu(self.bn_spatial(self.spatial(y)))
        y = F.silu(self.bn_temporal(self.temporal(y)))
        y = self.bn_project(self.project(self.se(y)))
        return self.drop_path(y) + self.shortcut(x)


class Core(nn.Module):
    """(B, 5, T, H, W) -> (B, C, T, H', W'): stem, then a positional code + block per stage."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        feats = cfg.core_features
        s = cfg.stem_stride
        k = cfg.stem_kernel or s
        pad = (k - 1) // 2 if k > s else 0
        self.stem = nn.Conv3d(5, feats[0], (1, k, k), stride=(1, s, s), padding=(0, pad, pad), bias=False)
        self.bn_stem = nn.BatchNorm3d(feats[0])
        height, width = cfg.input_size
        height, width = (height + 2 * pad - k) // s + 1, (width + 2 * pad - k) // s + 1
        self.blocks = nn.ModuleList()
        n = len(feats)
        for i, (in_ch, stride) in enumerate(zip(feats, cfg.spatial_strides, strict=True)):
            out_ch = feats[i + 1] if i + 1 < n else feats[-1]
            self.register_buffer(
                f"position_{i}", positional_encoding_3d(in_ch, cfg.frames, height, width), persistent=False
            )
            self.blocks.append(InvertedResidual3d(cfg, in_ch, out_ch, stride, cfg.drop_path_rate * i / n))
            height, width = math.ceil(height / stride), math.ceil(width / stride)
        self.out_features = feats[-1]
        self.out_size = (height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 5, T, H, W) planes (video, then the four behaviour channels) -> (B, C, T, H', W') map."""
        return self._blocks(self.bn_stem(self.stem(x)))

    def forward_split(self, video: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        """Same as forward() on constant behaviour planes, without building them.

        video (B, 1, T, H, W), behaviour (B, 4, T). The stem is linear, so the behaviour planes contribute
        a per-(sample, frame) bias: their weights summed over the kernel (over its part inside the frame
        where the stem pads).
        """
        s, pad = self.stem.stride, self.stem.padding
        weight = self.stem.weight
        y = F.conv3d(video, weight[:, :1], self.stem.bias, stride=s, padding=pad)  # a bias only once folded
        if pad[1] == 0 and pad[2] == 0:
            bias = torch.matmul(weight[:, 1:].sum(dim=(2, 3, 4)), behaviour)  # (C, 4) @ (B, 4, T) -> (B, C, T)
            return self._blocks(self.bn_stem(y + bias[:, :, :, None, None]))
        ones = video.new_ones((1, 1, 1, *video.shape[-2:]))
        # coef[c, j, h, w]: behaviour channel j's weights of output channel c summed over the in-frame taps
        coef = torch.stack(
            [F.conv3d(ones, weight[:, 1 + j : 2 + j], stride=s, padding=pad)[0, :, 0] for j in range(4)], dim=1
        )
        c, _, h, w = coef.shape
        bias = torch.matmul(coef.permute(2, 3, 0, 1).reshape(h * w * c, 4), behaviour)  # (B, HWC, T)
        bias = bias.reshape(-1, h, w, c, behaviour.shape[-1]).permute(0, 3, 4, 1, 2)  # (B, C, T, H, W)
        return self._blocks(self.bn_stem(y + bias))

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x + getattr(self, f"position_{i}"))
        return x


class ShuffleLayer(nn.Module):
    """Grouped pointwise Conv1d (no bias) + BatchNorm + SiLU, channel shuffle, + tiled/BatchNormed shortcut."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, drop_path: float) -> None:
        super().__init__()
        self.groups = groups
        self.out_ch = out_ch
        self.conv = nn.Conv1d(in_ch, out_ch, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm1d(out_ch)
        self.bn_shortcut = nn.BatchNorm1d(out_ch)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn(self.conv(x)))
        if self.groups > 1:
            b, c, t = y.shape
            y = y.reshape(b, self.groups, c // self.groups, t).transpose(1, 2).reshape(b, c, t)
        return self.drop_path(y) + self.bn_shortcut(tile_channels(x, self.out_ch))


class Cortex(nn.Module):
    """Shared (B, C, T) -> (B, cortex_features[-1], T) mixing before the per-mouse readouts."""

    def __init__(self, cfg: EncoderConfig, in_ch: int) -> None:
        super().__init__()
        layers = []
        for out_ch in cfg.cortex_features:
            layers.append(ShuffleLayer(in_ch, out_ch, cfg.groups, cfg.drop_path_rate))
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.out_features = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


#: Readout parameters that place a neuron: no weight decay (it would pull every neuron to the centre).
NO_DECAY_SUFFIXES: tuple[str, ...] = ("position", "log_sigma")


class MouseStatistics(nn.Module):
    """Per-mouse normalisation constants (buffers): behaviour mean/std and response std per neuron."""

    def __init__(self, n_neurons: int) -> None:
        super().__init__()
        self.register_buffer("behaviour_mean", torch.zeros(4))
        self.register_buffer("behaviour_std", torch.ones(4))
        self.register_buffer("response_std", torch.ones(n_neurons))


class Encoder(nn.Module):
    """Shared core + cortex, one readout per mouse.

    Two entry points:
      forward_planes(x, mouse): the DwiseNeuro input (B, 5, frames, H, W) -> (B, N, frames), normalised units.
      forward(video, behaviour, mouse): a plain window, video (B, 2*frames, 36, 64) in 0..255 and raw
        behaviour (B, 2*frames, 4) -> (B, N, 2*frames) normalised responses; the even and the odd frames run
        as two passes so every frame gets a prediction.
    """

    def __init__(self, config: EncoderConfig, neurons: dict[str, int]) -> None:
        super().__init__()
        if not neurons:
            raise ValueError("an encoder needs at least one mouse (neurons = {mouse_id: n_neurons})")
        for mouse, n in neurons.items():
            if not isinstance(mouse, str) or not mouse or "." in mouse:
                raise ValueError(f"mouse id {mouse!r} must be a non-empty string without '.'")
            if int(n) < 1:
                raise ValueError(f"mouse {mouse!r}: needs at least one neuron, got {n}")
        self.config = config
        self.neurons = {m: int(n) for m, n in neurons.items()}
        self.core = Core(config)
        self.cortex = Cortex(config, self.core.out_features)
        kind = READOUT_KINDS[config.readout]
        self.readouts = nn.ModuleDict({
            m: kind.build(self.core.out_features, self.core.out_size, self.cortex.out_features, n, config)
            for m, n in neurons.items()})
        self.stats = nn.ModuleDict({m: MouseStatistics(n) for m, n in neurons.items()})
        self.register_buffer("video_mean", torch.tensor(127.5))
        self.register_buffer("video_std", torch.tensor(64.0))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _check_mouse(self, mouse: str) -> None:
        if mouse not in self.readouts:
            raise KeyError(f"unknown mouse {mouse!r}; this encoder has {sorted(self.readouts)}")

    def forward_planes(self, x: torch.Tensor, mouse: str) -> torch.Tensor:
        self._check_mouse(mouse)
        return self._head(self.core(x), mouse)

    def _head(self, features: torch.Tensor, mouse: str) -> torch.Tensor:
        """Core map (B, C, T, H, W) -> (B, N, T) through the mouse's readout."""
        return self.readouts[mouse](self._readout_input(features, mouse))

    def _readout_input(self, features: torch.Tensor, mouse: str) -> torch.Tensor:
        """What the mouse's readout reads: the core's map itself, or the cortex's output from its space mean."""
        return features if self.readouts[mouse].reads == "map" else self.cortex(features.mean(dim=(3, 4)))

    def _normalised(
        self, video: torch.Tensor, behaviour: torch.Tensor, mouse: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check shapes; normalise video (and pad it to 64x64 in the pad64 layout) and behaviour."""
        self._check_mouse(mouse)
        cfg = self.config
        if video.dim() != 4 or tuple(video.shape[2:]) != (36, 64):
            raise ValueError(f"video must be (B, T, 36, 64), got {tuple(video.shape)}")
        b, t = video.shape[:2]
        if t != cfg.window:
            raise ValueError(f"video window has {t} frames; this encoder takes windows of {cfg.window}")
        if tuple(behaviour.shape) != (b, t, 4):
            raise ValueError(f"behaviour must be (B={b}, T={t}, 4), got {tuple(behaviour.shape)}")
        stats = self.stats[mouse]
        v = (video - self.video_mean) / self.video_std
        if cfg.frame_layout == "pad64":
            v = F.pad(v, (0, 0, PAD64_TOP, 64 - 36 - PAD64_TOP))
        return v, (behaviour - stats.behaviour_mean) / stats.behaviour_std

    def make_planes(self, video: torch.Tensor, behaviour: torch.Tensor, mouse: str) -> torch.Tensor:
        """The DwiseNeuro input: (B, T, 36, 64) video + (B, T, 4) behaviour -> (2B, 5, T/2, H, W),
        planes ordered as presets.INPUT_PLANES, batch = even frames of every sample, then odd frames."""
        v, beh = self._normalised(video, behaviour, mouse)
        b, t, height, width = v.shape
        planes = beh.transpose(1, 2)[:, :, :, None, None].expand(b, 4, t, height, width)
        x = torch.cat([v[:, None], planes], dim=1)  # (B, 5, T, H, W)
        return torch.cat([x[:, :, 0::2], x[:, :, 1::2]], dim=0)

    def forward(self, video: torch.Tensor, behaviour: torch.Tensor, mouse: str) -> torch.Tensor:
        """(B, T, 36, 64) video + (B, T, 4) behaviour -> (B, N, T), the same as forward_planes on
        make_planes' output, but without materialising the constant behaviour planes."""
        return self.from_features(self.features(video, behaviour, mouse), mouse)

    def window_terms(self, video: torch.Tensor, behaviour: torch.Tensor, mouse: str, responses: torch.Tensor,
                     weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Predictions with responses (B, N, T, normalised units) and weights (B, N) in the readout's own layout,
        for a per-window loss (readouts.Readout.window_terms; the exported gradient's loss)."""
        features = self._readout_input(self.features(video, behaviour, mouse), mouse)
        return self.readouts[mouse].window_terms(features, responses, weights)

    def features(self, video: torch.Tensor, behaviour: torch.Tensor, mouse: str) -> torch.Tensor:
        """The shared core's map of B windows: (2B, C, T/2, H', W'), window b's even frames at 2b, its odd ones
        at 2b + 1. What a frozen core gives a new mouse's readout to fit on (decoder/encoder/calibrate.py)."""
        video, behaviour = self._normalised(video, behaviour, mouse)
        t, h, w = video.shape[1:]
        halves = torch.stack([video[:, 0::2], video[:, 1::2]], dim=1).reshape(-1, 1, t // 2, h, w)
        beh = torch.stack([behaviour[:, 0::2], behaviour[:, 1::2]], dim=1).reshape(-1, t // 2, 4).transpose(1, 2)
        return self.core.forward_split(halves, beh)  # behaviour (2B, 4, T/2)

    def from_features(self, features: torch.Tensor, mouse: str) -> torch.Tensor:
        """features() of B windows -> (B, N, T) through the mouse's readout, even and odd frames interleaved."""
        out = self._head(features, mouse)  # (2B, N, T/2)
        n, half = out.shape[1:]
        return out.reshape(-1, 2, n, half).permute(0, 2, 3, 1).reshape(-1, n, 2 * half)


def poisson_loss(pred: torch.Tensor, obs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Poisson NLL (pred - obs log(pred + eps)) over (B, N, T); NaN observations and weight-0 neurons
    count as absent. weights: (N,) or (B, N) non-negative per-neuron weights."""
    finite = ~torch.isnan(obs)
    obs = torch.where(finite, obs, torch.zeros_like(obs))
    w = finite.to(pred.dtype)
    if weights is not None:
        w = w * (weights[..., None] if weights.dim() == 2 else weights[None, :, None])
    nll = pred - obs * torch.log(pred + POISSON_EPS)
    return (nll * w).sum() / w.sum().clamp_min(1e-12)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_encoder(config: EncoderConfig, neurons: dict[str, int], seed: int = 0) -> Encoder:
    """A freshly initialised encoder; the seed fixes the weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return Encoder(config, neurons)
    finally:
        torch.random.set_rng_state(gen_state)


@torch.no_grad()
def calibrate_batchnorm(encoder: Encoder, batches: list[tuple[torch.Tensor, torch.Tensor]], mouse: str) -> None:
    """Set every BatchNorm's running statistics to the average over `batches` of (video, behaviour).

    Why: a freshly initialised encoder's default statistics (mean 0, var 1) let activations grow block by
    block; calibrated statistics give the realistic, normalised activations a trained model has.
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = encoder.training
    saved = [m.momentum for m in norms]
    encoder.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    try:
        for video, behaviour in batches:
            encoder(video, behaviour, mouse)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        encoder.train(was_training)
