"""replay -> record -> replay -> record over real TCP loopback, with the real CLI, for every format."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurocine.streams.formats import load_session, save_session
from neurocine.streams.protocol import Frame, SessionHeader
from neurocine.streams.transport import Subscriber
from tests.conftest import REPO, assert_sessions_equal, free_port, make_session, wait_for


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocine", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def replay_into_recorder(src: Path, out: Path, *extra: str) -> dict:
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    rec = subprocess.Popen([sys.executable, "-m", "neurocine", "record", "--connect", ep, "--out", str(out),
                            "--until-end"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rep = cli("replay", str(src), "--bind", ep, "--speed", "0", "--wait-subscribers", "1", *extra)
    assert rep.returncode == 0, rep.stderr
    stdout, stderr = rec.communicate(timeout=60)
    assert rec.returncode == 0, stderr
    report = json.loads(rep.stdout)["replay"]
    summary = json.loads(stdout)["record"]
    assert summary["frames"] == report["frames"] and summary["gaps"] == 0 and summary["malformed"] == 0
    return summary


@pytest.mark.parametrize("fmt", ["ncr", "nwb", "sensorium"])
def test_replay_record_twice_is_bit_identical(tmp_path: Path, fmt: str) -> None:
    original = make_session(n_frames=120, n_neurons=60, nan_fraction=0.01, seed=3)
    src = tmp_path / ("src" if fmt == "sensorium" else f"src.{fmt}")
    save_session(original, src)
    first = load_session(src)
    replay_into_recorder(src, tmp_path / "a.ncr")
    replay_into_recorder(tmp_path / "a.ncr", tmp_path / "b.ncr")
    replay_into_recorder(tmp_path / "b.ncr", tmp_path / "c.nwb")
    a, b, c = (load_session(tmp_path / n) for n in ("a.ncr", "b.ncr", "c.nwb"))
    for s in (a, b, c):
        assert_sessions_equal(first, s, timestamps=False)
        assert [t.index for t in s.trials] == [t.index for t in first.trials]
        assert [t.tier for t in s.trials] == [t.tier for t in first.trials]
    assert_sessions_equal(a, b)  # acquisition timestamps survive a replay of a recording exactly
    assert_sessions_equal(b, c)


def test_replay_selects_trials_and_tiers(tmp_path: Path) -> None:
    save_session(make_session(n_frames=90, n_trials=3), tmp_path / "s.ncr")
    summary = replay_into_recorder(tmp_path / "s.ncr", tmp_path / "o.ncr", "--trials", "10,12")
    assert summary["frames"] == 60
    assert [t.index for t in load_session(tmp_path / "o.ncr").trials] == [10, 12]


def test_bad_paths_give_clear_errors(tmp_path: Path) -> None:
    r = cli("replay", str(tmp_path / "missing.ncr"), "--speed", "0")
    assert r.returncode == 2 and "missing.ncr: no such file" in r.stderr
    (tmp_path / "junk.ncr").write_bytes(b"junk")
    r = cli("replay", str(tmp_path / "junk.ncr"), "--speed", "0")
    assert r.returncode == 2 and "not a neurocine recording" in r.stderr
    r = cli("record", "--out", str(tmp_path / "x.txt"), "--seconds", "0.1")
    assert r.returncode == 2 and "use a .ncr or .nwb" in r.stderr


def test_every_verb_has_help_with_an_example() -> None:
    from neurocine.streams.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert {"replay", "record", "bench", "inspect"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert "example:" in p.format_help(), name


def test_subscriber_started_three_seconds_into_a_replay_decodes_within_a_second(tmp_path: Path) -> None:
    save_session(make_session(n_frames=300, n_neurons=200, n_trials=1), tmp_path / "s.ncr")
    ep = f"tcp://127.0.0.1:{free_port()}"
    rep = subprocess.Popen([sys.executable, "-m", "neurocine", "replay", str(tmp_path / "s.ncr"), "--bind", ep,
                            "--speed", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Subscriber(ep) as early:  # the replay is 3 s into its stream (a loaded machine starts it late)
            assert wait_for(lambda: isinstance(m := early.recv(timeout_s=0.1), Frame) and m.seq >= 90, timeout=60)
        t_join = time.monotonic()
        session_after = None
        frames: list[Frame] = []
        with Subscriber(ep) as sub:
            while time.monotonic() - t_join < 2.5:
                m = sub.recv(timeout_s=0.1)
                if isinstance(m, SessionHeader) and session_after is None:
                    session_after = time.monotonic() - t_join
                elif isinstance(m, Frame):
                    frames.append(m)
            st = sub.stats
    finally:
        rep.terminate()
        rep.communicate(timeout=20)
    assert session_after is not None and session_after <= 1.0
    assert frames and frames[0].seq >= 60  # joined mid-stream...
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))  # ...and lost nothing
    assert len(frames) >= 30 and st.gaps == 0 and st.malformed == 0


def _frames_in(path: Path) -> int:
    from neurocine.streams.formats.native import read_recording

    if not path.exists():
        return 0
    return sum(len(v) for v in read_recording(path).frames.values())


def test_record_ctrl_c_prints_summary_and_keeps_the_file(tmp_path: Path) -> None:
    save_session(make_session(n_frames=300, n_neurons=50, n_trials=1), tmp_path / "s.ncr")
    ep = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "o.ncr"
    # a test runner started in the background (nohup, `&`) ignores SIGINT, and children inherit that; the user's
    # terminal does not, so the recorder gets SIGINT's default disposition back (Python then raises Ctrl-C)
    rec = subprocess.Popen([sys.executable, "-m", "neurocine", "record", "--connect", ep, "--out", str(out)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rep = subprocess.Popen([sys.executable, "-m", "neurocine", "replay", str(tmp_path / "s.ncr"), "--bind", ep,
                            "--speed", "1", "--wait-subscribers", "1"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _frames_in(out) >= 30, timeout=30)
        rec.send_signal(signal.SIGINT)
        stdout, _ = rec.communicate(timeout=20)
    finally:
        rep.terminate()
        rep.communicate(timeout=20)
    summary = json.loads(stdout)["record"]
    assert rec.returncode == 0 and summary["stopped_by"] == "interrupt"
    assert summary["frames"] == load_session(out).n_frames >= 30


def test_replay_loop_continues_the_session(tmp_path: Path) -> None:
    save_session(make_session(n_frames=30, n_neurons=20, n_trials=1), tmp_path / "s.ncr")
    ep = f"tcp://127.0.0.1:{free_port()}"
    rep = subprocess.Popen([sys.executable, "-m", "neurocine", "replay", str(tmp_path / "s.ncr"), "--bind", ep,
                            "--speed", "0", "--loop", "--wait-subscribers", "1"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = cli("record", "--connect", ep, "--out", str(tmp_path / "o.ncr"), "--frames", "75")
    finally:
        rep.terminate()
        out, _ = rep.communicate(timeout=20)
    assert r.returncode == 0, r.stderr
    assert json.loads(out)["replay"]["interrupted"] is True
    got = load_session(tmp_path / "o.ncr")
    assert got.n_frames == 75
    assert np.all(np.diff(got.timestamps_ns) > 0)  # acquisition time goes on across loops
    src = load_session(tmp_path / "s.ncr")
    assert got.traces[30:60].tobytes() == src.traces.tobytes()
