"""The client side: DecodedStream (final / provisional filter, newest-only, malformed input), the target
detector, and the example closed-loop client acting on a rig's control socket, over real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from neurocine.decoder.client import DecodedStream
from neurocine.decoder.detect import DetectorConfig, TargetDetector
from neurocine.decoder.live.decoded import DecodedFrame, encode_decoded_frame
from neurocine.streams.control import TARGETS, ControlServer
from neurocine.streams.protocol import encode_decoded
from neurocine.streams.transport import Publisher
from tests.conftest import REPO, free_port
from tests.test_light_install import RUNNER

RNG = np.random.default_rng(0)


def noise_frame() -> np.ndarray:
    return RNG.integers(60, 200, (36, 64), dtype=np.uint8)


def decoded(sid: str, seq: int, final: bool, frame: np.ndarray) -> list:
    t = time.time_ns()
    return encode_decoded_frame(DecodedFrame(sid, seq, t - 5_000_000, t - 4_000_000, t - 3_000_000, t,
                                             16 if final else 0, final, frame, trigger_seq=seq + (16 if final else 0),
                                             trigger_t_pub_ns=t - 2_000_000))


def receive_all(stream: DecodedStream, n_expected: int, timeout: float = 10.0) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n_expected and time.monotonic() < deadline:
        f = stream.recv(timeout_s=0.2)
        if f is not None:
            out.append(f)
    return out


@pytest.mark.parametrize(("final", "provisional", "expect"), [
    (True, False, [("a", 0, True), ("a", 1, True), ("b", 0, True)]),
    (False, True, [("a", 2, False), ("a", 3, False)]),
    (True, True, [("a", 0, True), ("a", 1, True), ("a", 2, False), ("a", 3, False), ("b", 0, True)]),
])
def test_stream_hands_over_the_kinds_asked_for(final: bool, provisional: bool, expect: list) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    frames = {k: noise_frame() for k in range(4)}
    with DecodedStream(ep, final=final, provisional=provisional) as stream, Publisher(ep) as pub:
        assert pub.wait_subscribers(1, 10)
        for seq in range(4):
            pub.send_raw(decoded("a", seq, seq < 2, frames[seq]))
        pub.send_raw(encode_decoded("a", {"seq": 9}, []))  # not a decoded frame: counted, skipped
        pub.send_raw(decoded("b", 0, True, frames[0]))  # the rig restarted: a new source session
        # a last frame of a kind asked for: one socket keeps order, so whatever was not filtered out arrives before it
        pub.send_raw(decoded("z", 0, final, frames[0]))
        got = receive_all(stream, len(expect) + 1)
    expect = [*expect, ("z", 0, final)]
    assert [(f.session_id, f.seq, f.final) for f in got] == expect
    assert all(np.array_equal(f.frame, frames[f.seq]) for f in got)
    assert [f.new_session for f in got] == [i == 0 or got[i - 1].session_id != f.session_id for i, f in enumerate(got)]
    assert stream.stats.malformed == 1 and "'frame'" in stream.stats.last_error
    assert stream.stats.filtered == 6 - len(expect)
    f = got[0]
    assert f.frame.shape == (36, 64) and f.frame.dtype == np.uint8
    assert f.t_acq_ns < f.t_pub_ns < f.t_done_ns <= f.t_recv_ns
    assert f.latency_ms > f.overhead_ms > 0  # the lag is in latency, not in overhead


def test_newest_only_skips_stale_frames() -> None:
    # inproc: a message is in the subscriber's queue when send returns, so the ten frames wait, as they would for a
    # slow client, without a sleep
    ep = f"inproc://newest-{free_port()}"
    with Publisher(ep) as pub, DecodedStream(ep, newest_only=True) as stream:
        assert pub.wait_subscribers(1, 10)
        for seq in range(10):
            pub.send_raw(decoded("a", seq, True, noise_frame()))
        f = stream.recv(timeout_s=2)
    assert f is not None and f.seq == 9 and f.new_session
    assert stream.stats.skipped_stale == 9


def test_stream_counts_a_stall_of_a_live_session_and_not_the_silence_after_its_end() -> None:
    from neurocine.streams.stall import StallConfig

    ep = f"tcp://127.0.0.1:{free_port()}"
    with DecodedStream(ep, stall=StallConfig(stall_after_s=0.3)) as stream, Publisher(ep) as pub:
        assert pub.wait_subscribers(1, 10)
        for seq in range(3):
            pub.send_raw(decoded("a", seq, True, noise_frame()))
        assert len(receive_all(stream, 3)) == 3
        deadline = time.monotonic() + 10
        while not stream.stats.stalled and time.monotonic() < deadline:
            assert stream.recv(timeout_s=0.1) is None
        assert stream.stats.stalled and stream.stats.stalls == 1
        t = time.time_ns()  # the session ends: the decoder flushes its last frame, marked
        pub.send_raw(encode_decoded_frame(DecodedFrame("a", 3, t, t, t, t, 0, True, noise_frame(), trigger_seq=3,
                                                       trigger_t_pub_ns=t, flushed="end")))
        f = stream.recv(timeout_s=5)
        assert f is not None and f.flushed == "end" and not stream.stats.stalled
        t_end = time.monotonic()
        while time.monotonic() < t_end + 0.9:  # three times the limit after the end: normal, no second stall
            assert stream.recv(timeout_s=0.1) is None
        assert stream.stats.stalls == 1


def test_stream_refuses_to_hand_over_nothing() -> None:
    with pytest.raises(ValueError, match="final frames, provisional frames, or both"):
        DecodedStream("tcp://127.0.0.1:1", final=False, provisional=False)


def test_client_modules_import_without_torch_or_onnxruntime() -> None:
    for module in ("neurocine.decoder.client", "neurocine.decoder.detect", "neurocine.streams.control",
                   "neurocine.streams.publish", "neurocine.decoder.examples.closed_loop", "neurocine.streams.bridge"):
        r = subprocess.run([*RUNNER, "--try-import", module], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (module, r.stderr)


def test_detector_fires_on_the_target_after_its_average_and_then_keeps_quiet() -> None:
    target = TARGETS["bar"]
    det = TargetDetector(target, DetectorConfig(threshold=0.7, frames=3, refractory=10))
    noisy_target = lambda: np.clip(target + RNG.normal(0, 40, target.shape), 0, 255)  # noqa: E731
    fired = [det.update(s, noise_frame()) for s in range(10)]
    fired += [det.update(s, noisy_target()) for s in range(10, 30)]
    assert not any(fired[:10])
    assert [s for s, f in enumerate(fired) if f] == [12, 22]  # 3 target frames averaged, then 10 quiet
    det.reset()
    assert not det.update(0, noisy_target())  # a new session: the average starts again
    assert not det.update(0, noisy_target())  # a repeated seq is ignored
    with pytest.raises(ValueError, match="must not be flat"):
        TargetDetector(np.full((36, 64), 128, np.uint8))


def fake_rig(ctl: ControlServer, stop: threading.Event, got: list) -> None:
    """The rig's end of the control socket, as the synthetic rig runs it: acknowledge at the next frame."""
    seq = 1000
    while not stop.is_set():
        ctl.poll(1 / 30)
        seq += 1
        cmd = ctl.take()
        if cmd is not None:
            got.append(cmd)
            ctl.shown(seq, time.time_ns(), time.time_ns())


