"""ONNX export of one mouse's encoder: forward, loss-gradient and fused optimiser-step graphs, standard ops.

Route (generic: nothing is derived per layer, so it holds for every preset and for new layers):
1. Freeze a copy of the encoder (eval mode, no parameter gradients) so that the weights become constants
   and autograd needs only input gradients.
2. Trace loss and d loss / d video with `make_fx`: autograd runs during tracing, so the backward pass is
   recorded as ATen operators.
3. Decompose while tracing, with PyTorch's core-ATen decomposition table plus one rule of our own:
   `convolution_backward` (which has no ONNX translation) becomes, for the input gradient only, a plain
   convolution with the group-transposed, flipped weight when the stride is 1 (fast in onnxruntime) and a
   transposed convolution otherwise. Every other backward op (BatchNorm, SiLU, sigmoid, slicing,
   padding...) is already decomposed into forward-style ops by the core table.
4. Refuse a graph that still holds a backward op (clear error naming it), then hand the traced graph to
   `torch.onnx.export` (dynamo exporter). onnxruntime's CPU and CUDA providers run the result; no
   Gradient operator and no onnxruntime-training is involved.

Graph contract (B fixed at export, T = the encoder's window, N = the mouse's neurons):
  forward.onnx:  video (B,T,36,64) float32 0..255, behaviour (B,T,4) raw in BEHAVIOUR_CHANNELS order
                 -> predictions (B,N,T) in raw response units (>= 0).
  gradient.onnx: video, behaviour, responses (B,N,T) raw (NaN = not reported), weights (B,N) (0 masks a
                 neuron; pass ones for none) -> loss (scalar: weighted mean Poisson NLL, responses in the
                 training's normalised units), grad_video (B,T,36,64) = d loss / d video.
  step.onnx:     the gradient inputs + momentum (B,T,36,64), mask (36,64), step (scalar, from 1), lr (scalar)
                 -> video_next, momentum_next, loss: one step of the reference optimiser (step_function).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from decoder.encoder.model import Encoder, poisson_loss

aten = torch.ops.aten

FORWARD_INPUTS = ("video", "behaviour")
FORWARD_OUTPUTS = ("predictions",)
GRADIENT_INPUTS = ("video", "behaviour", "responses", "weights")
GRADIENT_OUTPUTS = ("loss", "grad_video")
STEP_INPUTS = (*GRADIENT_INPUTS, "momentum", "mask", "step", "lr")
STEP_OUTPUTS = ("video_next", "momentum_next", "loss")
GRAPHS = ("forward", "gradient", "step")

#: The reference optimiser's constants (Bauer et al.): first-moment Adam, per-window L2 normalisation.
MOMENTUM_DECAY = 0.9
GRADIENT_NORM_EPS = 1e-6
GRADIENT_CLIP = 1.0


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


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """Core-ATen decompositions plus the input-gradient rule for convolutions."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _convolution_input_grad
    return table


def frozen_copy(encoder: Encoder) -> Encoder:
    """An eval-mode copy whose parameters are constants (the export must not touch the caller's model)."""
    frozen = copy.deepcopy(encoder).cpu().float().eval()
    frozen.requires_grad_(False)
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


def step_example_inputs(encoder: Encoder, batch: int = 1) -> dict[str, torch.Tensor]:
    """Optimiser state for the step graph: zero momentum, full mask, step 1, lr 1000 (scalars are 0-d)."""
    t = encoder.config.window
    return {
        "momentum": torch.zeros(batch, t, 36, 64),
        "mask": torch.ones(36, 64),
        "step": torch.tensor(1.0),
        "lr": torch.tensor(1000.0),
    }


