"""The inverse decoder: responses -> frames in one feed-forward pass, the first guess the optimiser refines.

Why: the gradient inversion needs tens of steps per frame to leave grey, and live on a CPU it affords about one
step per frame. A direct decoder fitted on the encoder's training tier gives every frame a starting picture
at once (`neurocine bench quality`, its `inverse` group, scores it alone, as the offline start and under the
streaming optimiser; README, "The first guess").

The model is a reduced-rank ridge regression, i.e. a two-layer linear network, fitted in closed form with
numpy (no torch, deterministic): features are each neuron's standardised response (and the 4 behaviour
channels) at a few frame offsets from the target frame; NaN (a neuron not reported, a frame outside the
trial) becomes the neuron's mean, i.e. no evidence. Two heads share the graph:
- ``frame`` uses the responses *after* the frame (offsets 0..+10: the indicator and the receptive fields'
  temporal filters put a frame's evidence there); complete once the frame is 10 frames old;
- ``frame_causal`` uses the responses *up to* the frame (offsets -10..0): what exists when the frame's own
  responses arrive, for provisional frames and the warm start of the newest frame.
The ridge penalty and the rank are chosen on held-out training trials; the rank is the smallest whose held-out
score is within 1 % of full rank (it keeps the shipped files small). The fit: inverse_fit.py.

Exported as ``inverse.onnx`` beside the encoder graphs (standard operators; neuron ids, offsets and the fit
in its metadata) and run with ONNX Runtime (`InverseDecoder`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

INVERSE_FILE = "inverse.onnx"
#: Offsets (frames relative to the target frame) of the two heads; the graph's input spans their union.
OFFSETS_FULL = (0, 2, 4, 6, 8, 10)
OFFSETS_CAUSAL = (-10, -8, -6, -4, -2, 0)
SPAN = tuple(range(min(OFFSETS_CAUSAL), max(OFFSETS_FULL) + 1, 2))  # (-10, -8, ..., 10): 11 input frames
#: Complete evidence for the full head: a frame this many frames old has all its offsets.
FULL_AGE = max(OFFSETS_FULL)
#: Weight of the inverse decoder's own estimate in what the optimisers emit (streaming and offline, when it is
#: the start): the gradient inversion through the CPU-sized encoders is weaker than this decoder alone, and
#: mixing the two beats both (built-in model, bench quality's movies: inverse 0.406, streaming 1 step from it
#: 0.379, mixed 0.7: 0.42; offline from grey 60 iterations 0.301). `neurocine bench quality` measures it.
INVERSE_MIX = 0.7
FRAME_SHAPE = (36, 64)


class InverseError(ValueError):
    """An inverse decoder cannot be fitted, loaded or applied to these inputs."""


# ---------------------------------------------------------------------------------------------- the fit
@dataclasses.dataclass
class InverseFit:
    """A fitted inverse decoder: per head, y = clip(((x - mean) / std) @ a @ b + bias, 0, 255)."""

    neuron_ids: np.ndarray
    resp_mean: np.ndarray  # (N,)
    resp_std: np.ndarray  # (N,)
    beh_mean: np.ndarray  # (4,)
    beh_std: np.ndarray  # (4,)
    heads: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # name -> (a (F, r), b (r, P), bias (P,))
    report: dict[str, dict]  # name -> chosen lambda, rank, held-out scores


# ---------------------------------------------------------------------------------------------- ONNX
def export_inverse(fit: InverseFit, out: str | Path) -> Path:
    """Write inverse.onnx: inputs responses (B, 11, N) and behaviour (B, 11, 4) at offsets SPAN, outputs
    `frame` and `frame_causal` (B, 36, 64) float32 0..255. Standard ONNX operators, opset 17; the weight
    factors in float16 (rounding moves a frame by < 0.1 grey level, checked in tests/test_inverse.py)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = fit.neuron_ids.size
    span = list(SPAN)
    inits = [numpy_helper.from_array(fit.resp_mean.reshape(1, 1, n), "resp_mean"),
             numpy_helper.from_array(fit.resp_std.reshape(1, 1, n), "resp_std"),
             numpy_helper.from_array(fit.beh_mean.reshape(1, 1, 4), "beh_mean"),
             numpy_helper.from_array(fit.beh_std.reshape(1, 1, 4), "beh_std"),
             numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"),
             numpy_helper.from_array(np.array([0.0], np.float32), "lo"),
             numpy_helper.from_array(np.array([255.0], np.float32), "hi"),
             numpy_helper.from_array(np.array([-1, *FRAME_SHAPE], np.int64), "frame_shape")]
    nodes = [
        helper.make_node("Sub", ["responses", "resp_mean"], ["r_c"]),
        helper.make_node("Div", ["r_c", "resp_std"], ["r_z"]),
        helper.make_node("IsNaN", ["r_z"], ["r_nan"]),
        helper.make_node("Where", ["r_nan", "zero", "r_z"], ["r_ok"]),
        helper.make_node("Sub", ["behaviour", "beh_mean"], ["b_c"]),
        helper.make_node("Div", ["b_c", "beh_std"], ["b_z"]),
        helper.make_node("IsNaN", ["b_z"], ["b_nan"]),
        helper.make_node("Where", ["b_nan", "zero", "b_z"], ["b_ok"]),
        helper.make_node("Concat", ["r_ok", "b_ok"], ["x"], axis=2),  # (B, 11, N + 4)
    ]
    for name, offsets in (("frame", OFFSETS_FULL), ("frame_causal", OFFSETS_CAUSAL)):
        a, b, bias = fit.heads[name]
        idx = np.array([span.index(o) for o in offsets], np.int64)
        # the two factors are stored in half precision (half the shipped bytes; ORT folds the Cast at load)
        inits += [numpy_helper.from_array(idx, f"{name}_idx"),
                  numpy_helper.from_array(a.astype(np.float16), f"{name}_a16"),
                  numpy_helper.from_array(b.astype(np.float16), f"{name}_b16"),
                  numpy_helper.from_array(bias, f"{name}_bias"),
                  numpy_helper.from_array(np.array([0, a.shape[0]], np.int64), f"{name}_flat")]
        nodes += [
            helper.make_node("Cast", [f"{name}_a16"], [f"{name}_a"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [f"{name}_b16"], [f"{name}_b"], to=TensorProto.FLOAT),
            helper.make_node("Gather", ["x", f"{name}_idx"], [f"{name}_x"], axis=1),  # (B, L, N + 4)
            helper.make_node("Reshape", [f"{name}_x", f"{name}_flat"], [f"{name}_xf"]),  # (B, L * (N + 4))
            helper.make_node("MatMul", [f"{name}_xf", f"{name}_a"], [f"{name}_h"]),
            helper.make_node("MatMul", [f"{name}_h", f"{name}_b"], [f"{name}_y"]),
            helper.make_node("Add", [f"{name}_y", f"{name}_bias"], [f"{name}_yb"]),
            helper.make_node("Clip", [f"{name}_yb", "lo", "hi"], [f"{name}_yc"]),
            helper.make_node("Reshape", [f"{name}_yc", "frame_shape"], [name]),
        ]
    graph = helper.make_graph(
        nodes, "neurocine_inverse",
        [helper.make_tensor_value_info("responses", TensorProto.FLOAT, ["B", len(span), n]),
         helper.make_tensor_value_info("behaviour", TensorProto.FLOAT, ["B", len(span), 4])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["B", *FRAME_SHAPE]) for h in ("frame", "frame_causal")],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="neurocine")
    model.ir_version = 8
    meta = {"kind": "neurocine-inverse", "neuron_ids": fit.neuron_ids.tolist(), "span": span,
            "offsets": {"frame": list(OFFSETS_FULL), "frame_causal": list(OFFSETS_CAUSAL)}, "fit": fit.report}
    helper.set_model_props(model, {"neurocine": json.dumps(meta)})
    onnx.checker.check_model(model)
    out = Path(out)
    path = out / INVERSE_FILE if out.suffix != ".onnx" else out
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save(model, tmp)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------- run time
class InverseDecoder:
    """inverse.onnx under ONNX Runtime: frames from responses, no torch."""

    def __init__(self, path: str | Path, threads: int = 1, providers: Sequence[str] | None = None) -> None:
        """threads as every ONNX Runtime session here (backends.ort_session): n threads, 0 ONNX Runtime's own
        choice (all cores). providers: the caller's --provider list; None keeps this small graph on the CPU."""
        from neurocine.decoder.reconstruct.backends import BackendError, ort_session

        self.path = Path(path)
        if not self.path.is_file():
            raise InverseError(f"{self.path}: no such inverse decoder")
        try:
            self.ort_session = ort_session(self.path, ["CPUExecutionProvider"] if providers is None else providers,
                                       threads)
        except BackendError as err:  # an unreadable graph, or a provider that does not run: named with the path
            raise InverseError(str(err)) from err
        try:
            meta = json.loads(self.ort_session.get_modelmeta().custom_metadata_map["neurocine"])
            self.neuron_ids = np.asarray(meta["neuron_ids"], np.int64)
            self.span = tuple(int(o) for o in meta["span"])
            self.fit_report = meta.get("fit", {})
        except Exception as err:  # a damaged or foreign file: name it
            raise InverseError(f"{self.path}: not a neurocine inverse decoder ({type(err).__name__}: {err})") from err
        if self.span != SPAN:
            raise InverseError(f"{self.path}: input offsets {self.span}, this version expects {SPAN}")
        self.n_neurons = self.neuron_ids.size

    def check_neurons(self, model_ids: np.ndarray | None, what: str) -> None:
        """The inverse decoder must read the encoder's neurons in the encoder's order."""
        if model_ids is not None and not np.array_equal(np.asarray(model_ids, np.int64), self.neuron_ids):
            raise InverseError(f"{self.path}: its {self.n_neurons} neuron ids differ from {what}'s; "
                               "refit it for this model (neurocine train --inverse)")

    def run(self, responses: np.ndarray, behaviour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(full, causal) frames (B, 36, 64) from responses (B, 11, N) and behaviour (B, 11, 4) at SPAN."""
        r = np.ascontiguousarray(responses, np.float32)
        b = np.ascontiguousarray(behaviour, np.float32)
        if r.ndim != 3 or r.shape[1:] != (len(SPAN), self.n_neurons) or b.shape != (r.shape[0], len(SPAN), 4):
            raise InverseError(f"inverse decoder needs responses (B, {len(SPAN)}, {self.n_neurons}) and behaviour "
                               f"(B, {len(SPAN)}, 4), got {r.shape} and {b.shape}")
        full, causal = self.ort_session.run(["frame", "frame_causal"], {"responses": r, "behaviour": b})
        return full, causal

    def movie(self, responses: np.ndarray, behaviour: np.ndarray, head: str = "frame") -> np.ndarray:
        """The decoder's estimate of every frame of a recording (T, N) / (T, 4): (T, 36, 64)."""
        r, b = span_windows(np.asarray(responses, np.float32), np.asarray(behaviour, np.float32))
        out = [self.run(r[i : i + 256], b[i : i + 256]) for i in range(0, r.shape[0], 256)]
        return np.concatenate([o[0 if head == "frame" else 1] for o in out])


def span_windows(responses: np.ndarray, behaviour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every frame t of a recording, the responses and behaviour at t + SPAN (NaN outside it)."""
    t_len = responses.shape[0]
    idx = np.arange(t_len)[:, None] + np.asarray(SPAN)[None, :]
    ok = (idx >= 0) & (idx < t_len)
    r = np.where(ok[..., None], responses[np.clip(idx, 0, t_len - 1)], np.nan).astype(np.float32)
    b = np.where(ok[..., None], behaviour[np.clip(idx, 0, t_len - 1)], np.nan).astype(np.float32)
    return r, b


def find_inverse(model_dirs: Sequence[str | Path]) -> Path | None:
    """The first model folder's inverse.onnx (ensemble members of one mouse share the same fit)."""
    for d in model_dirs:
        p = Path(d)
        cand = (p if p.name == INVERSE_FILE else p.parent / INVERSE_FILE) if p.is_file() else p / INVERSE_FILE
        if cand.is_file():
            return cand
    return None
