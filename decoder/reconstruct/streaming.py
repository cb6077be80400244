"""Streaming reconstruction: a sliding-window optimiser that decodes frames as their responses arrive.

State: a buffer of the most recent `lag + window` frames of the movie estimate, their responses and
behaviour, and the optimiser state of each frame (first moment m, and its own step count for Adam's bias
correction and the lr warm-up). The newest `lag + 1` frames are *active* (still optimised); older ones are
*final* and only serve as the encoder's context. Before the session's first frame the buffer holds grey
frames with no responses, as the encoder expects at a movie start.

On each arriving frame t (responses (N,), behaviour (4,)):
1. append a warm-started estimate of frame t: grey + 0.9 x (frame t-1's estimate - grey), or grey; with an
   inverse decoder (`warm_start="inverse"`, decoder/reconstruct/inverse.py) its causal estimate of frame t
   instead, and frame t-10, whose responses are now all in, moves toward the decoder's full estimate;
2. run `steps` optimiser steps on the windows whose responses constrain active frames: windows of 32
   frames ending at t, t-stride, ... down to t-lag (stride 32 by default, see StreamingConfig.stride;
   one batched backend call per encoder per step);
   each step is the published update (per-window gradient / L2 norm, mean over covering windows, mask,
   clip +-1, first-moment Adam with warm-up, pixel clip) restricted to the active frames;
3. emit frame t - lag, which leaves the active region now (final), and optionally the active frames as
   provisional estimates.
Anchoring the windows at the newest frame means their alignment shifts by one frame per arrival, so every
frame is seen at every window position while it is active.

Gaps (missing sequence numbers) insert frames with no responses (NaN: they drop out of the loss) and
still emit, so the output stays aligned with the source frames; NaN neurons are masked per frame; NaN
behaviour holds the last measured value. `reset()` (or a new session id in `push`) starts over.

Cuts (`push(..., cut=True)`: this frame was not recorded right after the previous one, e.g. the next trial of a
replayed Sensorium mouse): no window may span one, since the responses on its far side belong to another movie.
The buffer starts over: the new trial's first frame starts from the first guess, with grey padding before it, as
at a session start. The movie before the cut is closed the way a session's end is drained (reconstruct_streaming's
`drain`): a copy of its buffer goes on beside the new one, taking each arrival's steps with no responses after the
cut, and emits its frames at their usual lag. So frames before a cut lose no steps and no window mixes the two
movies; a cut costs up to twice the steps for `lag` frames (a second cut meanwhile finishes the older movie at once,
so never more). `neurocine bench quality` ("cuts") measures both sides of a cut with and without the rule.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from neurocine.decoder.reconstruct.backends import Ensemble, GradientBackend, as_ensemble, normalised_window_grad
from neurocine.decoder.reconstruct.inverse import FULL_AGE, INVERSE_MIX, SPAN, InverseDecoder
from neurocine.decoder.reconstruct.offline import DEFAULT_GRAD_BLUR, GREY, ReconstructionError
from neurocine.decoder.reconstruct.optimiser import UpdateSettings, momentum_update, prepare_gradient
from neurocine.decoder.reconstruct.windows import WINDOW
from neurocine.streams.summary import percentiles

#: Why 32 frames and 2 steps: a frame's responses are spread over the next ~30 frames (temporal filter and
#: indicator), so a shorter lag finalises frames before their evidence has arrived; `neurocine bench quality`
#: measures the curve over lags and steps (README, "Reconstruction quality").
DEFAULT_LAG = 32
DEFAULT_STEPS = 2


WARM_DECAY = 0.9


#: how several encoders share one streaming optimiser (StreamingConfig.ensemble)
ENSEMBLE_MODES = ("gradients", "videos", "cycle")


@dataclasses.dataclass(frozen=True)
class StreamingConfig(UpdateSettings):
    """The streaming optimiser's settings (the update's, lr to norm_eps, are UpdateSettings' defaults)."""

    lag: int = DEFAULT_LAG
    steps: int = DEFAULT_STEPS
    window: int = WINDOW
    #: Windows end at the newest frame and every `stride` frames back to the lag. Anchored at the newest
    #: frame, they shift by one frame per arrival, so each active frame meets every window position anyway:
    #: overlapping windows (the offline stride 8) buy nothing here and cost 2.5x the compute
    #: (`neurocine bench quality` compares the strides).
    stride: int = WINDOW
    #: "inverse" (the inverse decoder's estimate; without one, as "previous"), "previous" or "grey"
    warm_start: str = "inverse"
    #: A new frame starts at grey + warm_decay * (previous estimate - grey). Why below 1: with a plain copy
    #: every frame inherits all earlier frames' updates, so over minutes the contrast random-walks to
    #: saturation over minutes (seen live in `neurocine bench latency --frames 18000`: the image's contrast
    #: grew until the correlation fell to 0).
    warm_decay: float = WARM_DECAY
    #: With warm_start="inverse": a new frame starts at inverse_weight x the causal estimate + the rest x the
    #: decayed previous estimate; when a frame is FULL_AGE frames old it moves inverse_refresh of the way to
    #: the full estimate (its responses are all in by then). Chosen by `neurocine bench quality`.
    inverse_weight: float = 1.0
    inverse_refresh: float = 1.0
    #: ... and every emitted frame is inverse_mix x the decoder's own estimate + the rest x the optimised one:
    #: on the built-in model the inverse decoder alone beats the gradient inversion, and unmixed gradient
    #: steps pull a frame away from it; the mix is chosen by `neurocine bench quality` (README, "The first guess").
    inverse_mix: float = INVERSE_MIX
    provisional: bool = False
    #: several encoders: "gradients" averages their normalised gradients in every step (K gradient windows per
    #: step); "videos" runs one optimiser per encoder and averages the emitted frames (the paper's, K times the
    #: compute); "cycle" takes one encoder per step in turn, so a step costs one encoder's window and each frame,
    #: active for lag + 1 arrivals, still gets every encoder's gradient many times (live, where the K-fold cost
    #: sheds steps: `neurocine bench latency` with three --model)
    ensemble: str = "gradients"
    #: spatial Gaussian sigma (px) on each step's gradient (optimiser.blur_gradient); the command line's value,
    #: since the CPU-sized encoders need it (`neurocine bench quality` measures both); 0 is the paper's
    grad_blur: float = DEFAULT_GRAD_BLUR

    def warm_start_with(self, inverse: object | None) -> str:
        """The warm start that runs: "inverse" needs an inverse decoder and is "previous" without one."""
        return "previous" if self.warm_start == "inverse" and inverse is None else self.warm_start

    def __post_init__(self) -> None:
        if (error := self.update_error()) is not None:
            raise ReconstructionError(error)
        if self.lag < 0 or self.steps < 0 or self.window < 1 or self.stride < 1:
            raise ReconstructionError(
                f"bad streaming settings: lag={self.lag} steps={self.steps} "
                f"window={self.window} stride={self.stride}"
            )
        if not 0.0 <= self.warm_decay <= 1.0:
            raise ReconstructionError(f"warm_decay must be in [0, 1], got {self.warm_decay}")
        if self.warm_start not in ("previous", "grey", "inverse"):
            raise ReconstructionError(f"warm_start must be 'previous', 'grey' or 'inverse', got {self.warm_start!r}")
        if not all(0.0 <= v <= 1.0 for v in (self.inverse_weight, self.inverse_refresh, self.inverse_mix)):
            raise ReconstructionError("inverse_weight, inverse_refresh and inverse_mix must be in [0, 1]")
        if self.ensemble not in ENSEMBLE_MODES:
            raise ReconstructionError(f"ensemble must be one of {ENSEMBLE_MODES}, got {self.ensemble!r}")


