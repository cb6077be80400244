"""`neurocine batch` on a real local Ray cluster (2 CPUs): the serial `reconstruct`'s movies bit for bit,
crashed tasks retried, failures reported by name, resumed batches doing only the missing work."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from neurocine.decoder.cluster import cli as batch_cli  # noqa: E402
from neurocine.decoder.cluster.jobs import Unit, plan_units, run_unit, settings_of  # noqa: E402
from neurocine.decoder.cluster.runner import run_plan  # noqa: E402
from neurocine.decoder.reconstruct import cli as reconstruct_cli  # noqa: E402
from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR  # noqa: E402
from neurocine.streams.formats import save_session  # noqa: E402
from neurocine.streams.synthetic import TrialPlan, make_mouse, simulate_session  # noqa: E402
from tests.conftest import make_session  # noqa: E402

SETTINGS = ["--iterations", "2", "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    """One embedded 2-CPU Ray cluster for the module (starting one costs seconds)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 2-trial simulated session of the built-in model's mouse and a second encoder (perturbed copy)."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("batch")
    session = simulate_session(make_mouse(0, 200), [TrialPlan(k, "final_test_main", "test", k) for k in range(2)],
                               movie_seed=1, n_frames=40)
    path = folder / "s.ncr"
    save_session(session, path)
    other = folder / "other"
    shutil.copytree(DEFAULT_MODEL_DIR / "checkpoint", other)
    weights = load_file(other / "model.safetensors")
    key = next(k for k in sorted(weights) if k.startswith("readouts.") and k.endswith("position"))
    weights[key] = weights[key] + np.float32(0.05)
    save_file(weights, other / "model.safetensors")
    return path, [str(DEFAULT_MODEL_DIR), str(other)]


def _parse(register, verb: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args([verb, *argv])


def _batch(*argv: str, capsys) -> tuple[int, dict]:
    args = _parse(batch_cli.register, "batch", *argv, "--no-progress")
    code = args.func(args)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _serial(tmp_path: Path, session: Path, trial: int, models: list[str], capsys, mode=()) -> tuple[np.ndarray, dict]:
    out = tmp_path / f"serial{trial}.npy"
    argv = ["--session", str(session), "--trial", str(trial), *SETTINGS, *mode, "--out", str(out)]
    for m in models:
        argv += ["--model", m]
    args = _parse(reconstruct_cli.register, "reconstruct", *argv)
    assert args.func(args) == 0
    return np.load(out), json.loads(capsys.readouterr().out.strip().splitlines()[-1])


STREAMING = ["--mode", "streaming", "--lag", "4", "--steps", "1"]


# two encoders: the built-in folder (with graphs) and a perturbed checkpoint (none), so torch for both
@pytest.mark.parametrize(("n_models", "mode"), [(1, []),
                                               pytest.param(2, ["--backend", "torch"], marks=pytest.mark.slow),
                                               pytest.param(1, STREAMING, marks=pytest.mark.slow)])
def test_batch_equals_serial_reconstruct_bit_for_bit(data, tmp_path, capsys, n_models, mode):
    session, models = data
    models = models[:n_models]
    argv = ["--session", str(session), *SETTINGS, *mode, "--out", str(tmp_path / "b")]
    for m in models:
        argv += ["--model", m]
    code, summary = _batch(*argv, capsys=capsys)
    assert code == 0 and summary["failed"] == 0
    # per trial: one task, or offline with several encoders one per encoder and their average
    assert summary["done"] == (2 * 3 if n_models == 2 else 2)
    for trial in (0, 1):
        movie, metrics = _serial(tmp_path, session, trial, models, capsys, mode)
        batch_movie = np.load(tmp_path / "b" / "s" / f"trial{trial}.npy")
        assert batch_movie.dtype == np.uint8 and np.array_equal(batch_movie, movie)
        written = json.loads((tmp_path / "b" / "s" / f"trial{trial}.json").read_text())
        assert written["pixel_correlation"] == metrics["pixel_correlation"]
        assert written["response_correlation"] == metrics["response_correlation"]
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["done"] == summary["done"]


def crash_once(unit: Unit, settings: dict) -> dict:
    """Kills its own worker process the first time it runs a unit (a marker file remembers), then works."""
    marker = Path(unit.out) / f"crashed-{unit.trial}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(1)
    return run_unit(unit, settings)


def _settings(**kw) -> dict:
    """The batch verb's own defaults (every key a unit reads), with these changed."""
    defaults = settings_of(_parse(batch_cli.register, "batch", "--session", "s.ncr", "--out", "o"))
    return {**defaults, **dict(mode="offline", iterations=1, backend="torch", provider="cpu", threads=1), **kw}


def test_a_killed_task_is_retried_and_one_out_of_retries_is_reported_by_name(data, tmp_path):
    session, models = data
    plan = plan_units(str(session), "s", [0], models[:1], str(tmp_path / "a"), "trial")
    rows = run_plan(plan, _settings(), max_retries=1, progress=False, unit_fn=crash_once)
    assert [r["status"] for r in rows] == ["done"] and (tmp_path / "a" / "crashed-0").exists()
    assert (tmp_path / "a" / "s" / "trial0.json").is_file()

    plan = plan_units(str(session), "s", [0, 1], models[:1], str(tmp_path / "b"), "trial")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "crashed-1").touch()  # trial 1 will not crash; trial 0 crashes and has no retry left
    rows = {r["name"]: r for r in run_plan(plan, _settings(), max_retries=0, progress=False, unit_fn=crash_once)}
    assert rows["s/trial1"]["status"] == "done"
    assert rows["s/trial0"]["status"] == "failed" and "Crash" in rows["s/trial0"]["error"]


