"""Resolve `--model` arguments into gradient backends for one session (torch is imported only when needed).

Accepted today:
- `oracle` (or no --model): the synthetic mouse that recorded the session (its parameters beside the file:
  NAME.mouse/ or meta/mouse/, else drawn again from the seed in its mouse id `synthetic-<seed>`);
- a synthetic mouse folder (holding params.npz), or a dataset whose mouse parameters sit beside it: its
  oracle encoder, torch backend;
- a trained encoder folder (config.json + model.safetensors, or such a `checkpoint/` inside it): torch
  backend, the mouse whose neuron ids match the session best;
- an exported gradient graph: gradient.onnx, or the folder holding it (from decoder/encoder/export.py):
  ONNX Runtime backend; neuron ids from graph.json.
The backend rule, one for every verb (`--backend auto`, the default): a model folder that has its ONNX graphs
runs them under ONNX Runtime; torch runs checkpoints without graphs and the oracle, or when asked
(`--backend torch`). `--provider cuda` runs on CUDA or fails naming CUDA, on either backend.

A model belongs to a mouse: graph.json (or the checkpoint) names the mouse it was fitted on, and a session of
another mouse is refused (`MouseMismatch`) unless the caller allows it (`--allow-other-mouse`): unit ids are
unique only within a recording, so matching them across mice would decode silently from the wrong neurons.
The alpha mask is looked up beside the (first) model: alpha_mask.npy; the inverse decoder (the optimiser's
first guess, decoder/reconstruct/inverse.py) likewise: inverse.onnx.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.decoder.reconstruct.backends import PROVIDER_CHOICES, BackendError, Ensemble
from neurocine.decoder.reconstruct.inverse import InverseDecoder, InverseError, find_inverse
from neurocine.decoder.reconstruct.offline import load_alpha_mask, masks_from_alpha
from neurocine.streams.session import Session


@dataclasses.dataclass
class LoadedModels:
    ensemble: Ensemble
    #: session neuron columns in the model's neuron order
    columns: np.ndarray
    opt_mask: np.ndarray | None
    eval_mask: np.ndarray | None
    description: list[str]
    #: the first guess beside the (first) model folder that has one, reading the encoders' neurons in their order
    inverse: InverseDecoder | None = None


class MouseMismatch(BackendError):
    """A session of another mouse than the one a model was fitted on."""


#: --backend: "auto" = the ONNX graphs where the model folder has them, else torch (see the module docstring).
BACKENDS = ("auto", "onnx", "torch")


def add_model_args(p: Any, *, threads_default: int | None = 1, threads_help: str = "") -> None:
    """--model, --backend, --provider, --threads and --allow-other-mouse, one definition for every verb that
    runs an encoder (reconstruct, batch, decode, demo and the benches that decode)."""
    p.add_argument("--model", action="append", default=None,
                   help="model folder (its ONNX graphs and/or checkpoint; default: the built-in model "
                   "decoder/models/default), gradient.onnx, a synthetic mouse folder, or 'oracle' (the synthetic "
                   "mouse that recorded the session); repeat for an ensemble of one mouse")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): the model's ONNX graphs under ONNX Runtime where the folder has them, "
                   "torch for checkpoints without graphs and the oracle; onnx or torch to insist")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): CUDA where it runs, else the CPU; cuda: CUDA or an error naming it "
                   "(ONNX Runtime and torch alike)")
    p.add_argument("--threads", type=int, default=threads_default,
                   help=threads_help or f"ONNX Runtime (or torch) CPU threads; 0 = all cores "
                   f"(default {threads_default})")
    p.add_argument("--allow-other-mouse", action="store_true",
                   help="decode a session whose mouse is not the model's (neurons still matched by id); without it "
                   "such a session is refused: calibrate a model for the mouse (neurocine calibrate)")


def model_argv(args: Any) -> list[str]:
    """add_model_args' options as given, for a `neurocine decode` started by another verb (demo, benches)."""
    argv = [a for m in (args.model or []) for a in ("--model", m)]
    argv += ["--backend", args.backend, "--provider", args.provider]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return argv + (["--allow-other-mouse"] if args.allow_other_mouse else [])


