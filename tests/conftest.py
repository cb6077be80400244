"""Shared fixtures: small seeded sessions and real loopback endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurocine.streams.session import Session, Trial, regular_timestamps

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def make_session(
    n_frames: int = 90, n_neurons: int = 40, *, stimulus: bool = True, n_trials: int = 3, seed: int = 0,
    nan_fraction: float = 0.0,
) -> Session:
    """A random but valid session: gamma-distributed traces, smooth behaviour, uint8 stimulus."""
    rng = np.random.default_rng(seed)
    traces = rng.gamma(0.5, 1.0, (n_frames, n_neurons)).astype(np.float32)
    if nan_fraction:
        traces[rng.random(traces.shape) < nan_fraction] = np.nan
    behaviour = np.cumsum(rng.normal(0, 0.1, (n_frames, 4)), axis=0).astype(np.float32)
    stim = rng.integers(0, 256, (n_frames, 36, 64), dtype=np.uint8) if stimulus else None
    bounds = np.linspace(0, n_frames, n_trials + 1).astype(int)
    tiers = ["train", "oracle", "final_test_main"]
    trials = [Trial(10 + k, int(bounds[k]), int(bounds[k + 1]), tiers[k % 3]) for k in range(n_trials)]
    ids = rng.choice(10_000_000, n_neurons, replace=False).astype(np.int64)
    return Session(traces, behaviour, regular_timestamps(n_frames, 30.0, 1_000_000_000), ids, 30.0,
                   "mouse-test", stim, trials, source="replay", start_time_ns=1_700_000_000_000_000_000)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """One torch thread for every test that has torch loaded: on a small shared machine torch's spinning
    worker threads make the small convolutions of these models 10-40x slower than one thread. Torch is not
    imported here, so the light `streams` tests run where it is not installed."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Each test body starts in the default floating-point environment (after its fixtures, which may have built
    the process's first ONNX Runtime session)."""
    _default_float_environment()


def _default_float_environment() -> None:
    """Subnormal floats as IEEE 754 has them, for every test. Why: the first ONNX Runtime session a process builds
    with denormal-as-zero (backends.ort_session asks for it: subnormals cost ~100x on a CPU) sets flush-to-zero on
    that thread for good, and hypothesis then refuses to draw floats: a test would pass or fail by which test its
    worker ran first. glibc's fesetenv(FE_DFL_ENV) restores the default (FE_DFL_ENV is (fenv_t *) -1 there)."""
    if not sys.platform.startswith("linux") or np.float64(2.2250738585072014e-308) / 2 != 0:
        return  # subnormals work (the usual case)
    import ctypes
    import ctypes.util

    ctypes.CDLL(ctypes.util.find_library("m")).fesetenv(ctypes.c_void_p(-1))


@pytest.fixture(scope="session", autouse=True)
def verb_logging() -> None:
    """The verbs' log lines on stderr, as `neurocine` sets them up (tests call some verbs in-process)."""
    from neurocine.streams.commandline import configure_logging

    configure_logging("info")


@pytest.fixture(scope="session")
def small_mouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic mouse cut to its first 200 neurons, saved as a model folder (the service tests'
    torch model: small enough to decode flat out)."""
    from neurocine.streams.synthetic.mouse import make_mouse

    folder = tmp_path_factory.mktemp("mouse") / "mouse"
    make_mouse(0, 1000).subset(200).save(folder)
    return folder


@pytest.fixture
def session() -> Session:
    return make_session()


def neurocine(*args: str, **kw) -> subprocess.Popen:
    """Start the real CLI in a subprocess (as a user would)."""
    return subprocess.Popen([sys.executable, "-m", "neurocine", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range (32768+).

    A subscriber reconnecting to a dead ephemeral port can end up connected to itself (TCP
    self-connect) and hold the port, so tests that restart a publisher use ports outside that range.
    """
    import random
    import socket

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def noise_free_movie(mouse, frames: int, movie: int = 1, behaviour: int = 3, tier: str = "test") -> tuple:
    """(video, behaviour, the mouse's noise-free responses as float32) for one natural movie of the synthetic mouse:
    the reconstruction tests' input, where only the optimiser can be wrong."""
    from neurocine.streams.synthetic import BehaviourGenerator, expected_activity, natural_movie

    video = natural_movie(frames, movie, tier)
    beh = BehaviourGenerator(behaviour).frames(frames)
    return video, beh, expected_activity(mouse, video, beh).astype(np.float32)


def probe_until_heard(pub, recv, session: Session, timeout: float = 60.0) -> set[str]:
    """Replay `session` (a few frames) on `pub` until `recv(timeout_s=...)` returns something; the ids of the
    probe sessions replayed.

    A decoder publishes as soon as it decodes, and a subscriber that joins later misses those frames: a test
    that counts every decoded frame of a session starts it only once the whole chain (rig -> decoder -> us)
    is known to be connected. Each replay is a new session, and more of their frames may still come: leave
    those sessions out of what is counted."""
    from neurocine.streams.replay import replay

    deadline = time.monotonic() + timeout
    probes: set[str] = set()
    while recv(timeout_s=0.5) is None:
        assert time.monotonic() < deadline, f"nothing came back after {len(probes)} replays of the probe session"
        probes.add(replay(session, pub, speed=0).session_id)
    return probes


def first_frames(session: Session, n: int) -> Session:
    """The first n frames of `session` as one session without trials."""
    import dataclasses

    stim = None if session.stimulus is None else session.stimulus[:n]
    return dataclasses.replace(session, traces=session.traces[:n], behaviour=session.behaviour[:n], stimulus=stim,
                               timestamps_ns=session.timestamps_ns[:n], trials=[])


def assert_sessions_equal(a: Session, b: Session, *, timestamps: bool = True) -> None:
    """Bit-identical data (NaN compared as equal bit patterns)."""
    assert a.traces.shape == b.traces.shape
    assert a.traces.tobytes() == b.traces.tobytes()
    assert a.behaviour.tobytes() == b.behaviour.tobytes()
    assert np.array_equal(a.neuron_ids, b.neuron_ids)
    if a.stimulus is None:
        assert b.stimulus is None
    else:
        assert b.stimulus is not None and a.stimulus.tobytes() == b.stimulus.tobytes()
    if timestamps:
        assert np.array_equal(a.timestamps_ns, b.timestamps_ns)


# Fuzz tests explore new examples on every run (CI included): a fixed seed would re-test the same inputs
# forever. A failure prints its reproduction blob (@reproduce_failure). HYPOTHESIS_PROFILE=fixed derandomizes
# (the same examples each run) for local bisecting.
from hypothesis import settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("random", derandomize=False, print_blob=True)
_hyp_settings.register_profile("fixed", derandomize=True, print_blob=True)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "random"))