def add_streaming_args(p: argparse.ArgumentParser) -> None:
    """The streaming optimiser's options, the same for every verb that decodes a stream (defaults from
    StreamingConfig, the one place they live)."""
    d = StreamingConfig()
    p.add_argument("--lag", type=int, default=d.lag, help=f"frames between a frame's arrival and its final decode "
                   f"(default {d.lag})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps per arriving frame (default "
                   f"{d.steps}; a live service sheds them when behind)")
    p.add_argument("--grad-blur", type=float, default=d.grad_blur, metavar="SIGMA",
                   help=f"spatial Gaussian blur (px) of each step's gradient (default {d.grad_blur:g}; 0 = the paper)")
    p.add_argument("--warm-start", choices=("inverse", "previous", "grey"), default=d.warm_start,
                   help=f"how a new frame starts (default {d.warm_start}; 'inverse' needs inverse.onnx beside the "
                   "model and falls back to 'previous' without one)")
    p.add_argument("--ensemble", choices=ENSEMBLE_MODES, default=None,
                   help="several --model: average their gradients in one optimiser, run one optimiser each and "
                   "average the videos (the paper's better way, K times the compute), or (streaming only) cycle: "
                   f"one encoder's gradient per step, in turn (default: streaming {d.ensemble}, offline videos)")


