"""The rig-side API (neurocine.streams.publish) and the folder bridge (`neurocine bridge`), real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from neurocine.streams.protocol import End, Frame, Heartbeat, SessionHeader
from neurocine.streams.publish import RigPublisher
from neurocine.streams.transport import Subscriber
from tests.conftest import REPO, free_port


def collect(sub: Subscriber, until, timeout: float = 10.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(out):
        m = sub.recv(timeout_s=0.2)
        if m is not None:
            out.append(m)
    return out


def test_publisher_numbers_frames_sends_headers_heartbeats_and_restarts() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    ids = np.array([7, 3, 99, 12], np.int64)
    rng = np.random.default_rng(0)
    with Subscriber(ep) as sub, RigPublisher(ep, ids, 30.0, "M1") as rig:
        assert rig.wait_subscribers(1, 10)
        first = rig.session_id
        sent = [rng.random(4).astype(np.float32) for _ in range(5)]
        for k, tr in enumerate(sent):
            assert rig.publish(tr, behaviour=None if k else [1, 2, 3, 4], t_acq_ns=1000 + k) == k
        with pytest.raises(ValueError, match="frame 5: traces have shape"):
            rig.publish(np.zeros(3))
        with pytest.raises(ValueError, match="frame 5: traces hold 1 infinite"):
            rig.publish(np.array([0, np.inf, 0, 0]))
        got = collect(sub, lambda o: any(isinstance(m, Heartbeat) and m.last_seq == 4 for m in o))
        frames = [m for m in got if isinstance(m, Frame)]
        assert [f.seq for f in frames] == [0, 1, 2, 3, 4]  # bad frames were not sent and took no number
        assert all(np.array_equal(f.traces, s) for f, s in zip(frames, sent, strict=True))
        assert frames[0].behaviour.tolist() == [1, 2, 3, 4] and np.isnan(frames[1].behaviour).all()
        assert frames[2].t_acq_ns == 1002
        header = next(m for m in got if isinstance(m, SessionHeader))
        assert header.session_id == first and got.index(header) < got.index(frames[0])
        assert header.neuron_ids.tolist() == [7, 3, 99, 12] and header.source == "rig"
        # a heartbeat came while the loop was idle: the background thread sent it
        assert any(isinstance(m, Heartbeat) and m.session_id == first for m in got)

        second = rig.restart(neuron_ids=[1, 2])
        assert second != first
        rig.publish([5.0, 6.0])
        got = collect(sub, lambda o: any(isinstance(m, Frame) for m in o))
        ends = [m for m in got if isinstance(m, End)]
        assert ends and ends[0].session_id == first and ends[0].n_frames == 5
        new = [m for m in got if isinstance(m, Frame)]
        assert new[0].session_id == second and new[0].seq == 0 and new[0].traces.tolist() == [5.0, 6.0]
        assert sub.stats.malformed == 0


def test_publisher_refuses_bad_construction() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match="not unique"):
        RigPublisher(ep, [1, 1], 30.0, "M1")
    with pytest.raises(ValueError, match="frame_rate"):
        RigPublisher(ep, [1, 2], 0.0, "M1")


def write_slowly(path: Path, arr: np.ndarray, pause: float) -> None:
    """Write an .npy in two halves with a pause, as a pipeline that is still writing would."""
    tmp = path.parent / "buffer.bin"
    np.save(tmp.with_suffix(".npy"), arr)
    data = (tmp.with_suffix(".npy")).read_bytes()
    tmp.with_suffix(".npy").unlink()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(pause)
        f.write(data[len(data) // 2 :])


def test_bridge_publishes_trials_as_the_pipeline_writes_them(tmp_path: Path) -> None:
    folder = tmp_path / "responses"
    folder.mkdir()
    ids = np.arange(100, 106, dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    rng = np.random.default_rng(1)
    trials = [rng.gamma(0.5, 1.0, (6, n)).astype(np.float32) for n in (7, 5, 9)]  # (N, T) per trial
    ep = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(ep)
    bridge = subprocess.Popen([sys.executable, "-m", "neurocine", "bridge", str(folder), "--neuron-ids",
                               str(tmp_path / "ids.npy"), "--mouse", "M7", "--rate", "200", "--bind", ep,
                               "--wait-subscribers", "1"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def pipeline() -> None:
        np.save(folder / "1.npy", trials[0])
        time.sleep(0.3)
        np.save(folder / "2.npy", np.zeros((5, 4), np.float32))  # wrong number of neurons: skipped
        write_slowly(folder / "10.npy", trials[2], pause=0.6)  # a file still being written
        time.sleep(0.5)
        np.save(folder / "3.npy", trials[1])  # appears after 10 was published: comes after it
        time.sleep(0.3)
        (folder / "DONE").touch()

    writer = threading.Thread(target=pipeline)
    try:
        writer.start()
        got = collect(sub, lambda o: any(isinstance(m, End) for m in o), timeout=30)
        out, err = bridge.communicate(timeout=30)
    finally:
        writer.join(10)
        bridge.kill()
        sub.close()
    assert bridge.returncode == 0, err
    summary = json.loads(out)["bridge"]
    assert summary["files"] == 3 and summary["frames"] == 21
    assert "2.npy: 5 neurons per frame, the session has 6" in summary["skipped"]["2.npy"]
    frames = [m for m in got if isinstance(m, Frame)]
    assert [f.seq for f in frames] == list(range(21))
    # 3.npy appeared after 10.npy was being published, so it normally comes after it; a scan that is slow enough
    # (a loaded machine) sees both finished and publishes them in number order: either way whole trials, in order
    got_traces = np.stack([f.traces for f in frames])
    orders = ([trials[0].T, trials[2].T, trials[1].T], [trials[0].T, trials[1].T, trials[2].T])
    assert any(np.array_equal(got_traces, np.concatenate(o)) for o in orders)
    header = next(m for m in got if isinstance(m, SessionHeader))
    assert header.mouse_id == "M7" and header.neuron_ids.tolist() == ids.tolist()