def check_model_args(args: Any) -> None:
    """Load add_model_args' models once as given (backend, provider), so that a verb which starts a decoder
    elsewhere (demo, benches, batch) fails at once, naming the fault (e.g. --provider cuda without CUDA), rather
    than after its processes or tasks have started. Raises BackendError."""
    models = args.model or default_models()
    preload_models(models, resolve_backend(models, args.backend), providers_for(args.provider),
                   args.threads if args.threads is not None else 1)


def resolve_backend(models: Sequence[str], requested: str = "auto") -> str:
    """The backend that runs `models`: requested 'onnx'/'torch' as asked, 'auto' by backend_of."""
    if requested not in BACKENDS:
        raise BackendError(f"backend must be one of {BACKENDS}, got {requested!r}")
    return backend_of(models) if requested == "auto" else requested


def providers_for(provider: str | None) -> list[str] | None:
    """--provider -> ONNX Runtime's providers (None: CUDA where it loads, else the CPU)."""
    if provider not in PROVIDER_CHOICES:
        raise BackendError(f"--provider must be one of auto, cuda, cpu; got {provider!r}")
    return PROVIDER_CHOICES[provider]


def torch_device(providers: Sequence[str] | None) -> str:
    """The torch device for --provider: cuda when asked (an error naming CUDA where torch has none), the CPU
    when asked, and for auto CUDA where torch sees a device."""
    import torch

    wanted = None if providers is None else providers[0]
    if wanted == "CUDAExecutionProvider":
        if not torch.cuda.is_available():
            raise BackendError("--provider cuda: torch sees no CUDA device here (a CPU-only torch build, or no "
                               "GPU); choose --provider cpu")
        return "cuda"
    if wanted is None and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def check_mouse(model_mouse: str | None, spec: str, session: Session, allow_other_mouse: bool) -> None:
    """Refuse a session of another mouse than the model's (MouseMismatch), unless allowed. A model that names
    no mouse (exported by an older version) and a session that names none pass with their ids matched."""
    if allow_other_mouse or model_mouse is None or session.mouse_id == model_mouse:
        return
    raise MouseMismatch(
        f"--model {spec} was fitted on mouse {model_mouse!r}, but the session is from mouse {session.mouse_id!r}: "
        "unit ids are unique only within one recording, so its neurons cannot be matched by id. Calibrate a model "
        f"for {session.mouse_id!r} from a recording with its stimulus (neurocine calibrate --recording REC "
        f"--out models/{_safe_folder(session.mouse_id)}; minutes on a CPU), or pass --allow-other-mouse if both "
        "names are the same animal and its ROIs")


def _safe_folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "mouse"


def _oracle_for_session(session: Session, session_path: str | Path | None):  # -> OracleEncoder
    from neurocine.decoder.encoder.oracle import OracleEncoder, find_mouse_folder

    if session_path is not None:
        try:
            return OracleEncoder.from_dataset(find_mouse_folder(session_path)), "oracle beside the session"
        except FileNotFoundError:
            pass
    match = re.fullmatch(r"synthetic-(\d+)", session.mouse_id)
    if not match:
        raise BackendError(
            f"session mouse {session.mouse_id!r} is not a synthetic mouse and no mouse "
            "parameters lie beside it; pass --model"
        )
    from neurocine.streams.synthetic import make_mouse

    ids = session.neuron_ids
    n = int(ids.max()) + 1 if ids.size else 0
    mouse = make_mouse(int(match.group(1)), n)
    mouse = mouse.subset(n)
    return OracleEncoder(mouse), f"oracle drawn from seed {match.group(1)}"