def streaming_config_from(args: argparse.Namespace, **overrides: object) -> StreamingConfig:
    """A StreamingConfig from add_streaming_args' options."""
    kw = {k: getattr(args, k) for k in ("lag", "steps", "grad_blur", "warm_start", "ensemble")
          if getattr(args, k, None) is not None}
    return StreamingConfig(**{**kw, **overrides})  # type: ignore[arg-type]


def streaming_argv(args: argparse.Namespace) -> list[str]:
    """add_streaming_args' options as command-line words (for a verb that starts `neurocine decode`)."""
    out: list[str] = []
    for name in ("lag", "steps", "grad_blur", "warm_start", "ensemble"):
        if getattr(args, name, None) is not None:
            out += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return out


@dataclasses.dataclass
class EstimatedFrame:
    """The optimiser's estimate of one frame: source sequence number, the frame (36, 64) float32 0..255, final
    or provisional (the service wraps it into the wire message, neurocine.decoder.live.decoded.DecodedFrame)."""

    seq: int
    frame: np.ndarray
    final: bool

    def as_uint8(self) -> np.ndarray:
        return np.clip(np.rint(self.frame), 0, 255).astype(np.uint8)


class PushTimes:
    """Compute seconds of the latest pushes, in a fixed ring (the count covers every push).

    Why a ring: a live decoder pushes 30 frames a second for as long as an experiment runs; a list of every
    push's time grew by ~4 MB an hour (`neurocine bench soak --minutes 60`: RSS +4.0 MB, linear)."""

    #: pushes whose times are kept (36 minutes at 30 Hz)
    KEPT = 1 << 16

    def __init__(self) -> None:
        self.seconds = np.zeros(self.KEPT, np.float64)
        self.count = 0

    def append(self, seconds: float) -> None:
        self.seconds[self.count % self.KEPT] = seconds
        self.count += 1

    def add_to_last(self, seconds: float) -> None:
        """More compute for the latest push (a movie closing beside it after a cut)."""
        if self.count:
            self.seconds[(self.count - 1) % self.KEPT] += seconds

    def __len__(self) -> int:
        return self.count

    def summary(self) -> dict[str, float]:
        """frames: every push so far; the statistics: over the latest KEPT of them."""
        if self.count == 0:
            return {"frames": 0}
        s = self.seconds[: min(self.count, self.KEPT)]
        return {"frames": self.count, "mean_s": float(s.mean()), "seconds": percentiles(s, ndigits=None)}