def forward_function(encoder: Encoder, mouse: str) -> Callable[..., torch.Tensor]:
    """video, behaviour -> predictions in raw response units."""
    scale = encoder.stats[mouse].response_std

    def predict(video: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        return encoder(video, behaviour, mouse) * scale[None, :, None]

    return predict


def gradient_function(encoder: Encoder, mouse: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """video, behaviour, responses, weights -> (loss, d loss / d video), by autograd."""
    scale = encoder.stats[mouse].response_std

    def loss_and_grad(
        video: torch.Tensor, behaviour: torch.Tensor, responses: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        video = video.detach().requires_grad_(True)
        with torch.enable_grad():
            pred = encoder(video, behaviour, mouse)
            loss = poisson_loss(pred, responses / scale[None, :, None], weights)
            (grad,) = torch.autograd.grad(loss, video)
        return loss, grad

    return loss_and_grad


def step_function(encoder: Encoder, mouse: str) -> Callable[..., tuple[torch.Tensor, ...]]:
    """One whole optimiser step per window, so a single graph call keeps all state on the device:
    gradient / (its L2 norm over the window + 1e-6), times the mask (36, 64), clipped to +-1, first-moment
    Adam (m = 0.9 m + 0.1 g, bias-corrected by 1 - 0.9^step, step counted from 1), video -= lr * m_hat,
    clipped to [0, 255]. Windows of the batch are independent (average overlapping windows outside)."""
    loss_and_grad = gradient_function(encoder, mouse)

    def one_step(
        video: torch.Tensor,
        behaviour: torch.Tensor,
        responses: torch.Tensor,
        weights: torch.Tensor,
        momentum: torch.Tensor,
        mask: torch.Tensor,
        step: torch.Tensor,
        lr: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, grad = loss_and_grad(video, behaviour, responses, weights)
        norm = torch.sqrt((grad * grad).sum(dim=(1, 2, 3), keepdim=True))
        g = torch.clamp(grad / (norm + GRADIENT_NORM_EPS) * mask, -GRADIENT_CLIP, GRADIENT_CLIP)
        momentum = MOMENTUM_DECAY * momentum + (1.0 - MOMENTUM_DECAY) * g
        m_hat = momentum / (1.0 - torch.pow(torch.full_like(step, MOMENTUM_DECAY), step))
        video_next = torch.clamp(video.detach() - lr * m_hat, 0.0, 255.0)
        return video_next, momentum, loss

    return one_step


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

    graph_module = make_fx(fn, decomposition_table=decomposition_table())(*inputs)
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
    """Export a traced graph. The onnxscript optimiser stays off: on these graphs it was seen turning a
    finite loss into inf; onnxruntime folds constants at load time anyway."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph_module,
            inputs,
            dynamo=True,
            optimize=False,
            input_names=list(input_names),
            output_names=list(output_names),
            verbose=False,
        )
    if program is None:
        raise ExportError(f"torch.onnx.export returned nothing for {path.name}")
    program.save(str(path))
    check_standard_ops(path)


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
    batch: int = 1,
    metadata: dict[str, Any] | None = None,
    graphs: tuple[str, ...] = ("forward", "gradient"),
) -> dict[str, Path]:
    """Write out_dir/<graph>.onnx for the chosen graphs (of GRAPHS) and graph.json; return their paths."""
    unknown = sorted(set(graphs) - set(GRAPHS))
    if unknown or not graphs:
        raise ValueError(f"graphs must be a non-empty subset of {GRAPHS}, got {graphs}")
    if mouse not in encoder.neurons:
        raise ValueError(f"unknown mouse {mouse!r}; the encoder has {sorted(encoder.neurons)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frozen = frozen_copy(encoder)
    ex = example_inputs(frozen, mouse, batch)
    ex.update(step_example_inputs(frozen, batch))
    fwd_inputs = tuple(ex[k] for k in FORWARD_INPUTS)
    grad_inputs = tuple(ex[k] for k in GRADIENT_INPUTS)
    paths = {g: out / f"{g}.onnx" for g in graphs}
    paths["meta"] = out / "graph.json"
    if "forward" in graphs:
        graph = trace(forward_function(frozen, mouse), fwd_inputs)
        _to_onnx(graph, fwd_inputs, FORWARD_INPUTS, FORWARD_OUTPUTS, paths["forward"])
    if "gradient" in graphs:
        graph = trace(gradient_function(frozen, mouse), grad_inputs)
        _to_onnx(graph, grad_inputs, GRADIENT_INPUTS, GRADIENT_OUTPUTS, paths["gradient"])
    if "step" in graphs:
        step_inputs = tuple(ex[k] for k in STEP_INPUTS)
        graph = trace(step_function(frozen, mouse), step_inputs)
        _to_onnx(graph, step_inputs, STEP_INPUTS, STEP_OUTPUTS, paths["step"])
    cfg = frozen.config
    meta = {
        "mouse": mouse,
        "preset": cfg.name,
        "config": cfg.to_dict(),
        "batch": batch,
        "window": cfg.window,
        "frame_size": [36, 64],
        "n_neurons": frozen.neurons[mouse],
        "behaviour_channels": ["running_speed", "pupil_dilation", "pupil_x", "pupil_y"],
        "graphs": {
            "forward": {"inputs": list(FORWARD_INPUTS), "outputs": list(FORWARD_OUTPUTS)},
            "gradient": {"inputs": list(GRADIENT_INPUTS), "outputs": list(GRADIENT_OUTPUTS)},
            "step": {"inputs": list(STEP_INPUTS), "outputs": list(STEP_OUTPUTS)},
        },
        "written": [g for g in GRAPHS if g in graphs],
        "loss": "weighted mean Poisson NLL pred - obs*log(pred + 1e-8), obs = responses / response_std",
        **(metadata or {}),
    }
    paths["meta"].write_text(json.dumps(meta, indent=2))
    return paths


def onnx_session(path: Path | str, device: str = "cpu", threads: int = 0) -> Any:
    """An onnxruntime session on the CPU or CUDA provider; check `.get_providers()` for what actually ran."""
    import onnxruntime as ort

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime has no CUDAExecutionProvider here")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
