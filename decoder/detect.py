"""An event detector for the decoded movie: "is the target image on screen?" from correlation with it, and its
calibration from catch trials for a stated false-alarm rate.

The decoded movie is noisy and blurred (pixel correlation with the truth ~0.2-0.3 per frame, README), so
the detector averages the Pearson correlation between the decoded frame and the target image over the
last `frames` frames (inside an optional region of interest) and fires when that mean crosses
`threshold`; after firing it stays quiet for `refractory` frames.

Which threshold and frame count: that depends on the decoder, the model, the mouse, the target and the kind of
frame acted on, so it is measured, not guessed (a guess of 0.25 / 2 frames fired in 6 of 10 catch windows and
21.9 times a minute on plain movie). `calibrate` reads a calibration block (target windows, catch
windows and the movie between them, scored frame by frame with ScoreLog) and, for each frame count, puts the
threshold where the detector's false alarms per catch window meet the stated rate, then keeps the frame count
that finds the most targets (ROC, AUC and d' reported). neurocine.decoder.client.calibrate_detector runs such a
block on a live rig; `neurocine bench loop` calibrates, then tests on new events. Light: numpy and the stdlib.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from neurocine.streams.summary import percentiles


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """The detector's settings. The threshold and frame count here are only a start for a detector not yet
    calibrated: `calibrate` chooses both for a stated false-alarm rate (see the module docstring)."""

    threshold: float = 0.25  # mean correlation that fires
    frames: int = 2  # frames averaged (67 ms at 30 Hz)
    refractory: int = 45  # frames of silence after firing (1.5 s)
    roi: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) of the 36 x 64 frame; None = all


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (0 when either is flat)."""
    x = a.astype(np.float64).ravel() - a.mean()
    y = b.astype(np.float64).ravel() - b.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / den) if den > 0 else 0.0


class TargetDetector:
    """Feed decoded frames in seq order with `update(seq, frame)`; it returns True on the frame that fires."""

    def __init__(self, target: np.ndarray, config: DetectorConfig = DetectorConfig()) -> None:
        if config.frames < 1 or config.refractory < 0:
            raise ValueError(f"detector needs frames >= 1 and refractory >= 0, got {config}")
        self.config = config
        self._roi = (slice(None), slice(None)) if config.roi is None else (
            slice(config.roi[0], config.roi[1]), slice(config.roi[2], config.roi[3]))
        self.target = np.asarray(target)[self._roi]
        if self.target.size < 2 or np.ptp(self.target) == 0:
            raise ValueError("the target image (inside the ROI) must not be flat")
        self._scores: collections.deque[tuple[int, float]] = collections.deque(maxlen=config.frames)
        self._quiet_until = -1
        self.last_mean = 0.0
        self.last_score = 0.0  # this frame's correlation alone

    def reset(self) -> None:
        """Forget the history (a new session: sequence numbers restart)."""
        self._scores.clear()
        self._quiet_until = -1

    def update(self, seq: int, frame: np.ndarray) -> bool:
        if self._scores and seq <= self._scores[-1][0]:
            return False  # not newer than what was seen (a repeat): ignore
        if self._scores and seq != self._scores[-1][0] + 1:
            self._scores.clear()  # a gap: start the average again
        self.last_score = correlation(frame[self._roi], self.target)
        self._scores.append((seq, self.last_score))
        self.last_mean = float(np.mean([s for _, s in self._scores]))
        if len(self._scores) < self.config.frames or seq < self._quiet_until:
            return False
        if self.last_mean >= self.config.threshold:
            self._quiet_until = seq + self.config.refractory
            return True
        return False


