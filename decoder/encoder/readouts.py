"""Per-mouse readouts: the core's features -> each neuron's rate. One contract, one subclass per kind.

A readout is what belongs to one mouse; the core (and the cortex) are shared by every mouse an encoder was
trained on. Every readout subclasses `Readout`, which names what the encoder, the export and the calibration
need from it:
- `reads`: "map" (the core's (B, C, T, H, W) map) or "cortex" (the pooled core through the shared cortex);
- `forward(x) -> (B, N, T)` rates >= 0 (softplus);
- `frozen(prune)`: the export's constant version (weights fixed, cheap to run; `decoder/encoder/export.py`);
- `window_terms(x, responses, weights)`: predictions, recorded responses and weights laid out alike for the
  exported gradient's loss (`export.gradient_function`): the recorded side, which needs no gradient, is moved
  to the predictions' layout, never the other way round;
- `build(core_features, map_size, cortex_features, n_neurons, cfg)`: a new readout for an encoder config.

Kinds (EncoderConfig.readout):
- "pooled": DwiseNeuro's, Dropout1d + grouped Conv1d over the cortex's channels. Published; no "where".
- "gaussian": a normalised Gaussian blob over the map per neuron (learned position and width). Dense: every
  neuron reads every position, so its cost grows as N x C x H x W. Kept to load models trained with it.
- "point": the Gaussian readout in the sense of Lurz et al. 2021 (neuralpredictors): while training each
  neuron's position is drawn around its learned mean, at inference it reads the map at the mean by bilinear
  interpolation: 4 taps x C features per neuron, so its cost is a gather (`FrozenPointReadout`). The default.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def stable_softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    """softplus(x) = log(1 + exp(beta x)) / beta, accurate over the whole range with standard ONNX ops.

    Written as relu(z) + log1p(exp(-|z|)); ONNX has no Log1p (an exporter writes log(1 + u), which is 0 for
    u < 6e-8 in float32, so tiny rates would become exactly 0 and their log-likelihood blow up). Hence
    log1p(u) by its Taylor series to u^5 for u < 0.05 (relative error < 6e-8), log(1 + u) above (where
    float32 rounding of 1 + u costs < 1.2e-6 relative): torch and every exported graph compute the same.
    """
    z = x * beta
    u = torch.exp(-torch.abs(z))
    series = u * (1.0 - u * (0.5 - u * (1.0 / 3.0 - u * (0.25 - u * 0.2))))
    log1p_u = torch.where(u < 0.05, series, torch.log(1.0 + u))
    return (torch.relu(z) + log1p_u) / beta


class Readout(nn.Module):
    """What every per-mouse readout provides (see the module docstring)."""

    #: "map": reads the core's (B, C, T, H, W) map; "cortex": the (B, C', T) output of the shared cortex.
    reads: str = "map"

    def __init__(self, n_neurons: int, beta: float) -> None:
        super().__init__()
        self.n_neurons = int(n_neurons)
        self.beta = float(beta)

    @classmethod
    def build(cls, core_features: int, map_size: tuple[int, int], cortex_features: int, n_neurons: int,
              cfg: Any) -> Readout:
        """A fresh readout of `n_neurons` for an encoder configured by `cfg` (presets.EncoderConfig)."""
        return cls(core_features, map_size, n_neurons, cfg.softplus_beta)

    def frozen(self, prune: float) -> Readout:
        """The export's version: constants, and the cheapest formulation of the same function."""
        return self

    def window_terms(self, x: torch.Tensor, responses: torch.Tensor, weights: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(predictions, responses, weights, window axis), broadcastable to one layout in which window b's loss
        sums every element at index b of the window axis.

        x: this readout's input for B windows, window b's even frames at 2b and its odd ones at 2b + 1 (2B, ...,
        T/2, ...; `Encoder.features`); responses (B, N, T) in the readout's units; weights (B, N). Here:
        predictions (B, 2, N, T/2) as they come, the responses split into even and odd frames to match."""
        n, t = responses.shape[1:]
        pred = self(x).reshape(-1, 2, n, t // 2)
        obs = responses.reshape(-1, n, t // 2, 2).permute(0, 3, 1, 2)
        return pred, obs, weights.reshape(-1, 1, n, 1), 0


class PooledReadout(Readout):
    """One mouse: Dropout1d, grouped pointwise Conv1d (bias) to N neurons, softplus(beta) -> rates >= 0."""

    reads = "cortex"

    def __init__(self, in_ch: int, n_neurons: int, groups: int, drop_rate: float, beta: float) -> None:
        super().__init__(n_neurons, beta)
        self.dropout = nn.Dropout1d(drop_rate)
        padded = math.ceil(n_neurons / groups) * groups
        self.conv = nn.Conv1d(in_ch, padded, 1, groups=groups, bias=True)

    @classmethod
    def build(cls, core_features: int, map_size: tuple[int, int], cortex_features: int, n_neurons: int,
              cfg: Any) -> Readout:
        return cls(cortex_features, n_neurons, cfg.groups, cfg.drop_rate, cfg.softplus_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.dropout(x))[:, : self.n_neurons]
        return stable_softplus(x, self.beta)


class GaussianReadout(Readout):
    """One mouse, reading the core's map (B, C, T, H, W): each neuron pools the map through a normalised
    Gaussian blob at a learned position (x, y in -1..1 over the map) and width, weighs the C pooled features
    with its own weights, adds a bias and applies softplus(beta) -> (B, N, T) rates >= 0.

    Why a blob and not a free mask per neuron: 4 spatial numbers per neuron instead of H*W keep the readout
    well-posed on tens of minutes of data, and a smooth, localised readout gives localised input gradients.
    """

    def __init__(self, in_ch: int, size: tuple[int, int], n_neurons: int, beta: float) -> None:
        super().__init__(n_neurons, beta)
        height, width = size
        self.position = nn.Parameter(torch.empty(n_neurons, 2).uniform_(-0.8, 0.8))
        self.log_sigma = nn.Parameter(torch.full((n_neurons,), math.log(0.4)))
        self.features = nn.Parameter(torch.randn(n_neurons, in_ch) * (0.5 / math.sqrt(in_ch)))
        self.bias = nn.Parameter(torch.zeros(n_neurons))
        self.register_buffer("grid_y", torch.linspace(-1.0, 1.0, height), persistent=False)
        self.register_buffer("grid_x", torch.linspace(-1.0, 1.0, width), persistent=False)

    def spatial_weights(self) -> torch.Tensor:
        """(N, H*W) non-negative weights, each row summing to 1."""
        sigma = torch.exp(self.log_sigma).clamp_min(1e-3)[:, None]
        dy = (self.grid_y[None, :] - self.position[:, 1:2]) / sigma  # (N, H)
        dx = (self.grid_x[None, :] - self.position[:, 0:1]) / sigma  # (N, W)
        w = torch.exp(-0.5 * (dy[:, :, None] ** 2 + dx[:, None, :] ** 2)).reshape(self.n_neurons, -1)
        return w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def weight(self) -> torch.Tensor:
        """(N, C*H*W): features x blob, so the readout is one matrix product (no (B, C, T, N) temporary)."""
        w = self.features[:, :, None] * self.spatial_weights()[:, None, :]
        return w.reshape(self.n_neurons, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_readout(x, self.weight(), self.bias, self.beta)

    def frozen(self, prune: float) -> Readout:
        return FrozenGaussianReadout(self, prune)


def export_softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    """softplus for the exported graphs: aten.softplus, which the export writes with vectorised operators
    (export._softplus_exact) and whose gradient it writes as one sigmoid, where autograd through
    `stable_softplus` costs ~30 kernels on every neuron and frame of a gradient call (`neurocine bench encoder
    --profile`). The same function as `stable_softplus` to float32 rounding (tests/test_readouts.py)."""
    return torch.nn.functional.softplus(x, beta=beta, threshold=1e4)


def dense_readout(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, beta: float,
                  softplus: Any = stable_softplus) -> torch.Tensor:
    """Map (B, C, T, H, W) through a dense (N, C*H*W) weight -> softplus rates (B, N, T)."""
    b, c, t, h, w = x.shape
    y = torch.matmul(x.permute(0, 2, 1, 3, 4).reshape(b * t, c * h * w), weight.t()) + bias  # (B*T, N)
    return softplus(y.reshape(b, t, -1).transpose(1, 2), beta)


class FrozenGaussianReadout(Readout):
    """A GaussianReadout with its pooling matrix (N, C*H*W) computed once: features x blob, blob weights
    below `prune` x the neuron's largest set to 0 (they carry < prune of its weight each)."""

    def __init__(self, readout: GaussianReadout, prune: float) -> None:
        super().__init__(readout.n_neurons, readout.beta)
        with torch.no_grad():
            blob = readout.spatial_weights()
            blob = torch.where(blob >= prune * blob.amax(dim=1, keepdim=True), blob, torch.zeros_like(blob))
        # The pooling matrix (N, C*H*W) is features x blob; the graph keeps these two factors (N*(C+H*W)
        # numbers) and onnxruntime folds their product when it loads the graph: a small file, no per-call cost.
        self.register_buffer("blob", blob.contiguous())
        self.register_buffer("features", readout.features.detach().clone())
        self.register_buffer("bias", readout.bias.detach().clone())
        #: fraction of the pooling matrix kept (reported in graph.json)
        self.kept = float((blob > 0).float().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.features[:, :, None] * self.blob[:, None, :]).reshape(self.n_neurons, -1)
        return dense_readout(x, weight, self.bias, self.beta, softplus=export_softplus)


# ----------------------------------------------------------------------------------------------- point
def bilinear_taps(position: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 map cells each position reads and their bilinear weights.

    position (N, 2) as (x, y) in -1..1 over the map (-1 = the first row/column's centre, +1 the last's, as
    grid_sample with align_corners=True); positions outside are clamped to the map. Returns (index (N, 4) into
    the flattened H*W map, weights (N, 4)) for the taps (y0, x0), (y0, x1), (y1, x0), (y1, x1), where (y0, x0)
    is the top-left cell of the 2x2 block (a map one cell wide or high repeats its cell with weight 0)."""
    height, width = size
    gx = (position[:, 0].clamp(-1.0, 1.0) + 1.0) * 0.5 * (width - 1)
    gy = (position[:, 1].clamp(-1.0, 1.0) + 1.0) * 0.5 * (height - 1)
    x0 = gx.detach().floor().clamp(0, max(width - 2, 0))
    y0 = gy.detach().floor().clamp(0, max(height - 2, 0))
    fx, fy = gx - x0, gy - y0
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    index = torch.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], dim=1).long()
    weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=1)
    return index, weights


class PointReadout(Readout):
    """Each neuron reads the core's map at one learned position (bilinear, 4 taps) with its own C feature
    weights, plus a bias, through softplus(beta).

    Training draws each neuron's position from N(mean, sigma^2) per batch (sigma learned per neuron, started
    at `INIT_SIGMA`), which lets a neuron feel the map beyond its 4 taps and move; evaluation, export and
    reconstruction read at the mean. Positions are (x, y) in -1..1 over the map (`bilinear_taps`).
    """

    INIT_SIGMA = 0.3

    def __init__(self, in_ch: int, size: tuple[int, int], n_neurons: int, beta: float) -> None:
        super().__init__(n_neurons, beta)
        self.size = (int(size[0]), int(size[1]))
        self.position = nn.Parameter(torch.empty(n_neurons, 2).uniform_(-0.8, 0.8))
        self.log_sigma = nn.Parameter(torch.full((n_neurons,), math.log(self.INIT_SIGMA)))
        self.features = nn.Parameter(torch.randn(n_neurons, in_ch) * (0.5 / math.sqrt(in_ch)))
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def sample_positions(self) -> torch.Tensor:
        """The positions this pass reads: drawn around the means while training, the means otherwise."""
        if not self.training:
            return self.position
        noise = torch.randn_like(self.position) * torch.exp(self.log_sigma)[:, None]
        return self.position + noise

    def spatial_weights(self, position: torch.Tensor | None = None) -> torch.Tensor:
        """(N, H*W) bilinear weights: 4 non-zeros per row, summing to 1 (differentiable in the position)."""
        position = self.position if position is None else position
        index, weights = bilinear_taps(position, self.size)
        out = weights.new_zeros(self.n_neurons, self.size[0] * self.size[1])
        return out.scatter_add(1, index, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: a dense (N, C*H*W) product (one matrix product per batch, cheap at training sizes);
        evaluation is the same function (the export computes it as a gather: FrozenPointReadout)."""
        spatial = self.spatial_weights(self.sample_positions())
        weight = (self.features[:, :, None] * spatial[:, None, :]).reshape(self.n_neurons, -1)
        return dense_readout(x, weight, self.bias, self.beta)

    def frozen(self, prune: float) -> Readout:
        return FrozenPointReadout(self)


def plan_blocks(cells: torch.Tensor, n_cells: int, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group neurons by the 2x2 block (cell) they read into blocks of at most `block` neurons.

    Returns (cell of each block (nb,), slot of each neuron (N,) in the flattened (nb * block) layout, neuron of
    each slot (nb * block,), -1 where a slot is empty). Neurons keep their order inside a cell."""
    order = torch.argsort(cells, stable=True)
    counts = torch.bincount(cells, minlength=n_cells)
    per_cell = (counts + block - 1) // block
    block_cell = torch.repeat_interleave(torch.arange(n_cells), per_cell)
    first_block = torch.cumsum(per_cell, 0) - per_cell  # first block of each cell
    first_neuron = torch.cumsum(counts, 0) - counts  # position of each cell's first neuron in `order`
    rank = torch.arange(cells.numel()) - first_neuron[cells[order]]  # rank of each sorted neuron in its cell
    slot_sorted = (first_block[cells[order]] + rank // block) * block + rank % block
    slot = torch.empty_like(slot_sorted)
    slot[order] = slot_sorted
    neuron_of_slot = torch.full((int(block_cell.numel()) * block,), -1, dtype=torch.long)
    neuron_of_slot[slot] = torch.arange(cells.numel())
    return block_cell, slot, neuron_of_slot


class FrozenPointReadout(Readout):
    """A PointReadout at its mean positions, computed as the gather it is.

    Neurons are grouped by the 2x2 block of map cells they read (`plan_blocks`) into blocks of `BLOCK`; per
    block, the 4 taps x C features of the map (picked by a product with a constant one-hot matrix, whose
    gradient is the product with its transpose: no scatter in the gradient graph) times the block's (4C, BLOCK)
    weights give its neurons for every frame. Cost per frame: N x 4C multiply-adds plus the picking, against
    N x C x H x W for the dense readout (`neurocine bench encoder --neurons 1000,8000`).

    Its natural layout is (block, neuron in block, frame): `forward` gathers that into neuron order for
    predictions, while the gradient graph's loss stays in it (`window_terms` moves the recorded responses
    there instead, so no gradient flows through a reordering).
    """

    #: Neurons per block: a block's empty slots cost elementwise work on every frame, more blocks cost picking
    #: work; 64 balances the two for 1,000-8,000 neurons on the `tiny` map (bench encoder --profile).
    BLOCK = 64

    def __init__(self, readout: PointReadout, block: int | None = None) -> None:
        super().__init__(readout.n_neurons, readout.beta)
        height, width = readout.size
        c = readout.features.shape[1]
        block = int(block or self.BLOCK)
        with torch.no_grad():
            index, weights = bilinear_taps(readout.position, readout.size)
            cells_w = max(width - 1, 1)
            cell = (index[:, 0] // width) * cells_w + index[:, 0] % width  # top-left tap -> cell number
            n_cells = max(height - 1, 1) * cells_w
            block_cell, slot, neuron_of_slot = plan_blocks(cell, n_cells, block)
            nb = int(block_cell.numel())
            # one-hot (nb*4, H*W): row 4k+j picks tap j of block k's cell
            tap_of_cell = torch.zeros(n_cells, 4, dtype=torch.long)
            tap_of_cell[cell] = index  # every neuron of a cell has the same 4 taps
            picks = torch.zeros(nb * 4, height * width)
            picks[torch.arange(nb * 4), tap_of_cell[block_cell].reshape(-1)] = 1.0
            # weights (nb, block, 4*C): tap weight x feature weight, zero for empty slots
            w = (weights[:, :, None] * readout.features[:, None, :]).reshape(self.n_neurons, 4 * c)
            padded = torch.zeros(nb * block, 4 * c)
            padded[slot] = w
            bias = torch.zeros(nb * block)
            bias[slot] = readout.bias
        self.block, self.n_blocks = block, nb
        self.register_buffer("picks", picks)
        self.register_buffer("weights", padded.reshape(nb, block, 4 * c).contiguous())
        self.register_buffer("slot_bias", bias.reshape(nb, block, 1))
        self.register_buffer("slot", slot)
        # slot -> neuron for the recorded side; empty slots read an extra, absent neuron (index N)
        self.register_buffer("slot_source", torch.where(neuron_of_slot >= 0, neuron_of_slot, self.n_neurons))
        #: fraction of slots that hold a neuron (reported in graph.json)
        self.kept = float((neuron_of_slot >= 0).float().mean())

    def _slot_rates(self, x: torch.Tensor) -> torch.Tensor:
        """Map (2B, C, T/2, H, W) -> rates (nb, block, 2B*T/2): every block's neurons on every frame."""
        n2, c, half, h, w = x.shape
        flat = x.permute(3, 4, 1, 0, 2).reshape(h * w, c * n2 * half)  # a small transpose of the map
        taps = torch.matmul(self.picks, flat).reshape(self.n_blocks, 4 * c, n2 * half)  # (nb, 4C, frames)
        return export_softplus(torch.matmul(self.weights, taps) + self.slot_bias, self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n2, half = x.shape[0], x.shape[2]
        y = self._slot_rates(x).reshape(self.n_blocks * self.block, n2, half).index_select(0, self.slot)
        return y.permute(1, 0, 2)  # (2B, N, T/2)

    def window_terms(self, x: torch.Tensor, responses: torch.Tensor, weights: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The loss in the blocks' own layout (nb, block, B, 2 halves, T/2): the recorded responses and weights
        are gathered into it (empty slots: NaN and weight 0)."""
        t = responses.shape[2]
        nb, block = self.n_blocks, self.block
        pred = self._slot_rates(x).reshape(nb, block, -1, 2, t // 2)
        halves = responses.reshape(-1, responses.shape[1], t // 2, 2).transpose(2, 3)  # (B, N, 2, T/2)
        obs = self._to_slots(halves, float("nan")).reshape(-1, nb, block, 2, t // 2).permute(1, 2, 0, 3, 4)
        w = self._to_slots(weights, 0.0).reshape(-1, nb, block).permute(1, 2, 0).reshape(nb, block, -1, 1, 1)
        return pred, obs, w, 2

    def _to_slots(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Per-neuron values (B, N, ...) -> slot order (B, nb*block, ...); empty slots get `fill`."""
        pad = values.new_full((values.shape[0], 1, *values.shape[2:]), fill)
        return torch.cat([values, pad], dim=1).index_select(1, self.slot_source)


#: EncoderConfig.readout -> its class (presets.READOUTS names the same kinds; tests check they agree).
READOUT_KINDS: dict[str, type[Readout]] = {"pooled": PooledReadout, "gaussian": GaussianReadout, "point": PointReadout}