def match_columns(
    session_ids: np.ndarray, model_ids: np.ndarray | None, n_model: int, what: str
) -> np.ndarray:
    """Session columns that feed the model's neurons, matched by id (or by position when the model has no
    ids and the counts agree). Neurons the session lacks get column -1 (always NaN, i.e. masked)."""
    if model_ids is None:
        if session_ids.size != n_model:
            raise BackendError(
                f"{what} has {n_model} neurons and no neuron ids; the session has {session_ids.size}"
            )
        return np.arange(n_model)
    pos = {int(i): k for k, i in enumerate(session_ids)}
    cols = np.array([pos.get(int(i), -1) for i in model_ids], dtype=np.int64)
    if (cols >= 0).sum() == 0:
        raise BackendError(f"{what}: none of its {n_model} neuron ids occurs in the session")
    return cols


#: The models shipped in the package: `default` and the two other seeds of its ensemble.
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: The built-in model (a trained encoder of the built-in synthetic mouse, its ONNX graphs and alpha mask).
DEFAULT_MODEL_DIR = SHIPPED_MODELS_DIR / "default"


def default_models() -> list[str]:
    """What `--model` means when not given (every verb asks here): the built-in model when it is installed,
    else the synthetic mouse's oracle."""
    return [str(DEFAULT_MODEL_DIR)] if (DEFAULT_MODEL_DIR / "gradient.onnx").is_file() else ["oracle"]


def backend_of(models: Sequence[str]) -> str:
    """'onnx' for exported graphs (a folder with gradient.onnx, or a .onnx file), else 'torch' (checkpoints,
    the oracle); a mix is refused, since an ensemble runs on one backend."""
    kinds = {"onnx" if (m.endswith(".onnx") or (Path(m) / "gradient.onnx").is_file()) else "torch" for m in models}
    if len(kinds) > 1:
        raise BackendError(f"--model mixes ONNX graphs and torch models: {list(models)}")
    return kinds.pop()


def _checkpoint_dir(p: Path) -> Path | None:
    for cand in (p, p / "checkpoint"):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return cand
    return None


def _pick_mouse(config: dict, session: Session, spec: str, allow_other_mouse: bool) -> str:
    """The checkpoint's mouse the session is from; with allow_other_mouse and no such mouse, the one whose
    neuron ids overlap the session's most. A checkpoint of one mouse is that mouse (checked by check_mouse)."""
    mice = list(config["neuron_ids"])
    if session.mouse_id in mice:
        return session.mouse_id
    if len(mice) > 1 and not allow_other_mouse:
        raise MouseMismatch(f"--model {spec} holds mice {mice}, not the session's {session.mouse_id!r}; calibrate a "
                            "model for it (neurocine calibrate), or pass --allow-other-mouse to pick by neuron ids")
    have = set(int(i) for i in session.neuron_ids)
    scores = {m: len(have.intersection(int(i) for i in ids)) for m, ids in config["neuron_ids"].items()}
    mouse = max(sorted(scores), key=lambda m: scores[m])
    check_mouse(mouse, spec, session, allow_other_mouse)
    return mouse


