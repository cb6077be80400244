"""`neurocine calibrate`: a new mouse, from a calibration recording with its stimulus to a ready model folder.

The shared core (trained on several mice, the Sensorium recipe: `decoder/models/core`) stays frozen; what belongs
to the mouse is fitted, in minutes on a CPU (seconds of every stage in the JSON summary):
1. read      the recording(s) (.ncr, .nwb, Sensorium folder; a folder's train tier), cut into segments of at
             most one trial or `SEGMENT` frames; `--minutes` keeps the first minutes; the last `holdout` of the
             segments is kept apart for validation;
2. features  the frozen core's feature map of every frame, computed once;
3. readout   the mouse's point readout (a position, C feature weights and a bias per neuron), started from
             its receptive fields and fitted on the cached maps (readout_fit.py);
4. inverse   the first guess, responses -> frames (reconstruct/inverse_fit.py);
5. export    the ONNX graphs, the checkpoint and graph.json, which names the mouse and its neuron ids, so that
             a session of another mouse is refused (reconstruct/models.py);
6. validate  on the held-out segments: the encoder's response correlation and the streaming decoder's pixel
             correlation with the true stimulus (the defaults `decode` runs with).
The folder is written under a temporary name holding an `INCOMPLETE` marker and renamed when complete: a
crash or Ctrl-C never leaves a folder that loads as a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import get_logger
from neurocine.streams.session import Session, Trial

log = get_logger("calibrate")

#: The shipped shared core: a `tiny` encoder trained on several synthetic mice (its provenance.json says which).
CORE_DIR = Path(__file__).resolve().parents[1] / "models" / "core"
#: Longest segment (frames): long recordings are cut so that the held-out part and the first guess's own
#: held-out choice have several pieces.
SEGMENT = 300
#: Below this much recording (besides the held-out part) nothing sensible can be fitted.
MIN_FIT_MINUTES = 1.0
#: A neuron reported in fewer than this fraction of the fit frames is left out of the model (and named).
MIN_REPORTED = 0.5
#: The marker of a model folder still being written (reconstruct/models.py refuses a folder holding it).
INCOMPLETE = "INCOMPLETE"
#: Frame rate the shipped core's temporal filters were trained at (frames, not seconds, are what they count).
CORE_FRAME_RATE = 30.0


@dataclasses.dataclass(frozen=True)
class ReadoutFitOptions:
    """The readout fit's settings (`neurocine calibrate` reads its defaults here)."""

    steps: int = 300  # Adam steps at most; the best held-out loss decides which parameters are kept
    patience: int = 4  # stop after this many checks without a better held-out loss
    batch_frames: int = 512  # frames per step
    lr: float = 0.01  # features and bias
    position_lr: float = 0.005  # positions (in -1..1 map units)
    weight_decay: float = 1e-3  # on the feature weights (they multiply unnormalised core features)
    check_every: int = 25
    seed: int = 0
    block: int = 64  # neurons per block of the grouped computation (as readouts.FrozenPointReadout)
    init_frames: int = 6000  # frames used for the correlation start (every k-th frame)


class CalibrationError(ValueError):
    """A recording that cannot calibrate a model; the message says what is missing and where."""


@dataclasses.dataclass
class CalibrateOptions:
    recordings: list[str]
    out: str
    core: str = str(CORE_DIR)
    mouse: str | None = None
    minutes: float | None = None
    holdout: float = 0.1
    readout: ReadoutFitOptions = dataclasses.field(default_factory=ReadoutFitOptions)
    validate_frames: int = 600  # held-out frames decoded by the streaming optimiser (at most)
    series: str | None = None  # an NWB recording's trace series
    neurons: int | None = None  # a seeded random subset of this many neurons (how much do more neurons buy?)
    overwrite: bool = False


