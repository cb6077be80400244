"""Gradient backends: loss and d loss / d video for a batch of movie windows, whatever runs the encoder.

Contract (numpy in, numpy out, float32):
  loss_and_grad(video (B,T,36,64) 0..255, behaviour (B,T,4), responses (B,N,T) with NaN = not reported,
                weights (B,N) or (N,) non-negative per-neuron weights)
  -> loss (B,), grad (B,T,36,64)
where loss[b] is window b's weighted mean Poisson NLL (pred - obs log(pred + 1e-8)) over its finite
(neuron, frame) pairs and grad[b] = d loss[b] / d video[b]: each window's gradient is its own, whatever
else is in the batch, so the reconstruction can normalise it per window.

- TorchBackend: any torch callable model(video, behaviour) -> (B,N,T) non-negative, by autograd (the
  oracle encoder, or a trained Encoder through `TorchBackend.from_encoder`). Also MSE, for the alpha mask.
- OrtBackend: the gradient.onnx graph of decoder/encoder/export.py under ONNX Runtime (`.provider` says
  which provider runs; an explicitly requested CUDA provider that does not load is an error, never a
  silent CPU run). The graph takes any number of windows and returns each window's own loss and gradient,
  so all windows of a call go through one session.run, with inputs and outputs bound once per batch size
  (IOBinding; the output buffers are reused by the next call).
- Ensemble: K backends (encoders) of one mouse; the reconstruction normalises each member's per-window
  gradient and averages them (see offline.py); here it is a checked container.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Inside the Poisson log, as in the encoder's training loss (neurocine.decoder.encoder.model.POISSON_EPS).
POISSON_EPS = 1e-8
LOSSES = ("poisson", "mse")


class BackendError(ValueError):
    """Inputs of the wrong shape, or a model/graph that cannot be used."""


@runtime_checkable
class GradientBackend(Protocol):
    """What the reconstruction needs from an encoder."""

    name: str
    n_neurons: int
    #: Frames per window the backend requires (None: any length).
    window: int | None

    def loss_and_grad(
        self,
        video: np.ndarray,
        behaviour: np.ndarray,
        responses: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray: ...


def check_batch(
    video: np.ndarray,
    behaviour: np.ndarray,
    responses: np.ndarray | None,
    weights: np.ndarray | None,
    n_neurons: int,
    backend: GradientBackend | None = None,
) -> tuple[np.ndarray, ...]:
    """Validate and convert to float32; weights broadcast to (B, N). Errors name the bad argument, and the
    `backend` whose window length the windows must have (when it requires one)."""
    video = np.asarray(video, dtype=np.float32)
    if video.ndim != 4 or video.shape[2:] != (36, 64):
        raise BackendError(f"video must be (B, T, 36, 64), got shape {video.shape}")
    b, t = video.shape[:2]
    if backend is not None and backend.window is not None and t != backend.window:
        raise BackendError(f"{backend.name} takes windows of {backend.window} frames, got {t}")
    behaviour = np.asarray(behaviour, dtype=np.float32)
    if behaviour.shape != (b, t, 4):
        raise BackendError(f"behaviour must be (B={b}, T={t}, 4), got shape {behaviour.shape}")
    if not np.isfinite(behaviour).all():
        raise BackendError("behaviour holds NaN or inf; fill it before the encoder sees it")
    if responses is None:
        return video, behaviour
    responses = np.asarray(responses, dtype=np.float32)
    if responses.shape != (b, n_neurons, t):
        raise BackendError(f"responses must be (B={b}, N={n_neurons}, T={t}), got shape {responses.shape}")
    if weights is None:
        weights = np.ones((b, n_neurons), np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape == (n_neurons,):
        weights = np.broadcast_to(weights, (b, n_neurons))
    if weights.shape != (b, n_neurons):
        raise BackendError(f"weights must be (N={n_neurons},) or (B={b}, N={n_neurons}), got {weights.shape}")
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise BackendError("weights must be finite and non-negative")
    return video, behaviour, responses, np.array(weights, dtype=np.float32, copy=True)


class TorchBackend:
    """Autograd through a torch model(video, behaviour) -> (B, N, T).

    response_scale (N,): the model predicts responses / scale (a trained Encoder's normalised units); the
    loss compares it with recorded / scale, like the exported graph. predict() returns raw units.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        n_neurons: int,
        *,
        window: int | None = None,
        response_scale: np.ndarray | None = None,
        loss: str = "poisson",
        name: str = "torch",
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        if loss not in LOSSES:
            raise BackendError(f"loss must be one of {LOSSES}, got {loss!r}")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.model = model
        self.n_neurons = int(n_neurons)
        self.window = window
        self.loss = loss
        self.name = name
        self.device = torch.device(device)
        self.provider = f"torch-{self.device.type}"
        scale = np.ones(self.n_neurons, np.float32) if response_scale is None else np.asarray(response_scale)
        if scale.shape != (self.n_neurons,):
            raise BackendError(f"response_scale must be (N={self.n_neurons},), got {scale.shape}")
        self.scale = torch.as_tensor(scale, dtype=torch.float32, device=self.device)

    @classmethod
    def from_oracle(cls, oracle: Any, **kw: Any) -> TorchBackend:
        """The synthetic mouse's OracleEncoder (any window length)."""
        oracle.eval()
        oracle.to(kw.get("device", "cpu"))
        return cls(oracle, oracle.n_neurons, name=f"oracle:{oracle.mouse_id}", **kw)

    @classmethod
    def from_encoder(cls, encoder: Any, mouse: str, **kw: Any) -> TorchBackend:
        """A trained neurocine.decoder.encoder Encoder for one mouse (fixed window, normalised units)."""
        encoder.eval()
        encoder.requires_grad_(False)
        encoder.to(kw.get("device", "cpu"))
        scale = encoder.stats[mouse].response_std.detach().cpu().numpy()

        def model(video: Any, behaviour: Any) -> Any:
            return encoder(video, behaviour, mouse)

        return cls(
            model,
            encoder.neurons[mouse],
            window=encoder.config.window,
            response_scale=scale,
            name=f"encoder:{encoder.config.name}:{mouse}",
            **kw,
        )

    def loss_and_grad(
        self,
        video: np.ndarray,
        behaviour: np.ndarray,
        responses: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        video, behaviour, responses, weights = check_batch(video, behaviour, responses, weights, self.n_neurons, self)
        dev = self.device
        v = torch.from_numpy(video).to(dev).requires_grad_(True)
        obs = torch.from_numpy(responses).to(dev) / self.scale[None, :, None]
        finite = ~torch.isnan(obs)
        obs = torch.where(finite, obs, torch.zeros_like(obs))
        w = finite.float() * torch.from_numpy(weights).to(dev)[:, :, None]
        total = w.sum(dim=(1, 2)).clamp_min(1e-12)
        with torch.enable_grad():
            pred = self.model(v, torch.from_numpy(behaviour).to(dev))
            poisson = self.loss == "poisson"
            per = pred - obs * torch.log(pred + POISSON_EPS) if poisson else (pred - obs) ** 2
            loss = (per * w).sum(dim=(1, 2)) / total
            (grad,) = torch.autograd.grad(loss.sum(), v)
        return loss.detach().cpu().numpy().astype(np.float32), grad.cpu().numpy()

    def predict(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        torch = self.torch
        video, behaviour = check_batch(video, behaviour, None, None, self.n_neurons, self)
        with torch.no_grad():
            pred = self.model(torch.from_numpy(video).to(self.device), torch.from_numpy(behaviour).to(self.device))
        return (pred * self.scale[None, :, None]).cpu().numpy()


def available_providers(
    wanted: Sequence[str] = ("CUDAExecutionProvider", "CPUExecutionProvider"),
) -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in wanted if p in have]


def _read_graph_meta(path: Path) -> dict[str, Any]:
    """graph.json beside an exported graph, checked: a damaged file is named, never a bare traceback."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BackendError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(meta, dict):
        raise BackendError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
    ids = meta.get("neuron_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                             for i in ids)):
        raise BackendError(f"{path}: 'neuron_ids' must be a list of integers")
    return meta


#: What `--provider` means (None: auto, CUDA when it loads, else the CPU).
PROVIDER_CHOICES: dict[str | None, list[str] | None] = {
    None: None,
    "auto": None,
    "cuda": ["CUDAExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}


def ort_session(
    path: Path,
    providers: Sequence[str] | None,
    threads: int = 0,
    profile_prefix: str | None = None,
    model: bytes | None = None,
) -> Any:
    """An InferenceSession of `path` (or of the serialised `model`, named `path` in errors).

    providers None: CUDA when it loads, else the CPU. Explicit providers: the first one must be the one
    that runs, else BackendError (onnxruntime itself drops a CUDA provider that fails to load, e.g. for a
    missing CUDA or cuDNN library, and carries on on the CPU)."""
    import onnxruntime as ort

    explicit = providers is not None
    wanted = list(providers) if explicit else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    usable = available_providers(wanted)
    if explicit and (not usable or usable[0] != wanted[0]):
        raise BackendError(
            f"{path}: ONNX Runtime provider {wanted[0]} is not in this onnxruntime build "
            f"(it has {ort.get_available_providers()}); install onnxruntime-gpu, or choose --provider cpu"
        )
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")  # ops a GPU provider lacks fall back per node
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # subnormal floats cost ~100x on a CPU and change nothing here (bench encoder --profile)
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        session = ort.InferenceSession(model if model is not None else str(path), sess_options=options,
                                       providers=usable)  # fmt: skip
    except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
        raise BackendError(f"{path}: ONNX Runtime cannot load this graph: {err}") from err
    running = session.get_providers()
    if explicit and running[0] != wanted[0]:
        raise BackendError(
            f"{path}: ONNX Runtime provider {wanted[0]} did not load (running {running}); for CUDA, "
            "onnxruntime-gpu needs the CUDA and cuDNN libraries of its build (onnxruntime.preload_dlls() "
            "loads those of the nvidia-* pip packages); or choose --provider cpu"
        )
    return session


class OrtBackend:
    """The exported gradient graph (gradient.onnx) under ONNX Runtime; forward.onnx beside it for predict.

    All windows of a call go through one session.run; the returned gradient is a buffer that the next call
    of the same batch size overwrites (copy it to keep it)."""

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        profile_prefix: str | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if path.is_dir():
            path = path / "gradient.onnx"
        if not path.is_file():
            raise BackendError(f"{path}: no gradient graph (expected gradient.onnx from `neurocine export`)")
        self.path = path
        self.requested = None if providers is None else list(providers)
        self.threads = int(threads or 0)
        ort.set_default_logger_severity(4)
        self.ort_session = ort_session(path, self.requested, self.threads, profile_prefix)
        self.provider = self.ort_session.get_providers()[0]
        self.providers = self.ort_session.get_providers()
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        inputs = {i.name: i for i in self.ort_session.get_inputs()}
        for name in ("video", "behaviour", "responses", "weights"):
            if name not in inputs:
                raise BackendError(f"{path}: graph has no input {name!r} (has {sorted(inputs)})")
        outputs = [o.name for o in self.ort_session.get_outputs()]
        if outputs[:2] != ["loss", "grad_video"]:
            raise BackendError(f"{path}: graph outputs {outputs}, expected ['loss', 'grad_video']")
        vshape = inputs["video"].shape
        if isinstance(vshape[0], int) or len(self.ort_session.get_outputs()[0].shape) != 1:
            raise BackendError(
                f"{path}: graph has a fixed batch of {vshape[0]} window(s) per call and one loss per call "
                "(exported by an older neurocine); re-export it with `neurocine export`"
            )
        self.batch: int | None = None  # dynamic: any number of windows per call
        self.window = int(vshape[1]) if isinstance(vshape[1], int) else None
        self.n_neurons = int(inputs["responses"].shape[1])
        meta_path = path.with_name("graph.json")
        self.meta = _read_graph_meta(meta_path) if meta_path.is_file() else {}
        self.name = f"onnx:{path.parent.name}/{path.name}"
        self._forward: Any = None
        self._bound: dict[tuple[int, int], tuple[Any, np.ndarray, np.ndarray]] = {}

    def _binding(self, b: int, t: int) -> tuple[Any, np.ndarray, np.ndarray]:
        """IOBinding and output buffers for calls of b windows of t frames, made once per shape."""
        import onnxruntime as ort

        if (b, t) not in self._bound:
            loss = np.zeros(b, np.float32)
            grad = np.zeros((b, t, 36, 64), np.float32)
            binding = self.ort_session.io_binding()
            binding.bind_ortvalue_output("loss", ort.OrtValue.ortvalue_from_numpy(loss))
            binding.bind_ortvalue_output("grad_video", ort.OrtValue.ortvalue_from_numpy(grad))
            self._bound = {(b, t): (binding, loss, grad)}  # one shape at a time: each caller uses one
        return self._bound[(b, t)]

    def loss_and_grad(
        self,
        video: np.ndarray,
        behaviour: np.ndarray,
        responses: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        video, behaviour, responses, weights = check_batch(video, behaviour, responses, weights, self.n_neurons, self)
        binding, loss, grad = self._binding(*video.shape[:2])
        for name, value in (("video", video), ("behaviour", behaviour), ("responses", responses),
                            ("weights", weights)):  # fmt: skip
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        self.ort_session.run_with_iobinding(binding)
        return loss, grad

    def predict(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        if self._forward is None:
            fwd = self.path.with_name("forward.onnx")
            if not fwd.is_file():
                raise BackendError(f"{fwd}: no forward graph beside {self.path.name}; predict needs it")
            self._forward = ort_session(fwd, self.requested, self.threads)
        video, behaviour = check_batch(video, behaviour, None, None, self.n_neurons, self)
        return self._forward.run(None, {"video": video, "behaviour": behaviour})[0]


def check_graphs(models: Sequence[str | Path], providers: Sequence[str] | None, threads: int = 0) -> list[str]:
    """Load every model's gradient graph once (start-up check): BackendError naming the file when one
    cannot be loaded, is not batched, or would not run on the requested provider. Returns the providers."""
    return [OrtBackend(m, providers=providers, threads=threads).provider for m in models]


class Ensemble:
    """K backends of one mouse (same neurons, same window requirement)."""

    def __init__(self, members: Sequence[GradientBackend]) -> None:
        members = list(members)
        if not members:
            raise BackendError("an ensemble needs at least one backend")
        n = {m.n_neurons for m in members}
        if len(n) != 1:
            raise BackendError(f"ensemble members disagree on the number of neurons: {sorted(n)}")
        windows = {m.window for m in members} - {None}
        if len(windows) > 1:
            raise BackendError(f"ensemble members need different windows: {sorted(windows)}")
        self.members = members
        #: set by ort_fused.fuse_ensemble: all members' normalised gradient in one session.run
        self.fused: Any = None
        self.n_neurons = n.pop()
        self.window = windows.pop() if windows else None
        self.name = "+".join(m.name for m in members)

    def __len__(self) -> int:
        return len(self.members)

    def predict(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        """Mean prediction of the members."""
        return np.mean([m.predict(video, behaviour) for m in self.members], axis=0)


def as_ensemble(backends: GradientBackend | Ensemble | Sequence[GradientBackend]) -> Ensemble:
    if isinstance(backends, Ensemble):
        return backends
    if isinstance(backends, (list, tuple)):
        return Ensemble(backends)
    return Ensemble([backends])  # type: ignore[list-item]


def normalised_window_grad(
    ens: Ensemble,
    video: np.ndarray,
    behaviour: np.ndarray,
    responses: np.ndarray,
    weights: np.ndarray | None,
    eps: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Each member's per-window gradient divided by its L2 norm (+eps), averaged over members.

    Returns (mean loss per window (B,), gradient (B,T,H,W)). Windows with no valid responses get 0.
    An ensemble with a fused graph (ort_fused.fuse_ensemble) does all of it in one call; its arrays are
    buffers that the next call overwrites (the optimisers use them at once).
    """
    if getattr(ens, "fused", None) is not None:
        return ens.fused.normalised_grad(video, behaviour, responses, weights, eps)
    grad_sum = np.zeros(video.shape, np.float32)
    loss_sum = np.zeros(video.shape[0], np.float64)
    for member in ens.members:
        loss, grad = member.loss_and_grad(video, behaviour, responses, weights)
        norm = np.sqrt(np.einsum("bthw,bthw->b", grad, grad, dtype=np.float64))
        grad_sum += grad * (1.0 / (norm + eps)).astype(np.float32)[:, None, None, None]
        loss_sum += loss
    k = len(ens.members)
    return (loss_sum / k).astype(np.float32), grad_sum / np.float32(k)
