"""One ONNX Runtime call for a whole ensemble step: K members' gradient graphs merged into one graph that
also does the per-window normalisation and the average (normalised_window_grad's arithmetic).

Why: the ensemble's gradient is mean_k g_k / (||g_k|| + eps) per window; run member by member it costs K
session.run calls per step, each with its own per-call overhead, and on a GPU K round trips. Merged, the
K independent member subgraphs sit side by side in one graph and one call returns the averaged gradient.
Member graphs are merged as they are (their nodes, initializers and value names prefixed `m<k>/`); the
inputs (video, behaviour, responses, weights) are shared, plus a scalar `eps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.decoder.reconstruct.backends import BackendError, OrtBackend, check_batch, ort_session

INPUTS = ("video", "behaviour", "responses", "weights")


def _prefixed(graph: Any, prefix: str, keep: set[str]) -> tuple[list[Any], list[Any], list[Any], dict[str, str]]:
    """Copies of graph's nodes, initializers and value infos with every name not in `keep` prefixed."""
    import onnx

    def name(n: str) -> str:
        return n if (not n or n in keep) else prefix + n

    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + node.name
        del new.input[:]
        new.input.extend(name(i) for i in node.input)
        del new.output[:]
        new.output.extend(name(o) for o in node.output)
        for attr in new.attribute:  # subgraphs (If/Loop) are not produced by the exporter
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise BackendError("ensemble fusion does not handle graphs with subgraphs")
        nodes.append(new)
    inits = []
    for init in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(init)
        new.name = name(init.name)
        inits.append(new)
    infos = []
    for info in graph.value_info:
        new = onnx.ValueInfoProto()
        new.CopyFrom(info)
        new.name = name(info.name)
        infos.append(new)
    return nodes, inits, infos, {o.name: name(o.name) for o in graph.output}