# ---------------------------------------------------------------------------------------------- 1. read
def read_recordings(paths: Sequence[str], minutes: float | None = None, series: str | None = None) -> Session:
    """The calibration recordings as one session (a Sensorium folder contributes its train tier, read trial by
    trial, only as many as `minutes` needs); they must be of one mouse with the same neurons and carry their
    stimulus. `series`: an NWB file's trace series."""
    from neurocine.streams.formats import open_session

    sessions = []
    for path in paths:
        opened = open_session(path, series=series)
        if any(t.tier == "train" for t in opened.trials):
            opened = open_session(path, tier="train", series=series)
        session = _first_minutes(opened, minutes)
        if session.stimulus is None:
            raise CalibrationError(f"{path}: no stimulus in this recording; calibration fits the mouse's neurons to "
                                   "what it saw (record the rig's stream with its stimulus attached, or give a "
                                   "Sensorium folder with data/videos)")
        if session.stimulus.shape[1:] != (36, 64):
            raise CalibrationError(f"{path}: stimulus frames are {session.stimulus.shape[1:]}, the encoder takes 36x64")
        if abs(session.frame_rate - CORE_FRAME_RATE) > 0.02 * CORE_FRAME_RATE:
            raise CalibrationError(f"{path}: recorded at {session.frame_rate:g} Hz; the core's temporal filters count "
                                   f"frames at {CORE_FRAME_RATE:g} Hz, so resample the recording to "
                                   f"{CORE_FRAME_RATE:g} Hz first")
        if sessions and not np.array_equal(session.neuron_ids, sessions[0].neuron_ids):
            raise CalibrationError(f"{path}: its neuron ids differ from {paths[0]}'s; calibrate one mouse and one set "
                                   "of ROIs at a time")
        if sessions and session.mouse_id != sessions[0].mouse_id:
            raise CalibrationError(f"{path}: mouse {session.mouse_id!r}, but {paths[0]} is mouse "
                                   f"{sessions[0].mouse_id!r}")
        if len(np.unique(session.neuron_ids)) != session.n_neurons:
            raise CalibrationError(f"{path}: neuron ids are not unique")
        sessions.append(session)
    return _concatenate(sessions)


def _first_minutes(opened: Any, minutes: float | None) -> Session:
    """An opened session in memory: a StreamedSession read only until `minutes` are in (whole trials), an
    in-memory one as it is (segments() cuts it)."""
    from neurocine.streams.session import StreamedSession

    if not isinstance(opened, StreamedSession):
        return opened
    if minutes is None:
        return opened.load()
    limit, kept, total = round(minutes * 60 * opened.frame_rate), [], 0
    for part in opened.iter_trials():
        kept.append(part)
        total += part.n_frames
        if total >= limit:
            break
    trials = [p.trial for p in kept]
    return Session(np.concatenate([p.traces for p in kept]), np.concatenate([p.behaviour for p in kept]),
                   np.concatenate([p.timestamps_ns for p in kept]), opened.neuron_ids, opened.frame_rate,
                   opened.mouse_id, np.concatenate([p.stimulus for p in kept]) if opened.stimulus_shape else None,
                   trials, session_id=opened.session_id, source=opened.source, start_time_ns=opened.start_time_ns)


def _concatenate(sessions: list[Session]) -> Session:
    if len(sessions) == 1:
        return sessions[0]
    trials, offset = [], 0
    for k, s in enumerate(sessions):
        trials += [Trial(k * 1_000_000 + t.index, offset + t.start, offset + t.stop, t.tier) for t in s.trials]
        offset += s.n_frames
    first = sessions[0]
    return dataclasses.replace(
        first, traces=np.concatenate([s.traces for s in sessions]),
        behaviour=np.concatenate([s.behaviour for s in sessions]),
        timestamps_ns=np.concatenate([s.timestamps_ns for s in sessions]),
        stimulus=np.concatenate([s.stimulus for s in sessions]), trials=trials)