def logged(unit: Unit, settings: dict) -> dict:
    """run_unit that records which units ran."""
    with open(Path(unit.out) / "ran.log", "a") as f:
        f.write(unit.name + "\n")
    return run_unit(unit, settings)


@pytest.mark.slow  # two batches on Ray
def test_a_resumed_batch_does_only_the_missing_work(data, tmp_path):
    session, models = data
    out = tmp_path / "r"
    out.mkdir()
    plan = plan_units(str(session), "s", [0, 1], models, str(out), "member")
    rows = run_plan(plan, _settings(), progress=False, unit_fn=logged)
    assert sorted(r["status"] for r in rows) == ["done"] * 6
    first = {r["name"] for r in rows}
    before = np.load(out / "s" / "trial1.npy")
    # a crash in trial 1's average: its movie written, its metrics (the 'finished' mark) not yet; and a
    # crash while trial 0's second member wrote its movie: only a temporary file
    (out / "s" / "trial1.json").unlink()
    member = out / "s" / "members" / "trial0.m1.npy"
    member.rename(member.with_name(".trial0.m1.npy.tmp-1234"))
    (out / "s" / "trial0.json").unlink()
    (out / "ran.log").unlink()
    rows = run_plan(plan, _settings(), progress=False, unit_fn=logged)
    ran = sorted((out / "ran.log").read_text().split())
    assert ran == ["s/trial0/average", "s/trial0/other#1", "s/trial1/average"]
    status = {r["name"]: r["status"] for r in rows}
    assert status["s/trial0/default#0"] == "skipped" and {r["name"] for r in rows} == first
    assert np.array_equal(np.load(out / "s" / "trial1.npy"), before)
    assert json.loads((out / "s" / "trial0.json").read_text())["trial"] == 0


def test_bad_sessions_and_encoders_fail_their_tasks_and_the_rest_completes(data, tmp_path, capsys):
    session, models = data
    garbage = tmp_path / "garbage.ncr"
    garbage.write_bytes(b"not a session")
    strangers = tmp_path / "strangers.ncr"
    # the model's mouse, but ids the model lacks (another mouse is refused before: test_reconstruct_cli)
    save_session(dataclasses.replace(make_session(n_frames=40, n_neurons=30, n_trials=1), mouse_id="synthetic-0"),
                 strangers)
    out = tmp_path / "bad"
    argv = ["--sessions", str(session), str(garbage), str(strangers), "--trial", "10", "--trial", "0", *SETTINGS]
    code, summary = _batch(*argv, "--out", str(out), "--model", models[0], capsys=capsys)
    assert code == 1
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["s/trial0"]["status"] == "done" and rows["s/trial10"]["status"] == "failed"
    assert "no trial with index [10]" in rows["s/trial10"]["error"]
    assert "garbage.ncr" in rows["garbage/trial0"]["error"]
    assert "none of its 1000 neuron ids occurs in the session" in rows["strangers/trial10"]["error"]
    assert set(summary["failed_names"]) == {"s/trial10", "garbage/trial0", "garbage/trial10",
                                            "strangers/trial0", "strangers/trial10"}
    assert (out / "s" / "trial0.json").is_file()
    # a resumed batch with other settings is refused, not mixed with these outputs
    code = _parse(batch_cli.register, "batch", "--session", str(session), "--iterations", "3", "--out", str(out))
    assert code.func(code) == 2 and "other settings" in capsys.readouterr().err