def _load_one(spec: str, session: Session, session_path: str | Path | None, backend: str,
              providers: Sequence[str] | None, threads: int | None, allow_other_mouse: bool = False):  # fmt: skip
    """(backend, neuron ids or None, description, folder to look for the alpha mask in or None, model mouse)."""
    from neurocine.decoder.reconstruct.backends import OrtBackend, TorchBackend

    if spec == "oracle":
        if backend != "torch":
            raise BackendError("--model oracle (the synthetic mouse's own model) runs with --backend torch")
        oracle, note = _oracle_for_session(session, session_path)
        member = TorchBackend.from_oracle(oracle, threads=threads, device=torch_device(providers))
        return member, _oracle_ids(oracle), note, None, None
    p = Path(spec)
    if not p.exists():
        raise BackendError(f"--model {spec}: no such file or folder")
    if (p / "INCOMPLETE").exists() or (p.parent / "INCOMPLETE").exists():
        raise BackendError(f"--model {spec}: a model folder still being written, or left by a calibration that did "
                           "not finish (it holds INCOMPLETE); rerun `neurocine calibrate`")
    graph = p if p.suffix == ".onnx" else p / "gradient.onnx"
    checkpoint = _checkpoint_dir(p) if p.is_dir() else None
    if backend == "onnx":
        if not graph.is_file():
            raise BackendError(f"--model {spec}: no gradient.onnx (export the model, or use --backend torch)")
        member = OrtBackend(graph, providers=providers, threads=threads or 0)
        ids = member.meta.get("neuron_ids")
        return (
            member,
            None if ids is None else np.asarray(ids),
            f"{member.name} on {member.provider}",
            graph.parent,
            member.meta.get("mouse"),
        )
    if checkpoint is not None:
        from neurocine.decoder.encoder.checkpoint import CheckpointError, load_encoder

        try:
            encoder, config = load_encoder(checkpoint)
        except CheckpointError as err:
            raise BackendError(f"--model {spec}: {err}") from err
        mouse = _pick_mouse(config, session, spec, allow_other_mouse)
        member = TorchBackend.from_encoder(encoder, mouse, threads=threads, device=torch_device(providers))
        ids = np.asarray(config["neuron_ids"][mouse])
        return member, ids, f"encoder {config.get('preset')} ({mouse}) from {spec} on {member.provider}", p, mouse
    if graph.is_file():
        raise BackendError(f"--model {spec} is an ONNX graph; use --backend onnx")
    from neurocine.decoder.encoder.oracle import OracleEncoder, find_mouse_folder

    try:
        folder = find_mouse_folder(p)
    except FileNotFoundError as err:
        raise BackendError(
            f"--model {spec}: not an encoder checkpoint, ONNX export or synthetic mouse"
        ) from err
    oracle = OracleEncoder.from_dataset(folder)
    return (
        TorchBackend.from_oracle(oracle, threads=threads, device=torch_device(providers)),
        _oracle_ids(oracle),
        f"oracle from {spec}",
        folder,
        oracle.mouse_id,
    )


def load_models(
    models: Sequence[str] | None,
    session: Session,
    session_path: str | Path | None,
    backend: str = "auto",
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    cache: dict[str, Any] | None = None,
    fuse: bool = True,
    allow_other_mouse: bool = False,
) -> LoadedModels:
    """Backends for `models` (default: the oracle), neurons matched to the session's by id; a session of
    another mouse than a model's raises MouseMismatch unless `allow_other_mouse`.

    `cache` (a dict the caller keeps) holds the session-independent members (ONNX graphs): a new session
    then costs only the id matching, never a reload (see preload_models). `fuse`: merge an ONNX ensemble's
    graphs into one session; only averaging gradients uses it (ensembles of videos or in turn run members
    one by one), so callers that do not average say False and skip building it.
    """
    backend = resolve_backend(models or ["oracle"], backend)
    members, columns, notes, model_ids = [], [], [], []
    mask_from: Path | None = None
    folders: list[Path] = []
    for spec in models or ["oracle"]:
        if cache is not None and backend == "onnx" and spec in cache:
            member, ids, note, mask_dir, mouse = cache[spec]
        else:
            member, ids, note, mask_dir, mouse = _load_one(spec, session, session_path, backend, providers, threads,
                                                           allow_other_mouse)
            if cache is not None and backend == "onnx":
                cache[spec] = (member, ids, note, mask_dir, mouse)
        check_mouse(mouse, spec, session, allow_other_mouse)
        columns.append(match_columns(session.neuron_ids, ids, member.n_neurons, spec))
        members.append(member)
        notes.append(note)
        model_ids.append(ids)
        mask_from = mask_from or mask_dir
        if mask_dir is not None:
            folders.append(mask_dir)
    if any(not np.array_equal(columns[0], c) for c in columns[1:]):
        raise BackendError("ensemble members map the session's neurons differently; use models of one mouse")
    alpha = load_alpha_mask(mask_from) if mask_from is not None else None
    opt, ev = masks_from_alpha(alpha) if alpha is not None else (None, None)
    ensemble = Ensemble(members)
    key = tuple(models or ["oracle"])
    if backend == "onnx" and fuse:
        from neurocine.decoder.reconstruct.ort_fused import fuse_ensemble

        if cache is not None and ("fused", key) in cache:
            ensemble.fused = cache[("fused", key)]  # a new session of the same models builds nothing again
        elif fuse_ensemble(ensemble) and cache is not None:  # one session.run per step for all members
            cache[("fused", key)] = ensemble.fused
        if getattr(ensemble, "fused", None) is not None:
            notes.append(f"{len(members)} members fused into one ONNX Runtime call")
    if cache is not None and ("inverse", key) in cache:
        inverse = cache[("inverse", key)]
    else:
        inverse = load_inverse(folders, model_ids[0], threads)
        if cache is not None:
            cache[("inverse", key)] = inverse
    return LoadedModels(ensemble, columns[0], opt, ev, notes, inverse)


