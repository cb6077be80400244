"""Detection calibrated, not guessed: the threshold and frame count come from catch trials for a stated
false-alarm rate, and an experimenter's client calibrates on a live rig before it acts."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from neurocine.decoder.detect import (
    CalibrationConfig,
    CalibrationError,
    DetectorConfig,
    TargetDetector,
    calibrate,
    evaluate,
    running_mean,
)
from neurocine.decoder.live.decoded import DecodedFrame, encode_decoded_frame
from neurocine.streams.control import TARGETS, ControlServer, RigControl
from neurocine.streams.transport import Publisher
from tests.conftest import REPO, free_port

CFG = CalibrationConfig()


def block(n_events: int, seed: int, rise: float = 0.35) -> tuple[np.ndarray, np.ndarray, list]:
    """A calibration block's scores: smooth noise (AR(1), sd ~0.11, like a movie's correlation with the target
    drifting) between events, and, in target windows, a rise of `rise` from 8 frames after the onset (the biology)."""
    rng = np.random.default_rng(seed)
    seqs, scores, windows, s, x = [], [], [], 0, 0.0
    for e in range(n_events):
        kind = "target" if e % 2 == 0 else "catch"
        iti = int(rng.uniform(75, 105))
        for k in range(iti + 90):
            x = 0.9 * x + rng.normal(0, 0.05)
            bump = rise * float(np.clip((k - iti - 8) / 6, 0, 1)) if kind == "target" else 0.0
            seqs.append(s)
            scores.append(0.05 + x + bump)
            s += 1
        windows.append((kind, s - 90, s))
    return np.array(seqs), np.array(scores), windows


def noise(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, out = 0.0, np.empty(n)
    for i in range(n):
        x = 0.9 * x + rng.normal(0, 0.05)
        out[i] = 0.05 + x
    return out


def test_calibration_meets_the_stated_false_alarm_rate_on_fresh_noise_and_finds_the_targets() -> None:
    seqs, scores, windows = block(20, seed=0)
    cal = calibrate(seqs, scores, windows, CFG)
    assert cal.targets == 10 and cal.noise_windows >= 10
    assert cal.predicted_false_alarm_rate <= CFG.false_alarm_rate
    assert cal.predicted_background_per_minute <= -np.log(1 - CFG.false_alarm_rate) / CFG.window_s * 60 + 1e-6
    assert cal.hit_rate == 1.0 and cal.auc > 0.95 and cal.d_prime > 2
    # the rate is met on noise the calibration never saw: 30 minutes of the same process
    fresh = noise(30 * 60 * 30, seed=99)
    m = running_mean(np.arange(fresh.size), fresh, cal.config.frames)
    above = m >= cal.config.threshold
    per_window = (above[1:] & ~above[:-1]).sum() / (fresh.size / CFG.window_frames)
    assert per_window <= CFG.false_alarm_rate
    # ... and the live detector with that setting finds a target the way the calibration counted
    det = TargetDetector(TARGETS["bar"], cal.config)
    assert cal.config.frames in CFG.frame_counts and det.config.threshold == cal.config.threshold
    # a stricter rate asks for a higher threshold
    strict = calibrate(seqs, scores, windows, CalibrationConfig(false_alarm_rate=0.005, frame_counts=(
        cal.config.frames,)))
    assert strict.config.threshold > cal.config.threshold


def test_the_faster_frame_count_wins_when_the_hit_rates_tie_and_the_roc_is_reported() -> None:
    seqs, scores, windows = block(20, seed=1, rise=0.8)  # easy targets: every frame count finds them all
    cal = calibrate(seqs, scores, windows, CFG)
    rates = {c["frames"]: c["expected_hit_rate"] for c in cal.candidates}
    assert min(rates.values()) > 0.97
    delays = {c["frames"]: c["detection_delay_frames"]["p50"] for c in cal.candidates}
    assert delays[cal.config.frames] == min(delays.values())
    roc = cal.roc[f"frames_{cal.config.frames}"]
    assert roc[0] == [0.0, 0.0] and roc[-1] == [1.0, 1.0]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(roc))
    d = cal.as_dict()
    assert d["config"] == {"threshold": cal.config.threshold, "frames": cal.config.frames, "refractory": 45}
    json.dumps(d)  # JSON-able as it is
    out = evaluate(seqs, scores, windows, cal.config, CFG)
    assert out["targets"] == 10 and out["auc"] == pytest.approx(cal.auc)


def test_a_block_without_catch_trials_cannot_calibrate() -> None:
    seqs, scores, windows = block(4, seed=2)
    with pytest.raises(CalibrationError, match="target and catch windows"):
        calibrate(seqs, scores, [w for w in windows if w[0] == "target"], CFG)


def test_running_mean_restarts_after_a_gap_as_the_detector_does() -> None:
    rng = np.random.default_rng(3)
    seqs = np.array([0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12])
    frames = [np.clip(TARGETS["bar"] * rng.uniform(0, 1) + rng.normal(0, 60, (36, 64)), 0, 255) for _ in seqs]
    det = TargetDetector(TARGETS["bar"], DetectorConfig(threshold=-2, frames=3, refractory=0))
    fired = [det.update(int(q), f) for q, f in zip(seqs, frames, strict=True)]
    scores = np.array([_score(f) for f in frames])
    m = running_mean(seqs, scores, 3)
    assert [bool(np.isfinite(v)) for v in m] == fired  # the detector can fire exactly where the mean exists


def _score(frame: np.ndarray) -> float:
    from neurocine.decoder.detect import correlation

    return correlation(frame, TARGETS["bar"])


# ---------------------------------------------------------------------------------------------- a live session
def fake_rig_and_decoder(ctl: ControlServer, pub: Publisher, stop: threading.Event) -> None:
    """A rig that shows what it is told and a decoder that 'decodes' it at 30 Hz: the target (with noise) while
    it is up, movie-like noise otherwise; every decoded frame final, as `decode` without --provisional."""
    rng = np.random.default_rng(5)
    seq, showing = 0, "movie"
    t0 = time.monotonic()
    while not stop.is_set():
        ctl.poll(max(0.0, t0 + (seq + 1) / 30 - time.monotonic()))
        seq += 1
        cmd = ctl.take()
        if cmd is not None:
            showing = cmd.cmd
            ctl.shown(seq, time.time_ns(), time.time_ns())
        base = TARGETS["bar"].astype(float) if showing == "target" else rng.uniform(60, 200, (36, 64))
        frame = np.clip(base + rng.normal(0, 40, (36, 64)), 0, 255).astype(np.uint8)
        t = time.time_ns()
        pub.send_raw(encode_decoded_frame(DecodedFrame("s", seq, t, t, t, t, 0, True, frame, trigger_seq=seq,
                                                       trigger_t_pub_ns=t)))


def test_the_example_client_calibrates_at_the_start_of_a_session_then_acts(tmp_path) -> None:
    dec_ep, ctl_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    saved = tmp_path / "cal.json"
    ctl, stop = ControlServer(ctl_ep), threading.Event()
    with Publisher(dec_ep) as pub:
        rig = threading.Thread(target=fake_rig_and_decoder, args=(ctl, pub, stop), daemon=True)
        client = subprocess.Popen([sys.executable, "-m", "neurocine.decoder.examples.closed_loop", "--connect", dec_ep,
                                   "--rig", ctl_ep, "--calibrate", "6", "--window", "0.5", "--iti", "0.3", "0.4",
                                   "--save-calibration", str(saved), "--max-decisions", "1", "--seconds", "120"],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert pub.wait_subscribers(1, 60)
            rig.start()
            first = json.loads(client.stdout.readline())  # the calibration, before anything is acted on
            with RigControl(ctl_ep) as experimenter:  # the session proper: the target goes up once
                assert experimenter.send("target", name="bar")["ok"]
            out, err = client.communicate(timeout=60)
        finally:
            client.kill()
            stop.set()
            rig.join(5)
            ctl.close()
    assert client.returncode == 0, err
    cal = first["calibration"]["final"]
    assert cal["targets"] == 3 and cal["hit_rate"] == 1.0 and cal["auc"] == 1.0
    assert cal["predicted_false_alarm_rate"] <= 0.05
    assert json.loads(saved.read_text())["final"]["config"] == cal["config"]
    decision = json.loads(out.strip().splitlines()[0])
    assert decision["decision"] == 1 and decision["rig"]["ok"] and decision["rig"]["cmd"] == "movie"
    assert decision["score"] >= cal["config"]["threshold"]