@pytest.mark.slow  # trains and exports two encoders on Ray
def test_train_seeds_fans_out_one_model_folder_per_seed_each_exported(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from neurocine.decoder.encoder import cli as encoder_cli
    from neurocine.decoder.encoder.train import train
    from tests.test_encoder_train import write_mouse

    mouse = write_mouse(tmp_path / "mouse_a", 1)
    tiny = ["--data", str(mouse), "--preset", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
            "--threads", "1"]
    args = _parse(encoder_cli.register_train, "train", *tiny, "--out", str(tmp_path / "ens"), "--seeds", "0,1",
                  "--export-graphs", "forward")
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 2 and [r["name"] for r in summary["rows"]] == ["seed0", "seed1"]
    for seed in (0, 1):
        assert (tmp_path / "ens" / f"seed{seed}" / "onnx" / "mouse_a" / "forward.onnx").is_file()
    a, b = (load_file(tmp_path / "ens" / f"seed{s}" / "model.safetensors") for s in (0, 1))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different members
    # each member is the serial `neurocine train --seed k`, bit for bit
    serial = _parse(encoder_cli.register_train, "train", *tiny, "--out", str(tmp_path / "one"), "--seed", "1",
                    "--no-progress")
    train(encoder_cli.train_options(serial))
    c = load_file(tmp_path / "one" / "model.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b)
    bad = _parse(encoder_cli.register_train, "train", *tiny, "--out", str(tmp_path / "x"), "--seeds", "0,0")
    assert bad.func(bad) == 2 and "distinct" in capsys.readouterr().err


def test_extrapolation_counts_waves_of_member_tasks_per_gpu_and_merges_per_cpu():
    from neurocine.decoder.bench.batch import extrapolate

    rows = extrapolate(100.0, 10.0, 1.0, sessions=10, trials=4, encoders=7, gpus_per_node=8, cpus_per_node=32,
                       nodes=(1, 2, 35))
    # 280 member tasks: 35 waves on 8 GPUs, 18 on 16, 1 on 280; 40 merges: 2 waves on 32 CPUs, then 1
    assert [r["hours"] for r in rows] == [round((35 * 101 + 2 * 11) / 3600, 3), round((18 * 101 + 11) / 3600, 3),
                                          round((101 + 11) / 3600, 3)]


@pytest.mark.slow  # a batch subprocess joining Ray
def test_the_cli_joins_an_existing_cluster_with_address(data, tmp_path):
    """`neurocine batch --address` as a user runs it: a second driver on the running cluster, nothing started."""
    from tests.conftest import neurocine

    session, models = data
    address = ray.get_runtime_context().gcs_address
    proc = neurocine("batch", "--address", address, "--session", str(session), "--trial", "1", "--model", models[0],
                     "--iterations", "1", "--no-progress", "--out", str(tmp_path / "c"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)  # stdout holds the summary alone; logs and progress go to stderr
    assert summary["done"] == 1 and summary["rows"][0]["name"] == "s/trial1"
    assert np.load(tmp_path / "c" / "s" / "trial1.npy").shape == (40, 36, 64)
    assert "Started a local Ray instance" not in err


def test_sigterm_stops_the_batch_cleanly_with_a_resume_hint(data, tmp_path):
    """scancel / systemctl stop send SIGTERM: the driver stops like Ctrl-C (exit 130), not killed by Ray."""
    import signal

    from tests.conftest import neurocine

    session, models = data
    proc = neurocine("batch", "--address", ray.get_runtime_context().gcs_address, "--session", str(session),
                     "--trial", "0", "--model", models[0], "--iterations", "100000", "--out", str(tmp_path / "t"))
    seen = ""
    while "batch:" not in seen:  # the progress bar starts once the handler is in place
        seen += proc.stderr.read(1) or "EOF"
        assert not seen.endswith("EOF"), seen
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "rerun the same command to resume" in err and out == ""
    assert not (tmp_path / "t" / "s" / "trial0.json").exists()