def load_inverse(folders: Sequence[Path], model_ids: np.ndarray | None, threads: int | None) -> InverseDecoder | None:
    """The inverse decoder beside the models (None when there is none); a damaged one is an error naming it."""
    path = find_inverse(folders)
    if path is None:
        return None
    try:
        inverse = InverseDecoder(path, threads=1 if threads is None else max(1, threads))
        inverse.check_neurons(model_ids, "the encoder")
    except InverseError as err:
        raise BackendError(str(err)) from err
    return inverse


def preload_models(models: Sequence[str], backend: str, providers: Sequence[str] | None = None,
                   threads: int | None = None, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load and check the session-independent models now (a service's start-up), so a damaged
    gradient.onnx, graph.json, alpha_mask.npy or inverse.onnx is an error naming the file before any session
    arrives."""
    cache = {} if cache is None else cache
    backend = resolve_backend(models, backend)
    if backend != "onnx":
        for spec in models:
            if spec != "oracle" and not Path(spec).exists():
                raise BackendError(f"--model {spec}: no such file or folder")
        torch_device(providers)  # --provider cuda without CUDA: an error now, not at the first session
        return cache
    empty = Session(np.zeros((0, 0), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                    np.zeros(0, np.int64), 30.0, "none")
    for spec in models:
        cache[spec] = _load_one(spec, empty, None, backend, providers, threads, allow_other_mouse=True)
        mask_dir = cache[spec][3]
        if mask_dir is not None:
            load_alpha_mask(mask_dir)
            load_inverse([mask_dir], cache[spec][1], threads)  # a damaged inverse.onnx: named now
    return cache


def _oracle_ids(oracle: object) -> np.ndarray | None:
    """Neuron ids of an oracle encoder: those of the synthetic mouse it was built from (0..N-1 by block)."""
    n = int(getattr(oracle, "n_neurons", 0))
    return np.arange(n, dtype=np.int64) if n else None


def in_model_order(traces: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Session traces (..., N_session) -> the model's neurons (..., N_model), NaN where the session lacks one
    (`columns`: match_columns' session column per model neuron, -1 for none). The one place this mapping is
    written: offline, streaming, the service and the benches all go through it."""
    traces = np.asarray(traces)
    out = np.full((*traces.shape[:-1], columns.size), np.nan, np.float32)
    ok = columns >= 0
    out[..., ok] = traces[..., columns[ok]]
    return out


def session_arrays(session: Session, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(responses (T, N_model) with NaN for neurons the session lacks, behaviour (T, 4))."""
    return in_model_order(session.traces, columns), session.behaviour
