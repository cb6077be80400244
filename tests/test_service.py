"""The decode service for real: replay -> decode (its own process) -> collector over loopback TCP."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

from neurocine.decoder.analysis.metrics import corr
from neurocine.decoder.live.decoded import as_decoded_frame
from neurocine.streams.example import example_session_path
from neurocine.streams.formats import load_session
from neurocine.streams.protocol import Decoded
from neurocine.streams.replay import replay
from neurocine.streams.session import Session
from neurocine.streams.transport import Publisher, Subscriber
from tests.conftest import REPO, first_frames, free_port, probe_until_heard, wait_for

N = 200  # a 200-neuron slice of the default mouse keeps the oracle cheap enough for CI


def example_slice(n_frames: int, ids_offset: int = 0) -> Session:
    s = load_session(example_session_path(), trials=[0])
    return dataclasses.replace(s, traces=s.traces[:n_frames, :N], behaviour=s.behaviour[:n_frames],
                               timestamps_ns=s.timestamps_ns[:n_frames], stimulus=s.stimulus[:n_frames],
                               neuron_ids=s.neuron_ids[:N] + ids_offset, trials=[])


def start_decoder(model: Path | None, rig: str, out: str, *extra: str) -> subprocess.Popen:
    """`neurocine decode` in its own process; model None = the built-in model."""
    chosen = [] if model is None else ["--model", str(model)]
    return subprocess.Popen([sys.executable, "-m", "neurocine", "decode", *chosen, "--connect", rig,
                             "--bind", out, "--threads", "1", *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(sub: Subscriber, until: float, want: int | None = None, leave_out: Collection[str] = ()) -> list:
    """Decoded frames until `want` of them or `until`, those of the sessions in `leave_out` (probes) left out."""
    got = []
    while time.monotonic() < until and (want is None or len(got) < want):
        m = sub.recv(timeout_s=0.2)
        if isinstance(m, Decoded) and m.session_id not in leave_out:
            got.append(as_decoded_frame(m))
    return got


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    proc.terminate()
    return proc.communicate(timeout=30)


def test_replay_decode_record_correlates_with_truth(small_mouse: Path) -> None:
    session = example_slice(150)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    # flat out, and every step on every frame: the quality asserted does not depend on the machine's load
    # (pacing is the demo's and the viewer's tests' job, speed `neurocine bench latency`'s)
    dec = start_decoder(small_mouse, rig, out, "--lag", "16", "--steps", "2", "--every-step")
    try:
        with Subscriber(out) as sub, Publisher(rig, nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=60)  # the decoder is listening
            probes = probe_until_heard(pub, sub.recv, first_frames(session, 2))  # ... and we listen to it
            th = threading.Thread(target=replay, args=(session, pub), kwargs={"speed": 0}, daemon=True)
            th.start()
            frames = collect(sub, time.monotonic() + 60, want=150, leave_out=probes)
            th.join(30)
    finally:
        _, err = stop(dec)
    assert len(frames) == 150, err
    assert [f.seq for f in frames] == list(range(150))  # one final frame per source frame, in order
    movie = np.stack([f.frame for f in frames]).astype(np.float64)[30:]
    truth = session.stimulus[30:150].astype(np.float64)
    r = corr(movie.ravel(), truth.ravel())
    assert r > 0.1, r
    assert all(f.final and f.lag == 16 for f in frames[:-16])
    assert frames[-1].stats["frames_in"] == 150 + 2 * len(probes)  # the probes' two frames each came first


def test_builtin_model_replay_decode_record_then_replay_the_recording(tmp_path: Path) -> None:
    """No --model: the shipped encoder (ONNX Runtime, CPU here) on all 1,000 neurons of the example session;
    `neurocine record` writes the decoded stream, and `neurocine replay` plays that recording back bit for bit."""
    s = load_session(example_session_path(), trials=[0])  # offline, streaming lag 16 reaches r = 0.37 on it
    n = 150
    session = dataclasses.replace(s, traces=s.traces[:n], behaviour=s.behaviour[:n], stimulus=s.stimulus[:n],
                                  timestamps_ns=s.timestamps_ns[:n], trials=[])
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    rec_path = tmp_path / "decoded.ncr"
    recorder = subprocess.Popen([sys.executable, "-m", "neurocine", "record", "--decoded", "--connect", out, "--out",
                                 str(rec_path), "--frames", str(n)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dec = start_decoder(None, rig, out, "--lag", "16", "--steps", "2", "--every-step")
    try:
        with Publisher(rig, nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=60)
            # flat out with every step on every frame (the 30 Hz figure is `neurocine bench latency`'s job)
            replay(session, pub, speed=0)
        _, rec_err = recorder.communicate(timeout=120)
    finally:
        recorder.kill()
        out_text, err = stop(dec)
    from neurocine.streams.formats.native import read_recording

    (messages,) = read_recording(rec_path).decoded.values()  # one decoded session
    recorded = [as_decoded_frame(m) for m in messages]
    assert [f.seq for f in recorded] == list(range(n)), (rec_err, err)
    movie = np.stack([f.frame for f in recorded]).astype(np.float64)[30:]
    r = corr(movie.ravel(), session.stimulus[30:n].astype(np.float64).ravel())
    stats = json.loads(out_text)
    assert stats["provider"] == "CPUExecutionProvider", stats
    assert stats["decode"]["steps_run"] == 2 * n and stats["decode"]["steps_shed"] == 0, stats  # --every-step
    assert r > 0.2, (r, json.dumps(stats))

    # the recording replays as a decoded stream, message for message
    port = f"tcp://127.0.0.1:{free_port()}"
    player = subprocess.Popen([sys.executable, "-m", "neurocine", "replay", str(rec_path), "--bind", port,
                               "--speed", "0", "--wait-subscribers", "1"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Subscriber(port) as sub:
            again = collect(sub, time.monotonic() + 60, want=n)
        player_out, player_err = player.communicate(timeout=60)
    finally:
        player.kill()
    assert [f.seq for f in again] == list(range(n)), player_err
    pairs = zip(again, recorded, strict=True)
    assert all(np.array_equal(a.frame, b.frame) and a.t_done_ns == b.t_done_ns for a, b in pairs)
    assert json.loads(player_out)["replay"]["frames"] == n


def test_a_burst_is_absorbed_by_shedding_steps_not_by_queueing(small_mouse: Path) -> None:
    """300 frames flat out (~100x real time): every frame is decoded, in order, and the stats say steps were shed."""
    session = example_slice(300)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    dec = start_decoder(small_mouse, rig, out, "--lag", "8", "--steps", "4")
    try:
        with Subscriber(out) as sub, Publisher(rig, nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=60)
            probes = probe_until_heard(pub, sub.recv, first_frames(session, 2))
            replay(session, pub, speed=0)
            frames = collect(sub, time.monotonic() + 60, want=300, leave_out=probes)
    finally:
        out_text, err = stop(dec)
    assert [f.seq for f in frames] == list(range(300)), err
    stats = json.loads(out_text)["decode"]
    assert stats["steps_shed"] > 0 and stats["steps_run"] + stats["steps_shed"] == 4 * (300 + 2 * len(probes))
    assert stats["backlog_max"] > 1  # the burst did queue up, and was worked off without optimiser steps


def test_neuron_set_mismatch_is_refused_with_a_clear_message(small_mouse: Path) -> None:
    wrong = example_slice(60, ids_offset=100_000)  # ids the model has never seen
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    dec = start_decoder(small_mouse, rig, out, "--lag", "4", "--steps", "0")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(dec.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        with Subscriber(out) as sub, Publisher(rig, nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=60)
            replay(wrong, pub, speed=0)
            assert wait_for(lambda: any("REFUSED" in line for line in lines), timeout=60), lines
            frames = collect(sub, time.monotonic() + 1)
    finally:
        dec.terminate()
        dec.wait(30)
    assert frames == []
    refusal = next(line for line in lines if "REFUSED" in line)
    assert f"none of its {N} neuron ids occurs in the session" in refusal


def test_rig_killed_and_restarted_mid_stream_is_survived(small_mouse: Path) -> None:
    session = example_slice(90)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    dec = start_decoder(small_mouse, rig, out, "--lag", "4", "--steps", "1")
    seen: list[str] = []  # session ids of decoded frames, in arrival order
    try:
        with Subscriber(out) as sub:
            for _ in range(2):  # the first rig dies mid-stream (no `end`), a second one starts on the same port
                pub = Publisher(rig, nodrop=True)
                deadline = time.monotonic() + 60
                while pub.n_subscribers < 1 and time.monotonic() < deadline:
                    sub.recv(timeout_s=0.05)  # keep our own socket serviced while waiting
                stop_at = time.monotonic() + 1.5
                th = threading.Thread(target=replay, args=(session, pub),
                                      kwargs={"speed": 1.0, "should_stop": lambda t=stop_at: time.monotonic() > t},
                                      daemon=True)
                th.start()
                th.join(10)
                pub._sock.close(0)  # like kill -9: no end message, nothing flushed
                time.sleep(0.3)
                seen += [f.session_id for f in collect(sub, time.monotonic() + 1)]
            deadline = time.monotonic() + 60
            while len(set(seen)) < 2 and time.monotonic() < deadline:
                seen += [f.session_id for f in collect(sub, time.monotonic() + 1)]
    finally:
        out_text, err = stop(dec)
    assert len(set(seen)) == 2, (set(seen), err)  # frames of the second rig's session were decoded too
    switch = next(i for i, s in enumerate(seen) if s != seen[0])
    assert set(seen[switch:]) == {seen[switch]}  # once the new session starts, the old one is gone
    assert json.loads(out_text)["decode"]["sessions"] == 2
