"""`streams` and its CLI verbs work where torch and onnxruntime are absent (a rig's light install)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from neurocine.streams.formats import save_session
from tests.conftest import REPO, free_port, make_session

RUNNER = [sys.executable, str(REPO / "tests" / "run_without_heavy.py")]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*RUNNER, *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kw)


def test_blocker_really_blocks() -> None:
    for module in ("torch", "onnxruntime", "ray"):
        r = run("--try-import", module)
        assert r.returncode == 1 and "blocked" in r.stderr
    assert run("--try-import", "zmq").returncode == 0


def test_help_of_every_streams_verb_without_heavy_packages() -> None:
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for verb in ("replay", "record", "inspect", "bench"):
        assert verb in r.stdout
        h = run(verb, "--help")
        assert h.returncode == 0 and "example:" in h.stdout, h.stderr


def test_replay_and_record_without_heavy_packages(tmp_path: Path) -> None:
    save_session(make_session(n_frames=60), tmp_path / "s.ncr")
    ep = f"tcp://127.0.0.1:{free_port()}"
    rec = subprocess.Popen([*RUNNER, "record", "--connect", ep, "--out", str(tmp_path / "o.ncr"), "--until-end"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rep = run("replay", str(tmp_path / "s.ncr"), "--bind", ep, "--speed", "0", "--wait-subscribers", "1")
    out, err = rec.communicate(timeout=60)
    assert rep.returncode == 0, rep.stderr
    assert rec.returncode == 0, err
    assert json.loads(out)["record"]["frames"] == 60
    assert run("inspect", str(tmp_path / "o.ncr")).returncode == 0