# ---------------------------------------------------------------------------------------------- calibration
@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """What a calibration aims for and how it searches; the defaults of `bench loop` and the client example."""

    #: detector firings allowed per catch window (a window of `window_s` without the target). 0.05 per 3 s is
    #: ~1 firing a minute on movie without the target.
    false_alarm_rate: float = 0.05
    window_s: float = 3.0  # a catch window, and the time a target is given to be found
    frame_rate: float = 30.0
    frame_counts: tuple[int, ...] = (1, 2, 3, 4, 6, 8)  # candidates for DetectorConfig.frames
    refractory: int = DetectorConfig.refractory
    #: frames after a target goes off during which the decoded movie may still show it (the decoder's lag and
    #: ~1 s of responses): neither target nor background
    trailing_frames: int = 45
    #: frame counts whose expected hit rate is within this of the best compete on speed (the fastest median
    #: detection wins): a closed loop wants the decision early, and a 1-2 % hit rate is within the noise of a
    #: 10-target calibration
    hit_rate_tolerance: float = 0.02

    @property
    def window_frames(self) -> int:
        return max(1, round(self.window_s * self.frame_rate))

    def __post_init__(self) -> None:
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if not self.frame_counts or min(self.frame_counts) < 1:
            raise ValueError(f"frame_counts must be >= 1, got {self.frame_counts}")


#: The defaults, as one object (a default argument that is not built per call).
DEFAULT_CALIBRATION = CalibrationConfig()