class StreamingReconstructor:
    """Feed frames with `push`; collect final frames (one per source frame, `lag` frames later)."""

    def __init__(
        self,
        backends: GradientBackend | Ensemble | Sequence[GradientBackend],
        config: StreamingConfig | None = None,
        mask: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        inverse: InverseDecoder | None = None,
    ) -> None:
        self.ens = as_ensemble(backends)
        self.cfg = config or StreamingConfig()
        #: ensemble "cycle": one single-encoder ensemble per member, taken in turn by the steps
        self._cycle = [as_ensemble([m]) for m in self.ens.members] if self.cfg.ensemble == "cycle" else []
        #: the first guess; only used with warm_start="inverse" (without one that mode warm-starts as "previous")
        self.inverse = inverse if self.cfg.warm_start == "inverse" else None
        if self.inverse is not None and self.inverse.n_neurons != self.ens.n_neurons:
            raise ReconstructionError(f"inverse decoder reads {self.inverse.n_neurons} neurons, the encoders "
                                      f"{self.ens.n_neurons}")
        self.window = self.ens.window or self.cfg.window
        n = self.ens.n_neurons
        self.mask = np.ones((36, 64), np.float32) if mask is None else np.asarray(mask).astype(np.float32)
        if self.mask.shape != (36, 64):
            raise ReconstructionError(f"mask must be (36, 64), got shape {self.mask.shape}")
        self.weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
        if self.weights.shape != (n,):
            raise ReconstructionError(f"neuron weights must be (N={n},), got shape {self.weights.shape}")
        self.capacity = self.cfg.lag + self.window
        self.step_seconds = PushTimes()  # compute time of each push (all its optimiser steps)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self, session_id: str | None = None) -> None:
        """Forget everything: the next pushed frame is frame 0 of a new movie."""
        c, n = self.capacity, self.ens.n_neurons
        self.session_id = session_id
        self.steps_taken = 0
        self.video = np.full((c, 36, 64), GREY, np.float32)
        self.prior = np.full((c, 36, 64), GREY, np.float32)  # the inverse decoder's latest estimate per frame
        self.m = np.zeros((c, 36, 64), np.float32)
        self.age = np.zeros(c, np.int64)  # optimiser steps each slot has taken
        self.responses = np.full((c, n), np.nan, np.float32)
        self.behaviour = np.zeros((c, 4), np.float32)
        self.seqs = np.full(c, -1, np.int64)  # source seq of each slot; -1 = padding before the session
        self.last_seq = -1
        self.last_behaviour: np.ndarray | None = None
        self.pending = 0  # frames pushed but not yet emitted final
        #: the movie before a cut, draining beside this one, and its last real seq (later slots are padding)
        self._closing: tuple[StreamingReconstructor, int] | None = None

    @property
    def n_active(self) -> int:
        return min(self.cfg.lag + 1, self.pending)

    # ------------------------------------------------------------------ input
    def push(
        self,
        responses: np.ndarray,
        behaviour: np.ndarray,
        seq: int | None = None,
        session_id: str | None = None,
        steps: int | None = None,
        cut: bool = False,
    ) -> list[EstimatedFrame]:
        """Add source frame `seq` (default: the next one); returns the frames emitted (final first).

        `steps` overrides the configured steps for this frame (a service that falls behind sheds steps).
        Frames lost in a gap get the same steps when the gap is at most `lag` long, none otherwise (a long
        gap is emitted as its warm start without spending time on frames nothing constrains).
        `cut`: frame `seq` does not follow the previous one in time; the movie starts afresh at `seq` while the
        one before the cut drains beside it (frames lost just before the cut join that one, without steps).
        """
        if session_id is not None and session_id != self.session_id:
            self.reset(session_id)
        n = self.ens.n_neurons
        resp = np.asarray(responses, np.float32)
        if resp.shape != (n,):
            raise ReconstructionError(f"responses must be (N={n},), got shape {resp.shape}")
        beh = np.asarray(behaviour, np.float32)
        if beh.shape != (4,):
            raise ReconstructionError(f"behaviour must be (4,), got shape {beh.shape}")
        seq = self.last_seq + 1 if seq is None else int(seq)
        if seq <= self.last_seq:
            raise ReconstructionError(
                f"frame seq {seq} is not after the last one ({self.last_seq}); reset() for a new session"
            )
        steps = self.cfg.steps if steps is None else max(0, int(steps))
        gap_steps = steps if seq - self.last_seq - 1 <= self.cfg.lag else 0
        out: list[EstimatedFrame] = []
        if cut and self.last_seq >= 0:
            out += self._close_movie(seq)
        # A first frame starts the movie where it is (a late joiner inserts nothing); a longer gap than the
        # buffer inserts only the last `capacity` missing frames: the earlier ones would leave it unseen.
        # So a jump costs O(lag + window), never O(jump).
        first_missing = seq if self.last_seq < 0 else max(self.last_seq + 1, seq - self.capacity)
        for missing in range(first_missing, seq):  # a gap: frames without responses
            out += self._advance(
                missing, np.full(n, np.nan, np.float32), self._held_behaviour(None), gap_steps
            )
        new = self._advance(seq, resp, self._held_behaviour(beh), steps)
        return out + self._drain(steps) + new

    def _close_movie(self, seq: int) -> list[EstimatedFrame]:
        """At a cut before `seq`: frames lost before it (at most a buffer's worth) join the old movie without
        steps, the old movie becomes the closing one (an older closing one is finished at once), and the buffer
        starts over (the session and the timing stay)."""
        out = self._finish_closing()
        n = self.ens.n_neurons
        for missing in range(max(self.last_seq + 1, seq - self.capacity), seq):
            out += self._advance(missing, np.full(n, np.nan, np.float32), self._held_behaviour(None), 0)
        closing = copy.copy(self)
        for name in ("video", "prior", "m", "age", "responses", "behaviour", "seqs"):
            setattr(closing, name, getattr(self, name).copy())
        closing.cfg = dataclasses.replace(self.cfg, provisional=False)  # provisional frames: the live movie's only
        closing.step_seconds = PushTimes()
        last_real = self.last_seq
        self.reset(self.session_id)
        self._closing = (closing, last_real)
        return out

    def _drain(self, steps: int) -> list[EstimatedFrame]:
        """One arrival's worth for the closing movie: a frame with no responses, `steps` steps, and its frames
        that reach the lag emitted (never the padding frames it was given)."""
        if self._closing is None:
            return []
        closing, last_real = self._closing
        start = time.perf_counter()
        nothing = np.full(self.ens.n_neurons, np.nan, np.float32)
        out = closing._advance(closing.last_seq + 1, nothing, closing._held_behaviour(None), steps)
        self.step_seconds.add_to_last(time.perf_counter() - start)
        c = closing.capacity
        if not (closing.seqs[c - closing.pending :] <= last_real).any():
            self._closing = None
        return [f for f in out if f.final and f.seq <= last_real]

    def _finish_closing(self) -> list[EstimatedFrame]:
        """The closing movie's remaining frames, final now (a session's end, or another cut)."""
        if self._closing is None:
            return []
        closing, last_real = self._closing
        self._closing = None
        return [f for f in closing.flush() if f.seq <= last_real]

    def _held_behaviour(self, beh: np.ndarray | None) -> np.ndarray:
        last = np.zeros(4, np.float32) if self.last_behaviour is None else self.last_behaviour
        if beh is None:
            return last.copy()
        beh = beh.copy()
        bad = ~np.isfinite(beh)
        beh[bad] = last[bad]
        return beh

    def _shift_in(self, seq: int, resp: np.ndarray, beh: np.ndarray) -> None:
        for arr in (self.video, self.prior, self.m, self.age, self.responses, self.behaviour, self.seqs):
            arr[:-1] = arr[1:]
        first = self.pending == 0
        if self.cfg.warm_start in ("previous", "inverse") and not first:
            d = np.float32(self.cfg.warm_decay)
            self.video[-1] = GREY + d * (self.video[-2] - np.float32(GREY)) if d != 1 else self.video[-2]
        else:
            self.video[-1] = GREY
        self.m[-1] = 0.0
        self.age[-1] = 0
        self.responses[-1] = np.where(np.isfinite(resp), resp, np.nan)
        self.behaviour[-1] = beh
        if first:  # padding before the movie sees the first frame's behaviour
            self.behaviour[:-1] = beh
        self.seqs[-1] = seq
        self.last_seq = seq
        self.last_behaviour = beh
        self.pending += 1
        if self.inverse is not None:
            self._first_guess()

    def _first_guess(self) -> None:
        """The inverse decoder's estimates: causal for the newest frame, full for the one FULL_AGE old."""
        c, cfg = self.capacity, self.cfg
        rows = [c - 1]
        if self.pending > FULL_AGE and cfg.lag >= FULL_AGE:
            rows.append(c - 1 - FULL_AGE)
        idx = np.asarray(rows)[:, None] + np.asarray(SPAN)[None, :]
        ok = (idx >= 0) & (idx < c)
        ok[ok] &= self.seqs[idx[ok]] >= 0  # padding before the session holds no evidence
        safe = np.clip(idx, 0, c - 1)
        resp = np.where(ok[..., None], self.responses[safe], np.nan).astype(np.float32)
        beh = np.where(ok[..., None], self.behaviour[safe], np.nan).astype(np.float32)
        full, causal = self.inverse.run(resp, beh)  # type: ignore[union-attr]
        w = np.float32(cfg.inverse_weight)
        self.video[-1] = w * causal[0] + (1 - w) * self.video[-1]
        self.prior[-1] = causal[0]
        if len(rows) > 1:
            r = np.float32(cfg.inverse_refresh)
            self.video[rows[1]] = (1 - r) * self.video[rows[1]] + r * full[1]
            self.prior[rows[1]] = full[1]

    def _out(self, i: int) -> np.ndarray:
        """What is emitted for buffer slot i: the optimised frame, mixed with the inverse decoder's estimate."""
        if self.inverse is None or self.cfg.inverse_mix == 0:
            return self.video[i].copy()
        g = np.float32(self.cfg.inverse_mix)
        return g * self.prior[i] + (1 - g) * self.video[i]

    def _advance(self, seq: int, resp: np.ndarray, beh: np.ndarray, steps: int) -> list[EstimatedFrame]:
        self._shift_in(seq, resp, beh)
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        self.step_seconds.append(time.perf_counter() - start)
        out = []
        if self.pending > self.cfg.lag:
            idx = self.capacity - 1 - self.cfg.lag
            out.append(EstimatedFrame(int(self.seqs[idx]), self._out(idx), True))
            self.pending -= 1
        if self.cfg.provisional:
            out += self._provisional()
        return out

    def estimate_at_age(self, age: int) -> np.ndarray | None:
        """The current estimate of the frame that arrived `age` frames ago (None if not held any more)."""
        if not 0 <= age <= self.cfg.lag:
            return None  # age == lag: the frame just emitted final (its slot leaves at the next arrival)
        slot = self.capacity - 1 - age
        if self.seqs[slot] >= 0:
            return self._out(slot)
        if self._closing is not None:  # a frame from before a cut: the closing movie drains in step with arrivals
            closing, last_real = self._closing
            if 0 <= closing.seqs[slot] <= last_real:
                return closing._out(slot)
        return None

    def _provisional(self) -> list[EstimatedFrame]:
        c = self.capacity
        return [
            EstimatedFrame(int(self.seqs[i]), self._out(i), False)
            for i in range(c - min(self.pending, self.cfg.lag), c)
        ]

    # ------------------------------------------------------------------ optimiser
    def _window_starts(self) -> np.ndarray:
        """Buffer indices of the windows' first slots: ends at the newest frame, then every stride back
        while the window still ends on an active frame and holds at least a quarter of a window of active
        frames. Why the quarter: at the defaults (lag 32, 33 active frames, window and stride 32) the second
        window would hold one active frame, the one being finalised, and cost as much as the first; without it
        a step costs half and the movie is no worse (the example session, `neurocine reconstruct --mode
        streaming`: pixel correlation 0.3429 with it, 0.3432 without, in 0.49 of the time)."""
        c, w = self.capacity, self.window
        active_from = c - self.n_active
        ends = np.arange(c - 1, active_from - 1, -self.cfg.stride)
        covered = ends - np.maximum(active_from, ends - w + 1) + 1
        ends = ends[(covered >= max(1, w // 4)) | (ends == c - 1)]
        return ends - (w - 1)

    def _step(self) -> None:
        c, w, cfg = self.capacity, self.window, self.cfg
        starts = self._window_starts()
        idx = starts[:, None] + np.arange(w)[None, :]
        resp = np.ascontiguousarray(self.responses[idx].transpose(0, 2, 1))
        if not np.isfinite(resp).any():
            return  # nothing constrains the active frames yet (a gap)
        ens = self._cycle[self.steps_taken % len(self._cycle)] if len(self._cycle) > 1 else self.ens
        self.steps_taken += 1
        _, g_win = normalised_window_grad(
            ens, self.video[idx], self.behaviour[idx], resp, self.weights, cfg.norm_eps
        )
        g = np.zeros_like(self.video)
        count = np.zeros(c, np.float32)
        for j in range(w):
            g[starts + j] += g_win[:, j]
            count[starts + j] += 1
        active = np.zeros(c, bool)
        active[c - self.n_active :] = True
        active &= count > 0
        a = np.flatnonzero(active)
        ga = prepare_gradient(g[a] / count[a, None, None], self.mask, cfg)
        self.age[a] += 1
        video, m = self.video[a], self.m[a]  # copies (fancy indexing): updated, then put back
        momentum_update(video, m, ga, self.age[a], cfg)
        self.video[a], self.m[a] = video, m

    # ------------------------------------------------------------------ end
    def flush(self) -> list[EstimatedFrame]:
        """Emit the frames still active as final (end of the session), oldest first (a closing movie's first)."""
        c = self.capacity
        out = self._finish_closing() + [
            EstimatedFrame(int(self.seqs[i]), self._out(i), True) for i in range(c - self.pending, c)
        ]
        self.pending = 0
        return out

    def timing(self) -> dict[str, float]:
        """Per-frame compute time (seconds): pushes so far, statistics over the latest (PushTimes)."""
        return self.step_seconds.summary()


class StreamingEnsemble:
    """K optimisers, one per encoder, fed the same frames; each emitted frame is the mean of theirs (the
    paper's better ensembling, "separate reconstructions averaged"). Same API as StreamingReconstructor."""

    def __init__(
        self,
        backends: Ensemble,
        config: StreamingConfig,
        mask: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        inverse: InverseDecoder | None = None,
    ) -> None:
        self.members = [StreamingReconstructor([b], config, mask, weights, inverse) for b in backends.members]
        self.cfg = config
        self.step_seconds = PushTimes()

    @staticmethod
    def _merge(outs: list[list[EstimatedFrame]]) -> list[EstimatedFrame]:
        return [
            EstimatedFrame(first.seq, np.mean([o[k].frame for o in outs], axis=0), first.final)
            for k, first in enumerate(outs[0])
        ]

    def reset(self, session_id: str | None = None) -> None:
        for m in self.members:
            m.reset(session_id)

    def push(self, responses: np.ndarray, behaviour: np.ndarray, seq: int | None = None,
             session_id: str | None = None, steps: int | None = None,
             cut: bool = False) -> list[EstimatedFrame]:  # fmt: skip
        start = time.perf_counter()
        outs = [m.push(responses, behaviour, seq, session_id, steps, cut) for m in self.members]
        self.step_seconds.append(time.perf_counter() - start)
        return self._merge(outs)

    def flush(self) -> list[EstimatedFrame]:
        return self._merge([m.flush() for m in self.members])

    def estimate_at_age(self, age: int) -> np.ndarray | None:
        frames = [m.estimate_at_age(age) for m in self.members]
        return None if frames[0] is None else np.mean(frames, axis=0)

    def timing(self) -> dict[str, float]:
        return self.step_seconds.summary()


def make_streaming(
    backends: GradientBackend | Ensemble | Sequence[GradientBackend],
    config: StreamingConfig | None = None,
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    inverse: InverseDecoder | None = None,
) -> StreamingReconstructor | StreamingEnsemble:
    """The streaming optimiser for these encoders: one (gradient ensembling) or one per encoder (videos)."""
    cfg = config or StreamingConfig()
    ens = as_ensemble(backends)
    if cfg.ensemble == "videos" and len(ens) > 1:
        return StreamingEnsemble(ens, cfg, mask, weights, inverse)
    return StreamingReconstructor(ens, cfg, mask, weights, inverse)


def reconstruct_streaming(
    backends: GradientBackend | Ensemble | Sequence[GradientBackend],
    responses: np.ndarray,
    behaviour: np.ndarray,
    config: StreamingConfig | None = None,
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    drain: bool = True,
    inverse: InverseDecoder | None = None,
    provisional_ages: Sequence[int] = (),
    cuts: Sequence[int] = (),
) -> tuple[np.ndarray, StreamingReconstructor | StreamingEnsemble]:
    """Stream a whole recording through the optimiser; returns the final movie (T, 36, 64) and the
    optimiser (for its timing).

    drain: after the last frame, keep the stream going for `lag` more frames without responses (what a
    live session does: the rig keeps sending), so the movie's last frames get their usual optimiser steps
    instead of being flushed early; False flushes them as they are.
    provisional_ages: also keep, for each age a, every frame's estimate a frames after its responses arrived
    (after that arrival's steps), as `rec.age_movies[a]` (T, 36, 64): what a closed loop sees before the lag.
    cuts: frames that do not follow the previous one in time (trials played back to back); no window spans one.
    """
    rec = make_streaming(backends, config, mask, weights, inverse)
    responses = np.asarray(responses, np.float32)
    behaviour = np.asarray(behaviour, np.float32)
    if responses.ndim != 2 or behaviour.shape != (responses.shape[0], 4):
        raise ReconstructionError(
            f"responses (T, N) and behaviour (T, 4) needed, got {responses.shape} and {behaviour.shape}"
        )
    frames: dict[int, np.ndarray] = {}
    t_len = responses.shape[0]
    ages = {a: np.full((t_len, 36, 64), np.nan, np.float32) for a in provisional_ages}

    def keep_ages(t: int) -> None:
        for a, movie in ages.items():
            if 0 <= t - a < t_len and (est := rec.estimate_at_age(a)) is not None:
                movie[t - a] = est

    cut_at = set(cuts)
    for t in range(t_len):
        for f in rec.push(responses[t], behaviour[t], t, cut=t in cut_at):
            if f.final:
                frames[f.seq] = f.frame
        keep_ages(t)
    nothing = np.full(responses.shape[1], np.nan, np.float32)
    for t in range(t_len, t_len + (rec.cfg.lag if drain and t_len else 0)):
        for f in rec.push(nothing, behaviour[-1], t):
            if f.final and f.seq < t_len:
                frames[f.seq] = f.frame
        keep_ages(t)
    for f in rec.flush():
        frames[f.seq] = f.frame
    movie = np.stack([frames[t] for t in range(t_len)])
    rec.age_movies = ages  # type: ignore[union-attr]
    return movie, rec
