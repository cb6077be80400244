"""Datasets written by `simulate`, the example session, the live rig's generator and the CLI."""

import filecmp
import socket
import threading

import numpy as np
import pytest

from neurocine.streams.synthetic import MouseStream, NaturalMovie, make_mouse, plan_trials, simulate_dataset
from neurocine.streams.synthetic.mouse import load_mouse
from neurocine.streams.synthetic.rig import first_frames, run_rig
from neurocine.streams.synthetic.simulate import SimulationError


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    kw = dict(n_neurons=40, n_trials=5, repeats=2, seed=3, movie_seed=1, progress=False)
    a = simulate_dataset(root / "a", **kw)
    b = simulate_dataset(root / "b", **kw)
    c = simulate_dataset(root / "c", **{**kw, "seed": 4})
    return a, b, c


def test_same_seed_gives_a_bit_identical_dataset(dataset):
    a, b, _ = dataset
    files = _files(a)
    assert files == _files(b) and any("responses" in str(f) for f in files)
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors


def test_other_seed_gives_another_mouse(dataset):
    a, _, c = dataset
    assert not np.array_equal(np.load(a / "data/responses/0.npy"), np.load(c / "data/responses/0.npy"))
    assert not np.allclose(load_mouse(a / "meta/mouse").neurons["rf_x"], load_mouse(c / "meta/mouse").neurons["rf_x"])


def test_dataset_loads_through_the_sensorium_reader(dataset):
    from neurocine.streams.formats import load_session

    a = dataset[0]
    s = load_session(a)
    assert s.n_neurons == 40 and s.n_frames == 5 * 300 and s.stimulus.shape == (1500, 36, 64)
    tiers = [t.tier for t in s.trials]
    assert tiers.count("train") == 1 and tiers.count("oracle") == 2 and tiers.count("final_test_main") == 2
    assert np.array_equal(s.neuron_ids, make_mouse(3, 40).neuron_ids)
    assert (s.traces >= 0).all() and np.isfinite(s.behaviour).all()
    test = s.select_trials(tier="final_test_main")
    assert np.array_equal(test.stimulus[:300], test.stimulus[300:])  # a repeated movie
    assert load_mouse(a / "meta" / "mouse").n_neurons == 40


def test_plan_has_repeats_and_rejects_impossible_sizes():
    plans = plan_trials(60, repeats=10)
    assert sum(p.tier == "final_test_main" for p in plans) == 10
    assert sorted(p.index for p in plans) == list(range(60))
    with pytest.raises(SimulationError, match="trials"):
        plan_trials(5, repeats=10)


def test_shipped_example_session_is_the_default_mouse_on_test_movies():
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats import load_session

    s = load_session(example_session_path())  # shipped in the package: missing is a failure
    assert s.source == "synthetic" and s.n_neurons == 1000 and len(s.trials) == 4
    assert {t.tier for t in s.trials} == {"final_test_main"} and s.stimulus.shape[1:] == (36, 64)
    assert np.array_equal(s.neuron_ids, make_mouse(0, 1000).neuron_ids)


def test_native_format(tmp_path):
    from neurocine.streams.formats import load_session

    path = simulate_dataset(tmp_path / "s", n_neurons=20, n_trials=3, repeats=1, fmt="native", progress=False)
    s = load_session(path)
    assert path.suffix == ".ncr" and s.n_frames == 900 and s.source == "synthetic"
    assert (tmp_path / "s.mouse" / "params.npz").is_file()


def test_rig_generator_is_the_mouse_stream_on_test_movies():
    traces, beh, stim = first_frames(20, n_neurons=30, seed=2, movie_seed=4)
    assert stim.shape == (20, 36, 64) and stim.dtype == np.uint8 and beh.shape == (20, 4)
    stream = MouseStream(make_mouse(2, 30), movie_seed=4)
    again = [stream.step(f) for f in NaturalMovie(4, "test").frames(20)]
    assert np.array_equal(traces, np.stack([f.traces for f in again]))
    other = first_frames(20, n_neurons=30, seed=2, movie_seed=5)[0]
    assert not np.array_equal(traces, other)


def test_rig_publishes_frames_with_the_stimulus():
    from neurocine.streams.protocol import Frame
    from neurocine.streams.transport import Subscriber

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    kw = dict(n_neurons=30, seed=2, movie_seed=4)
    thread = threading.Thread(target=run_rig, args=(endpoint,),
                              kwargs=dict(**kw, max_frames=6, verbose=False, wait_subscribers=1,
                                          wait_timeout_s=10))
    with Subscriber(endpoint) as sub:
        thread.start()
        got = []
        while len(got) < 6:
            msg = sub.recv(timeout_s=5)
            assert msg is not None, "rig sent nothing"
            if isinstance(msg, Frame):
                got.append(msg)
    thread.join(10)
    traces, _, stim = first_frames(6, **kw)
    assert [f.seq for f in got] == list(range(6))
    assert np.array_equal(np.stack([f.traces for f in got]), traces)
    assert np.array_equal(np.stack([f.stimulus for f in got]), stim)


def test_cli_help_has_examples():
    from neurocine.streams.cli import build_parser

    parser = build_parser()
    for verb in ("simulate", "rig"):
        sub = parser._subparsers._group_actions[0].choices[verb]
        assert "example" in sub.format_help()


def test_simulate_verb_writes_a_dataset(tmp_path, capsys):
    from neurocine.streams.cli import main

    out = tmp_path / "d"
    assert main(["simulate", "--out", str(out), "--trials", "3", "--repeats", "1", "--neurons", "10",
                 "--seed", "5", "--quiet"]) == 0
    assert (out / "meta" / "mouse" / "params.npz").is_file()
    assert load_mouse(out / "meta" / "mouse").seed == 5
    assert main(["simulate", "--out", str(out), "--trials", "3", "--neurons", "10", "--quiet"]) == 2
    assert "repeats" in capsys.readouterr().err


def test_bench_measure_reports_percentiles():
    from neurocine.streams.synthetic.bench import measure

    res = measure(20, 0.2)
    assert res["frames"] == 6 and set(res["ms_per_frame"]) == {"mean", "p50", "p95", "p99", "max"}
    assert isinstance(res["keeps_30hz"], bool)
