"""The spec is enough: a publisher written only from docs/protocol.md (tests/spec_publisher.py, no neurocine
import) is decoded by the real decode service with the built-in model, and read with the client API."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from neurocine.decoder.client import DecodedStream
from neurocine.streams.example import example_session_path
from neurocine.streams.formats import load_session
from tests.conftest import REPO, free_port
from tests.test_service import start_decoder, stop

SCRIPT = REPO / "tests" / "spec_publisher.py"


def test_spec_publisher_imports_nothing_of_neurocine() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"sys", "time", "uuid", "msgpack", "numpy", "zmq"}, imported


def test_a_publisher_written_from_the_spec_is_decoded(tmp_path: Path) -> None:
    n = 120
    s = load_session(example_session_path(), trials=[0])  # the built-in mouse, a held-out test movie
    np.save(tmp_path / "ids.npy", s.neuron_ids)
    np.save(tmp_path / "traces.npy", s.traces[:n])
    np.save(tmp_path / "behaviour.npy", s.behaviour[:n])
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    dec = start_decoder(None, rig, out, "--lag", "16", "--steps", "2")
    # 12 Hz: one shared CPU thread affords the steps asked (the 30 Hz figures are the benches' job)
    pub = subprocess.Popen([sys.executable, str(SCRIPT), rig, *(str(tmp_path / f) for f in
                            ("ids.npy", "traces.npy", "behaviour.npy")), s.mouse_id, "12"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frames = []
    try:
        with DecodedStream(out) as stream:  # final frames (the service's default output)
            session_id = pub.stdout.readline().strip()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len(frames) < n:
                f = stream.recv(timeout_s=0.2)
                if f is not None:
                    frames.append(f)
        _, pub_err = pub.communicate(timeout=30)
    finally:
        pub.kill()
        _, err = stop(dec)
    assert pub.returncode == 0, pub_err
    assert [f.seq for f in frames] == list(range(n)), err  # every frame, in order, incl. the lag flushed by `end`
    assert {f.session_id for f in frames} == {session_id} and frames[0].new_session
    assert all(f.final and f.t_acq_ns <= f.t_pub_ns <= f.t_done_ns <= f.t_recv_ns for f in frames)
    assert frames[-1].decoded.stats["malformed"] == 0 and frames[-1].decoded.stats["frames_in"] == n
    movie = np.stack([f.frame for f in frames]).astype(np.float64)[30:]
    r = np.corrcoef(movie.ravel(), s.stimulus[30:n].astype(np.float64).ravel())[0, 1]
    assert r > 0.1, r  # a picture of the stimulus, not noise