class ScoreLog:
    """Each decoded frame's correlation with the target, by seq: what `calibrate` reads (one log per kind of frame:
    provisional and final frames are different detectors' inputs)."""

    def __init__(self, target: np.ndarray, roi: tuple[int, int, int, int] | None = None) -> None:
        self._roi = (slice(None), slice(None)) if roi is None else (slice(roi[0], roi[1]), slice(roi[2], roi[3]))
        self.target = np.asarray(target)[self._roi]
        self._scores: dict[int, float] = {}

    def add(self, seq: int, frame: np.ndarray) -> float:
        """Score frame `seq` (a repeat of a seq keeps the first score, as the detector does)."""
        return self._scores.setdefault(int(seq), correlation(frame[self._roi], self.target))

    def __len__(self) -> int:
        return len(self._scores)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(seqs, scores), in seq order."""
        seqs = np.array(sorted(self._scores), np.int64)
        return seqs, np.array([self._scores[int(q)] for q in seqs], np.float64)


@dataclasses.dataclass
class Calibration:
    """A calibrated detector and the evidence for it (JSON-able with `as_dict`)."""

    config: DetectorConfig  # the chosen threshold and frame count
    false_alarm_rate: float  # the stated target, per catch window of window_s
    window_s: float
    predicted_false_alarm_rate: float  # per catch window at the chosen threshold (the noise model)
    predicted_background_per_minute: float  # firings a minute on movie without the target (the noise model)
    hit_rate: float  # calibration targets found at the chosen setting (in sample: optimistic)
    false_alarms: int  # calibration catch windows and background chunks that crossed it (in sample)
    noise_windows: int
    targets: int
    noise_minutes: float
    d_prime: float  # z(hits) - z(false alarms) at the chosen setting, window counts with the log-linear correction
    d_prime_scores: float  # separation of the window maxima: (mean target - mean noise) / pooled sd
    auc: float  # area under the ROC of window maxima (target windows against noise windows)
    detection_delay_frames: list[int]  # calibration targets: onset -> first frame over the threshold
    candidates: list[dict[str, Any]]  # the same for every frame count tried
    roc: dict[str, list[list[float]]]  # per frame count: [false-alarm rate, hit rate] over thresholds

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = {"threshold": self.config.threshold, "frames": self.config.frames,
                       "refractory": self.config.refractory}
        return d


class CalibrationError(ValueError):
    """A calibration block that cannot calibrate (no target or no catch window, no scored frame in them)."""


def running_mean(seqs: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """The detector's statistic at each frame: the mean of the last `n` scores, NaN until `n` consecutive seqs
    (a gap restarts the detector's average)."""
    out = np.full(scores.shape, np.nan)
    if scores.size < n:
        return out
    csum = np.concatenate([[0.0], np.cumsum(scores)])
    i = np.arange(n - 1, scores.size)
    ok = seqs[i] - seqs[i - n + 1] == n - 1
    out[i[ok]] = (csum[i[ok] + 1] - csum[i[ok] + 1 - n]) / n
    return out


def _upcrossings(m: np.ndarray, contiguous: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For each threshold in `u`, how many times `m` rises to it (from below, or at the start of a run)."""
    above = m[None, :] >= u[:, None]  # NaN compares False
    prev = np.concatenate([np.zeros((u.size, 1), bool), above[:, :-1]], axis=1) & contiguous[None, :]
    return (above & ~prev).sum(axis=1)


def calibrate(seqs: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
              windows: Sequence[tuple[str, int, int]], config: CalibrationConfig = DEFAULT_CALIBRATION) -> Calibration:
    """Choose the detector's threshold and frame count from a calibration block.

    seqs, scores: each decoded frame's seq and correlation with the target (ScoreLog.arrays), one kind of frame.
    windows: ("target", first seq, end seq) while the target was up, ("catch", first, end) after a change to
    another movie; the frames outside every window (and past `trailing_frames` after a target) are background.
    Noise = catch windows + background. For each frame count n, the threshold is the lowest at which the
    detector's expected firings per catch window are <= config.false_alarm_rate: its firings are the running
    mean's up-crossings of the threshold, counted on the noise frames and, where too few were seen to count,
    extrapolated with Rice's formula from the mean level (a Gaussian tail: rate(u) = rate(mean) x
    exp(-(u - mean)^2 / 2 sd^2)); the larger of the two is used. Then, of the frame counts whose expected hit
    rate on the targets (a normal fit to the target windows' maxima, so a threshold just under every calibration
    target does not look perfect) is within config.hit_rate_tolerance of the best, the one that detects soonest
    (median over the calibration targets) wins."""
    seqs = np.asarray(seqs, np.int64)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(seqs, kind="stable")
    seqs, scores = seqs[order], scores[order]
    W = config.window_frames
    targets, noise_windows, noise = _split(seqs, windows, config)
    n_catch = sum(k == "catch" for k, _, _ in windows)
    if not targets or not n_catch:
        raise CalibrationError(f"a calibration needs target and catch windows, got {len(targets)} and {n_catch}")
    if not noise.any():
        raise CalibrationError("no scored frame in the catch windows or the background")
    contiguous_all = np.concatenate([[False], np.diff(seqs) == 1])
    lam_max = -math.log(1 - config.false_alarm_rate) / W  # firings per frame that give the stated rate per window
    per_n: list[tuple[float, dict[str, Any], DetectorConfig, np.ndarray]] = []
    roc: dict[str, list[list[float]]] = {}
    nd = NormalDist()
    for n in sorted(set(config.frame_counts)):
        m = running_mean(seqs, scores, n)
        mn = np.where(noise, m, np.nan)
        finite = mn[np.isfinite(mn)]
        if finite.size < 2:
            continue
        contiguous = contiguous_all & noise & np.concatenate([[False], noise[:-1]])
        t_max = _maxima(seqs, m, targets)
        n_max = _maxima(seqs, m, noise_windows)
        if not np.isfinite(t_max).any():
            continue
        threshold = _threshold(finite, mn, contiguous, lam_max)
        lam = _rate(threshold, finite, mn, contiguous)
        t_ok = t_max[np.isfinite(t_max)]
        hits = int((t_max >= threshold).sum())
        sd_t = max(float(t_ok.std()), 0.02)
        expected_hits = nd.cdf((float(t_ok.mean()) - threshold) / sd_t)
        delays = [d for d in (_first_over(seqs, m, lo, hi, threshold) for lo, hi in targets) if d is not None]
        fa = int((n_max >= threshold).sum())
        cand = {
            "frames": n, "threshold": round(threshold, 4), "hit_rate": round(hits / len(targets), 3),
            "expected_hit_rate": round(expected_hits, 3), "false_alarms": fa,
            "predicted_false_alarm_rate": round(1 - math.exp(-lam * W), 4),
            "predicted_background_per_minute": round(lam * config.frame_rate * 60, 3),
            "detection_delay_frames": percentiles(delays, 2),
            "auc": round(_auc(t_ok, n_max[np.isfinite(n_max)]), 3),
            "d_prime": round(_d_prime(hits, len(targets), fa, len(noise_windows)), 3),
            "d_prime_scores": round(_separation(t_ok, n_max[np.isfinite(n_max)]), 3),
        }
        roc[f"frames_{n}"] = _roc(t_max, n_max)
        cfg = DetectorConfig(threshold=float(round(threshold, 4)), frames=n, refractory=config.refractory)
        per_n.append((expected_hits, cand, cfg, np.asarray(delays, float)))
    if not per_n:
        raise CalibrationError("too few scored frames in the calibration block for any frame count")
    top = max(x[0] for x in per_n)
    near = [x for x in per_n if x[0] >= top - config.hit_rate_tolerance]
    _, cand, cfg, delays = min(near, key=lambda x: (float(np.median(x[3])) if x[3].size else 1e9, -x[0]))
    return Calibration(
        config=cfg, false_alarm_rate=config.false_alarm_rate, window_s=config.window_s,
        predicted_false_alarm_rate=cand["predicted_false_alarm_rate"],
        predicted_background_per_minute=cand["predicted_background_per_minute"], hit_rate=cand["hit_rate"],
        false_alarms=cand["false_alarms"], noise_windows=len(noise_windows), targets=len(targets),
        noise_minutes=round(float(noise.sum()) / config.frame_rate / 60, 2), d_prime=cand["d_prime"],
        d_prime_scores=cand["d_prime_scores"], auc=cand["auc"], detection_delay_frames=[int(d) for d in delays],
        candidates=[c for _, c, _, _ in per_n], roc=roc)


def _split(seqs: np.ndarray, windows: Sequence[tuple[str, int, int]], config: CalibrationConfig
           ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], np.ndarray]:
    """(target windows, noise windows, noise frame mask): noise = the catch windows (their first window_frames)
    and the background (frames outside every window and the trailing frames after a target), the latter also cut
    into window-long chunks as more noise windows for the ROC."""
    W = config.window_frames
    targets = [(lo, hi) for k, lo, hi in windows if k == "target"]
    catches = [(lo, min(hi, lo + W)) for k, lo, hi in windows if k == "catch"]
    busy = np.zeros(seqs.size, bool)
    for k, lo, hi in windows:
        busy |= (seqs >= lo) & (seqs < hi + (config.trailing_frames if k == "target" else 0))
    in_catch = np.zeros(seqs.size, bool)
    for lo, hi in catches:
        in_catch |= (seqs >= lo) & (seqs < hi)
    chunks = [(int(seqs[idx[0]]), int(seqs[idx[0]]) + W) for idx in _chunks(np.flatnonzero(~busy), seqs, W)]
    return targets, catches + chunks, in_catch | ~busy


def _chunks(idx: np.ndarray, seqs: np.ndarray, w: int) -> list[np.ndarray]:
    """Background frame indices cut into runs of `w` consecutive seqs (the rest of each run dropped)."""
    out = []
    if idx.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(seqs[idx]) != 1) + 1
    for run in np.split(idx, breaks):
        out += [run[k:k + w] for k in range(0, run.size - w + 1, w)]
    return out


def _maxima(seqs: np.ndarray, m: np.ndarray, windows: Sequence[tuple[int, int]]) -> np.ndarray:
    out = np.full(len(windows), np.nan)
    for k, (lo, hi) in enumerate(windows):
        v = m[(seqs >= lo) & (seqs < hi)]
        v = v[np.isfinite(v)]
        if v.size:
            out[k] = v.max()
    return out


def _first_over(seqs: np.ndarray, m: np.ndarray, lo: int, hi: int, u: float) -> int | None:
    sel = np.flatnonzero((seqs >= lo) & (seqs < hi) & (m >= u))
    return None if sel.size == 0 else int(seqs[sel[0]] - lo)


def _rate(u: float, finite: np.ndarray, mn: np.ndarray, contiguous: np.ndarray) -> float:
    """Firings per noise frame at threshold u: the counted up-crossings or the Rice extrapolation, the larger."""
    frames = finite.size
    counted = float(_upcrossings(mn, contiguous, np.array([u]))[0]) / frames
    mu, sd = float(finite.mean()), max(float(finite.std()), 1e-6)
    at_mean = max(float(_upcrossings(mn, contiguous, np.array([mu]))[0]), 1.0) / frames
    rice = at_mean * math.exp(-((max(u, mu) - mu) ** 2) / (2 * sd**2))
    return max(counted, rice)


def _threshold(finite: np.ndarray, mn: np.ndarray, contiguous: np.ndarray, lam_max: float) -> float:
    """The lowest threshold whose firing rate (as _rate) is <= lam_max; the counted rate is made non-increasing in
    the threshold first (up-crossings are not monotone), so no higher threshold can fire more."""
    mu, sd = float(finite.mean()), max(float(finite.std()), 1e-6)
    frames = finite.size
    at_mean = max(float(_upcrossings(mn, contiguous, np.array([mu]))[0]), 1.0) / frames
    rice_u = mu + sd * math.sqrt(2 * math.log(at_mean / lam_max)) if at_mean > lam_max else mu
    grid = np.unique(np.concatenate([np.quantile(finite, np.linspace(0, 1, 257)), np.sort(finite)[-64:]]))
    counted = _upcrossings(mn, contiguous, grid) / frames
    envelope = np.maximum.accumulate(counted[::-1])[::-1]  # the most any threshold >= u fires
    over = np.flatnonzero(envelope > lam_max)
    counted_u = float(grid[over[-1]] + 1e-9) if over.size and over[-1] + 1 >= grid.size else (
        float(grid[over[-1] + 1]) if over.size else float(grid[0]))
    return max(rice_u, counted_u)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def _d_prime(hits: int, n_targets: int, fas: int, n_noise: int) -> float:
    """z(H) - z(F) with the log-linear correction (Hautus 1995), so 10/10 hits and 0/20 false alarms stay finite."""
    nd = NormalDist()
    return nd.inv_cdf((hits + 0.5) / (n_targets + 1)) - nd.inv_cdf((fas + 0.5) / (n_noise + 1))


def _separation(pos: np.ndarray, neg: np.ndarray) -> float:
    if pos.size < 2 or neg.size < 2:
        return float("nan")
    pooled = math.sqrt((pos.var(ddof=1) + neg.var(ddof=1)) / 2)
    return float((pos.mean() - neg.mean()) / pooled) if pooled > 0 else float("inf")


def _roc(t_max: np.ndarray, n_max: np.ndarray) -> list[list[float]]:
    """[false-alarm rate, hit rate] at every threshold that changes either (window maxima), highest first."""
    t, n = t_max[np.isfinite(t_max)], n_max[np.isfinite(n_max)]
    if t.size == 0 or n.size == 0:
        return []
    out = [[0.0, 0.0]]
    for u in np.unique(np.concatenate([t, n]))[::-1]:
        out.append([round(float((n >= u).mean()), 4), round(float((t >= u).mean()), 4)])
    return out


def evaluate(seqs: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
             windows: Sequence[tuple[str, int, int]], detector: DetectorConfig,
             config: CalibrationConfig = DEFAULT_CALIBRATION) -> dict[str, Any]:
    """How a detector setting separates target from noise windows on other data than it was calibrated on (a test
    block): window maxima of its running mean, their AUC and d' (operating point and score separation)."""
    seqs = np.asarray(seqs, np.int64)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(seqs, kind="stable")
    seqs, scores = seqs[order], scores[order]
    m = running_mean(seqs, scores, detector.frames)
    targets, noise_windows, _ = _split(seqs, windows, config)
    t_max = _maxima(seqs, m, targets)
    n_max = _maxima(seqs, m, noise_windows)
    t, n = t_max[np.isfinite(t_max)], n_max[np.isfinite(n_max)]
    hits, fas = int((t >= detector.threshold).sum()), int((n >= detector.threshold).sum())
    return {"targets": int(t.size), "noise_windows": int(n.size), "window_hits": hits, "window_false_alarms": fas,
            "auc": round(_auc(t, n), 3),
            "d_prime": round(_d_prime(hits, t.size, fas, n.size), 3) if t.size and n.size else None,
            "d_prime_scores": round(_separation(t, n), 3)}
