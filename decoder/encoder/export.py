"""ONNX export of one mouse's encoder: forward and loss-gradient graphs, standard ops, any number of windows per call.

Route (generic: nothing is derived per layer, so it holds for every preset and for new layers):
1. Freeze a copy of the encoder (eval mode, no parameter gradients) so that the weights become constants
   and autograd needs only input gradients. The gaussian readout's blob is computed once here (its negligible
   weights dropped: see READOUT_PRUNE) instead of in every call, and the core's BatchNorms are folded into
   the convolutions before them (`fold_batchnorms`).
2. Trace loss and d loss / d video with `make_fx` (symbolic shapes, so the batch of windows stays a
   dimension of the graph): autograd runs during tracing, so the backward pass is recorded as ATen ops.
3. Decompose while tracing, with PyTorch's core-ATen decomposition table plus three rules of our own
   (`decomposition_table`):
   - `convolution_backward` (which has no ONNX translation) becomes, for the input gradient only, a plain
     convolution with the group-transposed, flipped weight when the stride is 1 and a transposed
     convolution otherwise;
   - `slice_backward` of a strided slice becomes zero-interleaving and padding (not slice_scatter);
   - a 3-D convolution whose kernel spans only time or only space becomes a 2-D one.
   The last two are for onnxruntime's CPU speed (`neurocine bench encoder --profile`). Every other backward
   op (SiLU, sigmoid, padding...) is already decomposed into forward-style ops by the core table.
4. Refuse a graph that still holds a backward op (clear error naming it), then hand the traced graph to
   `torch.onnx.export` (dynamo exporter), fold its constants (onnxscript's folding passes only: no
   Cast/Reshape/Unsqueeze/Constant chains left) and make Reshape targets constant (see `fold_graph`),
   and check the saved graph against the traced one. onnxruntime's CPU and
   CUDA providers run the result; no Gradient operator and no onnxruntime-training is involved.

Graph contract (B = windows per call, a dynamic dimension; T = the encoder's window, N = the neurons):
  forward.onnx:  video (B,T,36,64) float32 0..255, behaviour (B,T,4) raw in BEHAVIOUR_CHANNELS order
                 -> predictions (B,N,T) in raw response units (>= 0).
  gradient.onnx: video, behaviour, responses (B,N,T) raw (NaN = not reported), weights (B,N) (0 masks a
                 neuron; pass ones for none) -> loss (B,): each window's weighted mean Poisson NLL
                 (responses in the training's normalised units), grad_video (B,T,36,64) = d loss_b / d video_b
                 (windows are independent: one call of B windows equals B calls of one).
No optimiser-step graph: the streaming optimiser's update averages overlapping windows, blurs, masks and
ages each frame slot, so it is not a per-window step; it stays in numpy (its time: `neurocine bench
encoder --profile`, "numpy around").
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from neurocine.decoder.encoder.model import POISSON_EPS, Encoder
from neurocine.decoder.encoder.readouts import FrozenGaussianReadout, FrozenPointReadout

aten = torch.ops.aten

FORWARD_INPUTS = ("video", "behaviour")
FORWARD_OUTPUTS = ("predictions",)
GRADIENT_INPUTS = ("video", "behaviour", "responses", "weights")
GRADIENT_OUTPUTS = ("loss", "grad_video")
GRAPHS = ("forward", "gradient")
#: 2: dynamic batch, per-window loss (B,); 1 (absent): fixed batch, one scalar loss per call.
GRAPH_VERSION = 2
#: Windows per call when tracing: >= 2 so that the batch stays symbolic (a size-1 dimension specialises).
TRACE_BATCH = 2
#: Gaussian readout: blob weights below this fraction of the neuron's largest are dropped at export (a blob
#: weight of 1e-6 relative is 5.3 sigma out). Why: the dense pooling matrix otherwise holds thousands of
#: subnormal floats, and a CPU multiplies those ~100x slower (the shipped model: readout Gemm 27 ms instead
#: of 0.9 ms per call, `neurocine bench encoder --profile`). The change to predictions and gradients is
#: checked in tests/test_encoder_export.py.
READOUT_PRUNE = 1e-6


class ExportError(RuntimeError):
    """The encoder could not be turned into a standard-operator ONNX graph."""


def _convolution_input_grad(
    grad_out: torch.Tensor,
    inp: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Any,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """convolution_backward for the input only.

    Stride 1: a plain convolution of the output gradient with the group-transposed, flipped weight
    (onnxruntime runs Conv much faster than ConvTranspose, depthwise especially). Otherwise a transposed
    convolution with the same weight; output_padding recovers sizes that the forward stride rounded away.
    """
    if transposed:
        raise ExportError("gradient export does not support transposed convolutions in the encoder")
    if output_mask[1] or output_mask[2]:
        raise ExportError("gradient export needs frozen weights (a convolution weight still requires grad)")
    if not output_mask[0]:
        return None, None, None
    kernel = list(weight.shape[2:])
    nd = len(kernel)
    reach = [dilation[i] * (kernel[i] - 1) for i in range(nd)]
    if all(s == 1 for s in stride) and all(padding[i] <= reach[i] for i in range(nd)):
        c_out, c_in_group = weight.shape[:2]
        flipped = weight.reshape(groups, c_out // groups, c_in_group, *kernel).transpose(1, 2)
        flipped = flipped.reshape(groups * c_in_group, c_out // groups, *kernel).flip(list(range(2, 2 + nd)))
        back_pad = [reach[i] - padding[i] for i in range(nd)]
        grad_in = aten.convolution(grad_out, flipped, None, [1] * nd, back_pad, dilation, False, [0] * nd, groups)
        return grad_in, None, None
    extra = []
    for i in range(nd):
        covered = (grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + reach[i] + 1
        extra.append(inp.shape[2 + i] - covered)
    grad_in = aten.convolution(grad_out, weight, None, stride, padding, dilation, True, extra, groups)
    return grad_in, None, None


def _slice_input_grad(
    grad_out: torch.Tensor, input_sizes: list[int], dim: int, start: int, end: int, step: int
) -> torch.Tensor:
    """slice_backward of a strided slice as zero-interleaving and padding.

    Why: the core table writes it as slice_scatter into zeros, which the exporter turns into a ScatterND
    between two transposes of the whole tensor (the shortcut's and the even/odd frames' strided slices
    cost ~2 ms of a ~15 ms gradient call; `neurocine bench encoder --profile`). Here a step-s slice's
    gradient is the output gradient with s-1 zeros after each element (Concat + Reshape), then padded or
    cut to the input's size (Pad / Slice): the same numbers, moved, not computed.
    """
    dim = dim % grad_out.dim()
    shape = list(grad_out.shape)
    if step == 1:  # zeros before and after; sizes may be symbolic (the batch), so nothing is made an int
        before = start + input_sizes[dim] if isinstance(start, int) and start < 0 else start
        after = input_sizes[dim] - before - shape[dim]

        def zeros(count: Any) -> list[torch.Tensor]:
            if isinstance(count, int) and count == 0:
                return []
            return [grad_out.new_zeros([*shape[:dim], count, *shape[dim + 1 :]])]

        parts = [*zeros(before), grad_out, *zeros(after)]
        return torch.cat(parts, dim=dim) if len(parts) > 1 else grad_out
    size = int(input_sizes[dim])
    start = min(max(start + size if start < 0 else start, 0), size)
    m = int(shape[dim])
    grad = grad_out
    if m > 0:
        zeros = grad_out.new_zeros([*shape[: dim + 1], step - 1, *shape[dim + 1 :]])
        grad = torch.cat([grad_out.unsqueeze(dim + 1), zeros], dim=dim + 1)
        grad = grad.reshape([*shape[:dim], m * step, *shape[dim + 1 :]])
    covered = int(grad.shape[dim])
    after = size - start - covered
    if after < 0:
        grad = grad.narrow(dim, 0, covered + after)
        after = 0
    if start or after:
        pads = [0, 0] * (grad.dim() - 1 - dim) + [start, after]
        grad = aten.constant_pad_nd(grad, pads, 0.0)
    return grad


def _convolution_3d_as_2d(
    inp: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
) -> Any:
    """A 3-D convolution whose kernel spans only time, or only space, written as a 2-D one.

    Why: onnxruntime's CPU provider runs 2-D (depthwise especially) convolutions 2-3x faster than the same
    work as 3-D ones (the encoder's convolutions are all of these two kinds; `neurocine bench encoder
    --profile`). Time-only kernels (kt, 1, 1), pointwise ones included, see (B, C, T, H*W): a reshape.
    Space-only kernels (1, kh, kw) see (B*T, C, H, W): two transposes. Anything else is left as it is.
    """
    if inp.dim() != 5:
        return NotImplemented
    kt, kh, kw = weight.shape[2:]
    b, c, t, h, w = inp.shape

    def trivial(axes: tuple[int, ...]) -> bool:
        return all(stride[a] == 1 and padding[a] == 0 and dilation[a] == 1 and output_padding[a] == 0 for a in axes)

    if kh == 1 and kw == 1 and trivial((1, 2)):
        out = aten.convolution(inp.reshape(b, c, t, h * w), weight.reshape(*weight.shape[:3], 1), bias,
                               [stride[0], 1], [padding[0], 0], [dilation[0], 1], transposed,
                               [output_padding[0], 0], groups)
        return out.reshape(b, out.shape[1], out.shape[2], h, w)
    if kt == 1 and trivial((0,)):
        flat = inp.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        out = aten.convolution(flat, weight[:, :, 0], bias, stride[1:], padding[1:], dilation[1:], transposed,
                               output_padding[1:], groups)
        return out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)
    return NotImplemented


def _softplus_exact(inp: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """softplus(x) = (relu(z) + log1p(exp(-|z|))) / beta, z = beta x, with vectorised operators only.

    Why not ONNX Runtime's Softplus kernel: exact but scalar, ~50 ns per element (5.6 ms of a 40 ms gradient
    call at 8,000 neurons, `neurocine bench encoder --profile`), while its Exp is vectorised. ONNX has no Log1p:
    log1p(u) = log(s) + (u - (s - 1)) / s with s = 1 + u rounded, the first-order correction for that rounding
    (exact to float32 where plain log(1 + u) loses every digit, u < 1e-7: tiny rates stay right). The
    threshold is ignored: above it the formula gives z anyway."""
    z = inp * beta if beta != 1.0 else inp
    u = torch.exp(-torch.abs(z))
    s = 1.0 + u
    out = torch.relu(z) + (torch.log(s) + (u - (s - 1.0)) / s)
    return out / beta if beta != 1.0 else out


def _softplus_input_grad(grad_out: torch.Tensor, inp: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """softplus_backward as grad * sigmoid(beta x), the sigmoid written as where(z < 0, u, 1) / (1 + u) with
    u = exp(-|z|): exact in relative terms for very negative z, where ONNX Runtime's Sigmoid kernel (an
    approximation good to ~1e-8 absolute) is off by tens of percent, and where the Poisson loss's gradient
    divides by the tiny rate (the core table's exp(z) / (1 + exp(z)) overflows to NaN for large z)."""
    z = inp * beta if beta != 1.0 else inp
    u = torch.exp(-torch.abs(z))
    return grad_out * (torch.where(z < 0, u, torch.ones_like(u)) / (1.0 + u))


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """Core-ATen decompositions plus our rules: input gradients of convolutions and slices, 3-D
    convolutions as 2-D ones."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[aten.softplus.default] = _softplus_exact  # readouts.export_softplus; its gradient a sigmoid:
    table[aten.softplus_backward.default] = _softplus_input_grad
    table[aten.convolution_backward.default] = _convolution_input_grad
    table[aten.slice_backward.default] = _slice_input_grad
    table[aten.convolution.default] = _convolution_3d_as_2d
    return table


def _fold_batchnorm(conv: torch.nn.Conv3d, norm: torch.nn.BatchNorm3d) -> None:
    """Scale conv's weight by norm's per-channel gain and give conv norm's offset as its bias (eval mode:
    conv then norm is one affine map of the input)."""
    with torch.no_grad():
        gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        offset = norm.bias - norm.running_mean * gain
        if conv.bias is not None:
            offset = offset + conv.bias * gain
        conv.weight.mul_(gain.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = torch.nn.Parameter(offset.clone(), requires_grad=False)


def fold_batchnorms(encoder: Encoder) -> None:
    """Fold every BatchNorm of the core that follows a convolution into it (in place, once; eval mode only).

    Why: onnxruntime fuses a Conv and its BatchNormalization only when they are adjacent, and the 2-D
    rewrite of the convolutions (`_convolution_3d_as_2d`) puts a reshape between them; folded, neither
    the forward pass nor the backward one has a norm left (the shortcut's norms, which follow no
    convolution, stay). Predictions and gradients change by float32 rounding only (tests/test_encoder_export.py)."""
    from neurocine.decoder.encoder.model import InvertedResidual3d

    pairs = [(encoder.core, "stem", "bn_stem")]
    pairs += [(block, conv, f"bn_{conv}") for block in encoder.core.blocks if isinstance(block, InvertedResidual3d)
              for conv in ("expand", "spatial", "temporal", "project")]
    for owner, conv, norm in pairs:
        if isinstance(getattr(owner, norm), torch.nn.BatchNorm3d):  # folded already: nothing to do
            _fold_batchnorm(getattr(owner, conv), getattr(owner, norm))
            setattr(owner, norm, torch.nn.Identity())


def frozen_copy(encoder: Encoder, readout_prune: float | None = None, fold_norms: bool = True) -> Encoder:
    """An eval-mode copy whose parameters are constants (the export must not touch the caller's model).
    readout_prune: also put every readout in its frozen form (readouts.Readout.frozen: the gaussian blob computed
    and pruned, the point readout as a gather; None: keep them as they are);
    fold_norms: fold the core's BatchNorms into their convolutions (`fold_batchnorms`)."""
    frozen = copy.deepcopy(encoder).cpu().float().eval()
    frozen.requires_grad_(False)
    if fold_norms:
        fold_batchnorms(frozen)
    if readout_prune is not None:
        for mouse, readout in list(frozen.readouts.items()):
            frozen.readouts[mouse] = readout.frozen(readout_prune)
    return frozen


def example_inputs(encoder: Encoder, mouse: str, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs with the graph's shapes (smooth-ish random movie, behaviour near the mouse's mean)."""
    gen = torch.Generator().manual_seed(seed)
    t, n = encoder.config.window, encoder.neurons[mouse]
    stats = encoder.stats[mouse]
    return {
        "video": torch.rand(batch, t, 36, 64, generator=gen) * 255.0,
        "behaviour": stats.behaviour_mean + stats.behaviour_std * torch.randn(batch, t, 4, generator=gen),
        "responses": torch.rand(batch, n, t, generator=gen) * stats.response_std[None, :, None],
        "weights": torch.ones(batch, n),
    }


def forward_function(encoder: Encoder, mouse: str) -> Callable[..., torch.Tensor]:
    """video, behaviour -> predictions in raw response units."""
    scale = encoder.stats[mouse].response_std

    def predict(video: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        return encoder(video, behaviour, mouse) * scale[None, :, None]

    return predict


def window_poisson_loss(pred: torch.Tensor, obs: torch.Tensor, weights: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Weighted mean Poisson NLL of each window (model.poisson_loss's rule, per window) -> (B,): windows along
    `axis`, every other axis summed (the three tensors broadcast to one layout). NaN observations and
    weight-0 neurons are absent; a window with nothing present has loss 0.

    Written as sum(pred w) - sum(obs w log(pred + eps)) with the recorded side's products formed first: they
    need no gradient, so the gradient graph's work on every (neuron, frame) is a handful of kernels."""
    finite = ~torch.isnan(obs)
    present = finite.to(pred.dtype) * weights
    counts = torch.where(finite, obs, torch.zeros_like(obs)) * present
    dims = [d for d in range(max(pred.dim(), obs.dim())) if d != axis]
    total = (pred * present).sum(dim=dims) - (counts * torch.log(pred + POISSON_EPS)).sum(dim=dims)
    return total / present.sum(dim=dims).clamp_min(1e-12)


def gradient_function(encoder: Encoder, mouse: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """video, behaviour, responses, weights -> (loss per window (B,), d loss_b / d video_b), by autograd.

    The loss is computed in the readout's own layout (readouts.Readout.window_terms): the recorded side is
    moved there, so no gradient flows back through a reordering of the predictions."""
    scale = encoder.stats[mouse].response_std

    def loss_and_grad(
        video: torch.Tensor, behaviour: torch.Tensor, responses: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        video = video.detach().requires_grad_(True)
        with torch.enable_grad():
            terms = encoder.window_terms(video, behaviour, mouse, responses / scale[None, :, None], weights)
            loss = window_poisson_loss(*terms)
            (grad,) = torch.autograd.grad(loss.sum(), video)
        return loss.detach(), grad

    return loss_and_grad


def _backward_ops_left(graph_module: torch.fx.GraphModule) -> list[str]:
    return sorted(
        {
            str(node.target)
            for node in graph_module.graph.nodes
            if node.op == "call_function" and "backward" in str(node.target)
        }
    )


def trace(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """Trace fn (autograd included) into a graph of forward-style ATen ops."""
    from torch.fx.experimental.proxy_tensor import make_fx

    graph_module = make_fx(
        fn, decomposition_table=decomposition_table(), tracing_mode="symbolic", _allow_non_fake_inputs=True
    )(*inputs)
    left = _backward_ops_left(graph_module)
    if left:
        raise ExportError(f"no forward-style decomposition for {left}; add one to export.decomposition_table")
    return graph_module.eval()


def _to_onnx(
    graph_module: torch.fx.GraphModule,
    inputs: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    path: Path,
) -> None:
    """Export a traced graph with a dynamic batch (dimension 0 of every input), fold it (`fold_graph`)
    and check the result against the traced graph on `inputs`.

    onnxruntime's own offline optimisation (optimized_model_filepath) is not saved: it folds the readout's
    pooling matrix into the file (gradient.onnx 1.4 -> 10.8 MB for 1,000 neurons), and onnxruntime applies
    the same folding, plus its provider-specific fusions, when it loads the graph anyway."""
    import logging
    import warnings

    from torch.export import Dim

    # the exporter logs a warning per torchvision operator it cannot register (torchvision is not installed,
    # and no encoder uses it): noise in every export's output
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph_module,
            inputs,
            dynamo=True,
            optimize=False,  # its pattern rewrites change the gradient by up to 5e-3 relative: fold_graph
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic,
            verbose=False,
        )
    if program is None:
        raise ExportError(f"torch.onnx.export returned nothing for {path.name}")
    fold_graph(program.model, path)
    check_standard_ops(path)
    _check_against_torch(graph_module, inputs, input_names, path)


#: Constants up to this many elements are folded into the file; larger ones (the readout's pooling matrix,
#: N x C*H*W) stay as the product of their small factors, which onnxruntime folds when it loads the graph.
FOLD_SIZE_LIMIT = 1 << 20


def fold_graph(model: Any, path: Path) -> None:
    """Fold constants and drop dead and duplicate nodes of an exported onnx_ir model, make its Reshape
    targets constant (`constant_reshape_targets`), then save it.

    onnxscript's optimiser minus its pattern rewriter: the folding is exact (bit-identical outputs on
    the `small` preset), the rewriter's rules were not (5e-3 relative on one window's gradient)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import _constant_folding

    fold = _constant_folding.FoldConstantsPass(
        shape_inference=True, input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=FOLD_SIZE_LIMIT
    )
    loop = ir.passes.PassManager(
        [fold, common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()],
        steps=2,
        early_stop=True,
    )
    passes = ir.passes.Sequential(
        common.InlinePass(),
        loop,
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.NameFixPass(),
    )
    passes(model)
    import onnx

    proto = ir.serde.serialize_model(model)
    constant_reshape_targets(proto)
    onnx.save(proto, str(path))


def constant_reshape_targets(model: Any) -> int:
    """Give every Reshape whose target shape is built at run time from one dynamic number (the batch) and
    constants a constant target with -1 in that place; drop the shape arithmetic left unused. Returns how
    many targets became constant.

    Why: the exporter computes each target from the symbolic batch (Shape, Gather, Mul, Concat), ~40
    chains of tiny kernels per gradient call (`neurocine bench encoder --profile`: Concat and Reshape).
    Reshape's -1 infers that one dimension from the element count, so the result is the same tensor."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph  # an onnx ModelProto, changed in place
    inferred = onnx.shape_inference.infer_shapes(model).graph
    one_element = {
        v.name for v in list(inferred.value_info) + list(inferred.input)
        if [d.dim_value for d in v.type.tensor_type.shape.dim] in ([1], [])
        and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
    }
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node, k))
    outputs = {o.name for o in graph.output}
    changed = 0
    for node in graph.node:
        if node.op_type != "Concat" or node.output[0] in outputs:
            continue
        uses = [(u, k) for u, k in users.get(node.output[0], []) if u.op_type == "Reshape" and k == 1]
        if not uses:
            continue
        dynamic = [i for i in node.input if i not in constants]
        if len(dynamic) != 1 or dynamic[0] not in one_element:
            continue
        parts = [constants[i].reshape(-1) if i in constants else np.array([-1], dtype=np.int64) for i in node.input]
        target = np.concatenate(parts).astype(np.int64)
        if (target == -1).sum() != 1 or (target == 0).any():  # 0 means "copy" or "empty" by allowzero
            continue
        name = f"{node.output[0]}_constant"
        graph.initializer.append(numpy_helper.from_array(target, name))
        constants[name] = target
        for user, k in uses:
            user.input[k] = name
        changed += 1
    # drop what no output needs any more
    needed = set(outputs)
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    live = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return changed


def _check_against_torch(
    graph_module: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...], path: Path
) -> None:
    """The saved graph must reproduce the traced one on the example inputs (a wrong export fails here, at
    export time, not in a decoder). Tolerance: float32 reordering, 1e-3 of each output's scale."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    with torch.no_grad():
        ref = graph_module(*inputs)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    for name, g, r in zip([o.name for o in session.get_outputs()], got, ref, strict=True):
        r = r.detach().numpy()
        scale = float(np.abs(r).max()) or 1.0
        if g.shape != r.shape or not np.isfinite(g).all() or float(np.abs(g - r).max()) > 1e-3 * scale:
            raise ExportError(f"{path.name}: output {name!r} differs from the traced torch graph")


def check_standard_ops(path: Path) -> None:
    """Refuse graphs with non-standard domains or training-only ops (onnxruntime would not run them)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    bad = sorted(
        {
            f"{node.domain}::{node.op_type}"
            for node in model.graph.node
            if node.domain not in ("", "ai.onnx") or node.op_type == "Gradient"
        }
    )
    functions = {f.name for f in model.functions}
    bad = [b for b in bad if b.split("::")[1] not in functions]
    if bad:
        raise ExportError(f"{path.name} uses non-standard operators {bad}")


def export_mouse(
    encoder: Encoder,
    mouse: str,
    out_dir: Path | str,
    metadata: dict[str, Any] | None = None,
    graphs: tuple[str, ...] = GRAPHS,
    readout_prune: float = READOUT_PRUNE,
) -> dict[str, Path]:
    """Write out_dir/<graph>.onnx for the chosen graphs (of GRAPHS) and graph.json; return their paths.
    Every graph takes any number of windows per call (dynamic batch)."""
    unknown = sorted(set(graphs) - set(GRAPHS))
    if unknown or not graphs:
        raise ValueError(f"graphs must be a non-empty subset of {GRAPHS}, got {graphs}")
    if mouse not in encoder.neurons:
        raise ValueError(f"unknown mouse {mouse!r}; the encoder has {sorted(encoder.neurons)}")
    if not 0.0 <= readout_prune < 1.0:
        raise ValueError(f"readout_prune must be in [0, 1), got {readout_prune}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frozen = frozen_copy(encoder, readout_prune)
    ex = example_inputs(frozen, mouse, TRACE_BATCH)
    paths = {g: out / f"{g}.onnx" for g in graphs}
    paths["meta"] = out / "graph.json"
    stale = out / "step.onnx"  # written by earlier versions; nothing loads it
    stale.unlink(missing_ok=True)
    if "forward" in graphs:
        fwd_inputs = tuple(ex[k] for k in FORWARD_INPUTS)
        graph = trace(forward_function(frozen, mouse), fwd_inputs)
        _to_onnx(graph, fwd_inputs, FORWARD_INPUTS, FORWARD_OUTPUTS, paths["forward"])
    if "gradient" in graphs:
        grad_inputs = tuple(ex[k] for k in GRADIENT_INPUTS)
        graph = trace(gradient_function(frozen, mouse), grad_inputs)
        _to_onnx(graph, grad_inputs, GRADIENT_INPUTS, GRADIENT_OUTPUTS, paths["gradient"])
    cfg = frozen.config
    readout = frozen.readouts[mouse]
    meta = {
        "mouse": mouse,
        "preset": cfg.name,
        "config": cfg.to_dict(),
        "graph_version": GRAPH_VERSION,
        "batch": "dynamic",
        "window": cfg.window,
        "frame_size": [36, 64],
        "n_neurons": frozen.neurons[mouse],
        "behaviour_channels": ["running_speed", "pupil_dilation", "pupil_x", "pupil_y"],
        "graphs": {
            "forward": {"inputs": list(FORWARD_INPUTS), "outputs": list(FORWARD_OUTPUTS)},
            "gradient": {"inputs": list(GRADIENT_INPUTS), "outputs": list(GRADIENT_OUTPUTS)},
        },
        "written": [g for g in GRAPHS if g in graphs],
        "loss": "per window: weighted mean Poisson NLL pred - obs*log(pred + 1e-8), obs = responses / response_std",
        "readout": cfg.readout,
        "readout_prune": readout_prune if isinstance(readout, FrozenGaussianReadout) else None,
        # gaussian: fraction of the pooling matrix kept; point: fraction of the gather's slots holding a neuron
        "readout_kept": round(readout.kept, 4) if isinstance(readout, (FrozenGaussianReadout,
                                                                      FrozenPointReadout)) else None,
        **(metadata or {}),
    }
    paths["meta"].write_text(json.dumps(meta, indent=2))
    return paths


def write_half_precision(graph: Path | str, out: Path | str | None = None) -> Path:
    """A float16 copy of an exported graph (weights and activations in fp16, inputs and outputs float32,
    so backends use it unchanged): GRAPH -> GRAPH_fp16.onnx beside it (or `out`). For GPUs, where fp16
    halves memory traffic; its cost in accuracy: tests/test_encoder_export.py (gradient ~2e-3 relative on
    the shipped model) and tools/gpu_bench.py (speed on CUDA). onnxruntime's own converter does the work."""
    import warnings

    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = Path(graph)
    out = Path(out) if out is not None else graph.with_name(graph.stem + "_fp16.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True)
    onnx.save(half, str(out))
    return out


def onnx_session(path: Path | str, device: str = "cpu", threads: int = 0) -> Any:
    """An onnxruntime session on the CPU or the CUDA provider; a CUDA provider that does not load is an
    error (BackendError), never a silent CPU run."""
    from neurocine.decoder.reconstruct.backends import ort_session

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort_session(Path(path), providers, threads)