def fuse_gradient_graphs(paths: Sequence[Path]) -> Any:
    """An onnx ModelProto: inputs video, behaviour, responses, weights, eps (scalar) -> loss (B,) the
    members' mean, grad_video (B,T,36,64) = mean_k grad_k / (||grad_k||_window + eps)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    models = [onnx.load(str(p)) for p in paths]
    first = models[0]
    signature = [(i.name, str(i.type)) for i in first.graph.input]
    for p, m in zip(paths, models, strict=True):
        if [(i.name, str(i.type)) for i in m.graph.input] != signature:
            raise BackendError(f"{p}: its inputs differ from {paths[0]}'s; fuse members of one mouse only")
        if [o.name for o in m.graph.output][:2] != ["loss", "grad_video"]:
            raise BackendError(f"{p}: outputs {[o.name for o in m.graph.output]}, expected loss, grad_video")
    keep = {i.name for i in first.graph.input}
    nodes, inits, infos, functions = [], [], [], {}
    losses, grads = [], []
    for k, m in enumerate(models):
        n, i, v, out = _prefixed(m.graph, f"m{k}/", keep)
        nodes += n
        inits += i
        infos += v
        losses.append(out["loss"])
        grads.append(out["grad_video"])
        for f in m.functions:
            functions.setdefault((f.domain, f.name), f)
    k = len(models)
    inits.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "fuse/axes"))
    inits.append(numpy_helper.from_array(np.array(1.0 / k, np.float32), "fuse/inv_k"))
    scaled = []
    for j, g in enumerate(grads):
        nodes += [
            helper.make_node("ReduceSumSquare", [g, "fuse/axes"], [f"fuse/sq{j}"], keepdims=1),
            helper.make_node("Sqrt", [f"fuse/sq{j}"], [f"fuse/norm{j}"]),
            helper.make_node("Add", [f"fuse/norm{j}", "eps"], [f"fuse/den{j}"]),
            helper.make_node("Div", [g, f"fuse/den{j}"], [f"fuse/g{j}"]),
        ]
        scaled.append(f"fuse/g{j}")
    nodes += [
        helper.make_node("Sum", scaled, ["fuse/gsum"]),
        helper.make_node("Mul", ["fuse/gsum", "fuse/inv_k"], ["grad_video"]),
        helper.make_node("Sum", losses, ["fuse/lsum"]),
        helper.make_node("Mul", ["fuse/lsum", "fuse/inv_k"], ["loss"]),
    ]
    eps = helper.make_tensor_value_info("eps", TensorProto.FLOAT, [])
    outputs = [onnx.ValueInfoProto(), onnx.ValueInfoProto()]
    outputs[0].CopyFrom(first.graph.output[0])
    outputs[1].CopyFrom(first.graph.output[1])
    graph = helper.make_graph(nodes, "ensemble", [*first.graph.input, eps], outputs, inits, value_info=infos)
    opsets = {o.domain: o.version for o in first.opset_import}
    if opsets.get("", 0) < 18:
        raise BackendError(f"{paths[0]}: opset {opsets.get('')} < 18; re-export with `neurocine export`")
    model = helper.make_model(graph, opset_imports=list(first.opset_import), functions=list(functions.values()))
    model.ir_version = first.ir_version
    return model


class FusedOrtEnsemble:
    """The merged graph of K OrtBackend members under one session; `normalised_grad` is the ensemble's
    normalised_window_grad in one session.run (its output buffer is reused by the next call)."""

    def __init__(self, members: Sequence[OrtBackend]) -> None:
        members = list(members)
        if len(members) < 2:
            raise BackendError("fusing needs at least two ONNX Runtime members")
        first = members[0]
        for m in members[1:]:
            if (m.requested, m.threads, m.window, m.n_neurons) != (first.requested, first.threads, first.window,
                                                                  first.n_neurons):  # fmt: skip
                raise BackendError(f"{m.path}: provider, threads, window or neurons differ from {first.path}")
        model = fuse_gradient_graphs([m.path for m in members])
        label = Path(f"ensemble of {len(members)}: " + ", ".join(str(m.path) for m in members))
        self.ort_session = ort_session(label, first.requested, first.threads, model=model.SerializeToString())
        self.provider = self.ort_session.get_providers()[0]
        self.n_neurons, self.window, self.k = first.n_neurons, first.window, len(members)
        self._bound: dict[tuple[int, int], tuple[Any, np.ndarray, np.ndarray]] = {}

    def normalised_grad(
        self,
        video: np.ndarray,
        behaviour: np.ndarray,
        responses: np.ndarray,
        weights: np.ndarray | None,
        eps: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        import onnxruntime as ort

        video, behaviour, responses, weights = check_batch(video, behaviour, responses, weights, self.n_neurons)
        key = video.shape[:2]
        if key not in self._bound:
            loss = np.zeros(key[0], np.float32)
            grad = np.zeros((*key, 36, 64), np.float32)
            binding = self.ort_session.io_binding()
            binding.bind_ortvalue_output("loss", ort.OrtValue.ortvalue_from_numpy(loss))
            binding.bind_ortvalue_output("grad_video", ort.OrtValue.ortvalue_from_numpy(grad))
            self._bound = {key: (binding, loss, grad)}
        binding, loss, grad = self._bound[key]
        for name, value in zip(INPUTS, (video, behaviour, responses, weights), strict=True):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_cpu_input("eps", np.array(eps, np.float32))
        self.ort_session.run_with_iobinding(binding)
        return loss, grad


def fuse_ensemble(ensemble: Any) -> bool:
    """Attach a FusedOrtEnsemble to `ensemble` (as `.fused`) when it has >= 2 members, all OrtBackend;
    normalised_window_grad then makes one call per step. Returns whether it did."""
    members = ensemble.members
    if len(members) < 2 or not all(isinstance(m, OrtBackend) for m in members):
        return False
    ensemble.fused = FusedOrtEnsemble(members)
    return True