def segments(session: Session, window: int, minutes: float | None) -> list[tuple[int, int]]:
    """[start, stop) frame ranges: trials cut into pieces of at most SEGMENT frames (shorter than a window:
    dropped), the first `minutes` of them when given."""
    out, budget = [], None if minutes is None else round(minutes * 60 * session.frame_rate)
    for t in session.trials:
        for lo in range(t.start, t.stop, SEGMENT):
            hi = min(lo + SEGMENT, t.stop)
            if budget is not None:
                hi = min(hi, lo + budget)
            if hi - lo >= window:
                out.append((lo, hi))
                if budget is not None:
                    budget -= hi - lo
            if budget is not None and budget < window:
                return out
    return out


def split(parts: list[tuple[int, int]], holdout: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(fit, held-out) segments: the last `holdout` of them (at least one) held out."""
    n_hold = max(1, round(holdout * len(parts)))
    return parts[:-n_hold], parts[-n_hold:]


# ---------------------------------------------------------------------------------------------- 2. features
def load_core(core: str | Path, mouse: str, n_neurons: int):  # -> Encoder
    """A fresh encoder for `mouse` on the frozen core of `core` (a model folder with a checkpoint), its readout
    a point readout."""
    from neurocine.decoder.encoder.checkpoint import CheckpointError, load_encoder
    from neurocine.decoder.encoder.model import Encoder
    from neurocine.decoder.encoder.presets import MAP_READOUTS

    folder = Path(core)
    ckpt = folder / "checkpoint" if (folder / "checkpoint" / "config.json").is_file() else folder
    try:
        trained, config = load_encoder(ckpt)
    except CheckpointError as err:
        raise CalibrationError(f"--core {core}: {err}") from err
    if trained.config.readout not in MAP_READOUTS:
        raise CalibrationError(f"--core {core}: its readout is {trained.config.readout!r}; calibration needs a core "
                               f"trained with a map readout ({', '.join(MAP_READOUTS)}: the tiny and small presets)")
    encoder = Encoder(trained.config.replace(readout="point"), {mouse: n_neurons})
    shared = {k: v for k, v in trained.state_dict().items() if k.startswith(("core.", "cortex.", "video_"))}
    missing = [k for k in shared if k not in encoder.state_dict()]
    if missing:
        raise CalibrationError(f"--core {core}: weights {missing[:3]} do not fit the architecture")
    encoder.load_state_dict(shared, strict=False)
    encoder.requires_grad_(False)
    encoder.readouts[mouse].requires_grad_(True)
    return encoder.eval(), config


def core_features(encoder: Any, mouse: str, session: Session, parts: list[tuple[int, int]],
                  progress: Callable[[int], None] | None = None, batch: int = 16) -> np.ndarray:
    """(sum of the parts' frames, C, H, W): the frozen core's map of every frame of `parts`, in their order.
    Each window of 2T frames gives its even and its odd frames one map each (Encoder.features)."""
    import torch

    from neurocine.decoder.encoder.data import trial_windows

    window = encoder.config.window
    beh_mean = encoder.stats[mouse].behaviour_mean.numpy()
    maps: np.ndarray | None = None
    row = 0
    jobs = []  # (first frame, row of that frame in the output)
    for lo, hi in parts:
        jobs += [(lo + s, row + s) for s in trial_windows(hi - lo, window)]
        row += hi - lo
    with torch.no_grad():
        for k in range(0, len(jobs), batch):
            chunk = jobs[k : k + batch]
            frames = np.stack([np.arange(f, f + window) for f, _ in chunk])
            video = torch.from_numpy(session.stimulus[frames].astype(np.float32))
            beh = session.behaviour[frames]
            beh = torch.from_numpy(np.where(np.isnan(beh), beh_mean, beh).astype(np.float32))
            out = encoder.features(video, beh, mouse).numpy()  # (2B, C, T/2, H, W): window b's even, odd
            if maps is None:
                maps = np.zeros((row, *out.shape[1:2], *out.shape[3:]), np.float32)
            out = out.reshape(len(chunk), 2, *out.shape[1:])
            for j, (_, first_row) in enumerate(chunk):
                maps[first_row : first_row + window : 2] = out[j, 0].transpose(1, 0, 2, 3)
                maps[first_row + 1 : first_row + window : 2] = out[j, 1].transpose(1, 0, 2, 3)
            if progress:
                progress(min(k + batch, len(jobs)))
    assert maps is not None
    return maps


# ---------------------------------------------------------------------------------------------- the whole
def calibrate(opts: CalibrateOptions) -> dict[str, Any]:
    """Run every stage into a temporary folder and rename it to opts.out when complete; returns the summary."""
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise CalibrationError(f"--out {out} exists; pass --overwrite to replace it, or choose another folder")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / INCOMPLETE).write_text("calibration in progress or interrupted; not a usable model\n")
    try:
        summary = _calibrate_into(tmp, opts)
        summary["model"] = str(out)
        (tmp / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / INCOMPLETE).unlink()
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _calibrate_into(folder: Path, opts: CalibrateOptions) -> dict[str, Any]:
    import torch

    from neurocine.decoder.encoder.readout_fit import fit_readout, initial_readout
    from neurocine.streams.commandline import Progress

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    session = read_recordings(opts.recordings, opts.minutes, opts.series)
    mouse = opts.mouse or session.mouse_id
    if not mouse or mouse in ("unknown", "none"):
        raise CalibrationError("the recording does not say which mouse it is; pass --mouse ID (the name the rig "
                               "will send in its session header)")
    from neurocine.decoder.encoder.presets import EncoderConfig

    window = EncoderConfig.from_dict(_core_config(opts.core)["architecture"]).window
    parts = segments(session, window, opts.minutes)
    fit_parts, held_parts = split(parts, opts.holdout) if len(parts) > 1 else (parts, [])
    fit_frames = sum(hi - lo for lo, hi in fit_parts)
    if fit_frames < MIN_FIT_MINUTES * 60 * session.frame_rate or len(fit_parts) < 3 or not held_parts:
        have = sum(hi - lo for lo, hi in parts) / 60 / session.frame_rate
        raise CalibrationError(
            f"{have:.1f} minutes of usable recording ({len(parts)} pieces of >= {window} frames; a recording with "
            f"tiers gives its train tier only); calibration needs at "
            f"least {MIN_FIT_MINUTES:g} minute(s) to fit besides a held-out tenth, and fits better with more (10 "
            "minutes is the working point; `neurocine bench calibrate` measures quality against minutes)")
    rows_fit = np.concatenate([np.arange(lo, hi) for lo, hi in fit_parts])
    reported = np.isfinite(session.traces[rows_fit]).mean(axis=0)
    keep = reported >= MIN_REPORTED
    dropped = session.neuron_ids[~keep]
    if opts.neurons is not None and opts.neurons < session.n_neurons:
        chosen = np.zeros(session.n_neurons, bool)
        chosen[np.random.default_rng(opts.readout.seed).choice(session.n_neurons, opts.neurons, replace=False)] = True
        keep &= chosen
    if dropped.size:
        log.warning(f"{dropped.size} neuron(s) reported in under {MIN_REPORTED:.0%} of the fit frames are left out "
                    f"of the model: ids {dropped[:10].tolist()}{' ...' if dropped.size > 10 else ''}")
    if keep.sum() == 0:
        raise CalibrationError("no neuron is reported in enough frames (all NaN?)")
    ids = session.neuron_ids[keep]
    traces = session.traces[:, keep]
    seconds["read"] = time.perf_counter() - t0
    log.info(f"mouse {mouse}: {keep.sum()} neurons, {fit_frames / 60 / session.frame_rate:.1f} min to fit in "
             f"{len(fit_parts)} pieces, {len(held_parts)} held out")

    t = time.perf_counter()
    encoder, core_config = load_core(opts.core, mouse, int(keep.sum()))
    stats = encoder.stats[mouse]
    beh = session.behaviour[rows_fit]
    stats.behaviour_mean.copy_(torch.from_numpy(np.nan_to_num(np.nanmean(beh, axis=0)).astype(np.float32)))
    stats.behaviour_std.copy_(torch.from_numpy(np.maximum(np.nan_to_num(np.nanstd(beh, axis=0), nan=1.0),
                                                          1e-3).astype(np.float32)))
    response_std = np.maximum(np.nan_to_num(np.nanstd(traces[rows_fit], axis=0), nan=1.0), 1e-3).astype(np.float32)
    stats.response_std.copy_(torch.from_numpy(response_std))
    all_parts = fit_parts + held_parts
    n_windows = sum(len(range(0, hi - lo, window)) for lo, hi in all_parts)
    bar = Progress("calibrate: core features", n_windows, unit="window")
    maps = core_features(encoder, mouse, session, all_parts, progress=bar)
    bar.close()
    rows_all = np.concatenate([np.arange(lo, hi) for lo, hi in all_parts])
    responses = traces[rows_all] / response_std
    n_fit = fit_frames
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    readout = encoder.readouts[mouse]
    position, weights, bias = initial_readout(maps[:n_fit], responses[:n_fit], readout.size,
                                              opts.readout.init_frames)
    with torch.no_grad():
        readout.position.copy_(torch.from_numpy(position))
        readout.features.copy_(torch.from_numpy(weights))
        readout.bias.copy_(torch.from_numpy(bias))
    check_from = sum(hi - lo for lo, hi in fit_parts[: max(1, len(fit_parts) - max(1, len(fit_parts) // 10))])
    bar = Progress("calibrate: readout", opts.readout.steps, unit="step")
    fit_report = fit_readout(readout, maps[:n_fit], responses[:n_fit], np.arange(check_from),
                             np.arange(check_from, n_fit), opts.readout, progress=lambda i, n, loss: bar(i, loss=loss))
    bar.close()
    with torch.no_grad():
        held_pred = readout(torch.from_numpy(maps[n_fit:]).unsqueeze(0).permute(0, 2, 1, 3, 4))[0].T.numpy()
    response_corr = _response_correlation(held_pred, responses[n_fit:])
    seconds["readout"] = time.perf_counter() - t
    log.info(f"readout: held-out response correlation {response_corr:.3f} (best step {fit_report['best_step']})")

    t = time.perf_counter()
    from neurocine.decoder.reconstruct.inverse import export_inverse
    from neurocine.decoder.reconstruct.inverse_fit import fit_inverse

    fit_session = _part_session(session, fit_parts, keep, ids, mouse)
    inverse = fit_inverse(fit_session, log=log.debug)
    seconds["inverse"] = time.perf_counter() - t

    t = time.perf_counter()
    from neurocine.decoder.encoder.checkpoint import save_checkpoint
    from neurocine.decoder.encoder.export import export_mouse

    record = {"mouse": mouse, "recordings": [str(Path(p).resolve()) for p in opts.recordings],
              "session_ids": sorted({session.session_id}), "neurons": int(keep.sum()),
              "neurons_left_out": dropped.tolist(), "fit_minutes": round(fit_frames / 60 / session.frame_rate, 2),
              "heldout_minutes": round(sum(hi - lo for lo, hi in held_parts) / 60 / session.frame_rate, 2),
              "core": str(Path(opts.core).resolve()), "core_mice": core_config.get("mice")}
    save_checkpoint(folder / "checkpoint", encoder, {mouse: ids}, {"calibration": record})
    export_mouse(encoder, mouse, folder, metadata={
        "neuron_ids": [int(i) for i in ids], "statistics": json.loads(json.dumps(_stats(encoder, mouse))),
        "calibration": record})
    export_inverse(inverse, folder)
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    pixel = _validate_decode(folder, session, held_parts, keep, opts.validate_frames)
    seconds["validate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return {
        "mouse": mouse, "neurons": int(keep.sum()), "neurons_left_out": int(dropped.size),
        "fit_minutes": record["fit_minutes"], "heldout_minutes": record["heldout_minutes"],
        "heldout_response_correlation": round(response_corr, 4),
        "heldout_pixel_correlation": None if pixel is None else round(pixel, 4),
        "inverse_heldout_r": inverse.report["frame"]["heldout_r_by_rank"][str(inverse.report["frame"]["rank"])],
        "readout_fit": fit_report, "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def _core_config(core: str) -> dict[str, Any]:
    from neurocine.decoder.encoder.checkpoint import CheckpointError, read_config

    folder = Path(core)
    try:
        return read_config(folder / "checkpoint" if (folder / "checkpoint" / "config.json").is_file() else folder)
    except CheckpointError as err:
        raise CalibrationError(f"--core {core}: {err}") from err


def _stats(encoder: Any, mouse: str) -> dict[str, list[float]]:
    s = encoder.stats[mouse]
    return {"behaviour_mean": s.behaviour_mean.tolist(), "behaviour_std": s.behaviour_std.tolist(),
            "response_std": s.response_std.tolist()}


def _response_correlation(pred: np.ndarray, obs: np.ndarray) -> float:
    """Mean over neurons of the Pearson r over the held-out frames (analysis.metrics.corr's rules)."""
    from neurocine.decoder.analysis.metrics import corr

    return float(np.nanmean(corr(pred.astype(np.float64), obs.astype(np.float64), axis=0)))


def _part_session(session: Session, parts: list[tuple[int, int]], keep: np.ndarray, ids: np.ndarray,
                  mouse: str) -> Session:
    """The parts as a session of their own (one trial each), only the kept neurons."""
    rows = np.concatenate([np.arange(lo, hi) for lo, hi in parts])
    trials, pos = [], 0
    for k, (lo, hi) in enumerate(parts):
        trials.append(Trial(k, pos, pos + hi - lo, "train"))
        pos += hi - lo
    assert session.stimulus is not None
    return dataclasses.replace(session, traces=session.traces[rows][:, keep], behaviour=session.behaviour[rows],
                               timestamps_ns=session.timestamps_ns[rows], neuron_ids=ids, mouse_id=mouse,
                               stimulus=session.stimulus[rows], trials=trials)


def _validate_decode(folder: Path, session: Session, parts: list[tuple[int, int]], keep: np.ndarray,
                     max_frames: int) -> float | None:
    """Pixel correlation (the paper's score, all pixels) of the streaming decoder at its defaults on the held-out
    parts, from the exported graphs, as `decode` would run them."""
    from neurocine.decoder.analysis.metrics import movie_metrics
    from neurocine.decoder.reconstruct.backends import Ensemble, OrtBackend
    from neurocine.decoder.reconstruct.inverse import InverseDecoder
    from neurocine.decoder.reconstruct.streaming import StreamingConfig, reconstruct_streaming

    ensemble = Ensemble([OrtBackend(folder / "gradient.onnx", providers=["CPUExecutionProvider"], threads=1)])
    inverse = InverseDecoder(folder / "inverse.onnx")
    scores, used = [], 0
    assert session.stimulus is not None
    for lo, hi in parts:
        if used >= max_frames:
            break
        movie, _ = reconstruct_streaming(ensemble, session.traces[lo:hi][:, keep], session.behaviour[lo:hi],
                                         StreamingConfig(), inverse=inverse)
        scores.append(movie_metrics(session.stimulus[lo:hi], movie, skip=min(30, (hi - lo) // 4))["pixel_correlation"])
        used += hi - lo
    return float(np.mean(scores)) if scores else None
