"""`neurocine bench quality` end to end at a toy size: every group reports; JSON and figure are written."""

import argparse
import json

import pytest
import torch

from decoder import bench_quality


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on a shared 2-core machine, torch's spinning worker threads slow everything down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bench_quality_toy_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench_quality.register(parser.add_subparsers())
    out, fig = tmp_path / "q.json", tmp_path / "q.png"
    args = parser.parse_args(
        ["quality", "--neurons", "50", "--movies", "1", "--frames", "36", "--iterations", "2",
         "--ensemble", "2", "--lags", "2,8", "--steps", "1", "--default-lag", "8", "--default-steps", "1",
         "--skip", "mask", "--json", str(out), "--figure", str(fig)]
    )  # fmt: skip
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    groups = ("offline_oracle", "offline_imperfect_1", "offline_imperfect_2", "streaming", "neuron_ablation")
    for key in (*groups, "offline_from_predicted_responses"):
        assert key in result, key
    assert [r["fraction"] for r in result["neuron_ablation"]] == [1.0, 0.5, 0.25, 0.125]
    assert {(r["lag"], r["steps"]) for r in result["streaming"]} == {(2, 1), (8, 1)}
    assert fig.stat().st_size > 10_000