def test_example_client_detects_the_target_and_commands_the_rig() -> None:
    dec_ep, ctl_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ctl = ControlServer(ctl_ep)
    stop, commands = threading.Event(), []
    rig = threading.Thread(target=fake_rig, args=(ctl, stop, commands), daemon=True)
    rig.start()
    client = subprocess.Popen([sys.executable, "-m", "neurocine.decoder.examples.closed_loop", "--connect", dec_ep,
                               "--rig", ctl_ep, "--target", "bar", "--threshold", "0.8", "--max-decisions", "1",
                               "--seconds", "60"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Publisher(dec_ep) as pub:
            assert pub.wait_subscribers(1, 30)
            for seq in range(40):  # movie-like noise, then the target from seq 20 on (what a decoder would show)
                frame = noise_frame() if seq < 20 else np.clip(TARGETS["bar"] + RNG.normal(0, 30, (36, 64)), 0, 255)
                pub.send_raw(decoded("s", seq, True, frame.astype(np.uint8)))
                time.sleep(0.01)
            out, err = client.communicate(timeout=60)
    finally:
        client.kill()
        stop.set()
        rig.join(5)
        ctl.close()
    assert client.returncode == 0, err
    lines = [json.loads(x) for x in out.strip().splitlines()]
    decision = lines[0]
    assert decision["seq"] == 20 + DetectorConfig().frames - 1 and decision["final"] is True
    assert decision["rig"]["ok"] and decision["rig"]["cmd"] == "movie"
    assert [c.cmd for c in commands] == ["movie"]
    assert lines[-1]["summary"]["decisions"] == 1


def test_bench_loop_scores_hits_false_alarms_and_overhead_from_what_it_recorded() -> None:
    """The bench's arithmetic on a hand-made test block: 2 targets acted on with final frames (one found by the
    client, one missed), 2 catch windows (one with a false alarm)."""
    import argparse

    from neurocine.decoder.bench.loop import PERIOD_NS, Loop, distribution, summarise

    args = argparse.Namespace(window=1.0, act_on="final", events=4, lag=16, target="bar")
    loop = Loop.__new__(Loop)
    loop.args, loop.configs = args, {"final": DetectorConfig(threshold=0.3, frames=1)}
    ms = 1_000_000
    t0 = 10**18
    shown = lambda seq: t0 + seq * PERIOD_NS  # noqa: E731
    loop.events = [
        {"kind": "target", "act_on": "final",
         "on": {"seq": 100, "t_shown_ns": shown(100), "t_pub_ns": shown(100) + 2 * ms},
         "off_cmd": "client", "off": {"seq": 131, "t_recv_ns": shown(126) + 63 * ms, "t_shown_ns": shown(131),
                                      "t_pub_ns": shown(131) + 2 * ms, "t_reply_ns": shown(131) + 3 * ms},
         "decision": {"seq": 110, "trigger_seq": 126, "t_acq_ns": shown(110), "trigger_t_pub_ns": shown(126) + 5 * ms,
                      "t_done_ns": shown(126) + 55 * ms, "t_recv_ns": shown(126) + 56 * ms,
                      "t_decision_ns": shown(126) + 57 * ms}},
        {"kind": "catch", "on": {"seq": 300, "t_shown_ns": shown(300), "t_pub_ns": shown(300) + 2 * ms}},
        {"kind": "target", "act_on": "final",
         "on": {"seq": 500, "t_shown_ns": shown(500), "t_pub_ns": shown(500) + 2 * ms},
         "off_cmd": "schedule", "off": {"seq": 530, "t_recv_ns": 0, "t_shown_ns": shown(530), "t_pub_ns": 0,
                                        "t_reply_ns": 0}},
        {"kind": "catch", "on": {"seq": 700, "t_shown_ns": shown(700), "t_pub_ns": shown(700) + 2 * ms}},
    ]
    loop.fires = {"final": [{"seq": 110, "t_decision_ns": shown(126) + 57 * ms}, {"seq": 710, "t_decision_ns": 0}],
                  "provisional": []}
    loop.frames = [("final", s, shown(s), shown(s) + 2 * ms, s + 16, shown(s + 16) + 5 * ms, shown(s + 16) + 55 * ms,
                    shown(s + 16) + 56 * ms, 0.5 if s in (110, 710) else 0.0, shown(s + 16) + 6 * ms, 0, 40 * ms,
                    0.5 if s in (110, 710) else 0.0) for s in range(90, 760)]
    out = summarise(loop, args, calibration={})
    det = out["detection"]["final"]
    assert (det["targets_acted_on"], det["hits"], det["catch"], det["false_alarms"]) == (2, 1, 2, 1)
    assert det["detection_delay_frames"]["p50"] == 10
    assert det["background_fires"] == 0 and det["fired_at_seq"] == [110, 710]
    assert det["background_minutes"] == pytest.approx((670 - (31 + 45) - 30 - (30 + 45) - 30) / 30 / 60, abs=0.01)
    decision = (26 * PERIOD_NS + 57 * ms) / 1e6
    assert det["decision_after_shown_ms"]["p50"] == pytest.approx(decision, abs=0.1)
    assert det["decision_after_shown_ms"]["values"] == [pytest.approx(decision, abs=0.1)]
    assert det["windows"]["window_hits"] == 1 and det["windows"]["window_false_alarms"] >= 1
    ce = out["closed_events"]
    assert ce["n"] == 1  # the missed target was taken off by the schedule: no loop closed
    assert ce["rig_publish_ms"]["p50"] == 5 and ce["decoder_ms"]["p50"] == 50 and ce["delivery_ms"]["p50"] == 1
    assert ce["client_ms"]["p50"] == 1 and ce["command_ms"]["p50"] == 6
    assert ce["overhead_ms"]["p50"] == 63  # 5 + 50 + 1 + 1 + 6: the lag and the biology are not in it
    assert ce["frame_clock_ms"]["p50"] == pytest.approx((5 * PERIOD_NS - 63 * ms) / 1e6, abs=0.01)
    pf = out["per_frame"]["final"]
    assert pf["to_decoder_ms"]["p50"] == 1 and pf["decoder_compute_ms"]["p50"] == 40
    d = distribution([120.0, 250.0, 260.0, 410.0, 900.0])
    assert (d["p50"], d["min"], d["max"]) == (260.0, 120.0, 900.0)
    assert sum(d["histogram"]["counts"]) == 5 and d["histogram"]["counts"][2] == 2  # 200-300 ms: two decisions
