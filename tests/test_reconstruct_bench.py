"""`neurocine bench quality` end to end at a toy size: every group reports; JSON and figure are written."""

import argparse
import json

import numpy as np
import pytest

from neurocine.decoder.bench import quality as bench_quality


def test_bench_quality_toy_run(tmp_path, capsys):
    """The shipped encoders (built-in model + sibling seeds) on 50 of their 1,000 neurons: every group runs."""
    parser = argparse.ArgumentParser()
    bench_quality.register(parser.add_subparsers())
    out, fig = tmp_path / "q.json", tmp_path / "q.png"
    args = parser.parse_args(
        ["quality", "--neurons", "50", "--movies", "1", "--frames", "40", "--iterations", "2",
         "--lags", "2,8", "--steps", "1", "--default-lag", "8", "--default-steps", "1",
         "--json", str(out), "--figure", str(fig)]
    )  # fmt: skip
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["neurons"] == {"session": 50, "encoder": 1000, "matched": 50}
    assert result["backend"] == "onnx" and len(result["encoders"]) == 3
    groups = ("offline_1_paper_method", "offline_1", "offline_3", "offline_oracle", "streaming", "neuron_ablation")
    for key in (*groups, "offline_from_predicted_responses", "mask"):
        assert key in result, key
    for key in groups[:4]:
        assert np.isfinite(result[key]["pixel_correlation"]), key  # (corr clips to [-1, 1]: a range proves nothing)
        spread = result[key]["pixel_correlation_spread"]
        assert spread["n"] == 1 and spread["per_movie"] == [result[key]["pixel_correlation"]], key
        assert {"ssim", "psnr", "rmse", "pixel_correlation_unsmoothed"} <= set(result[key]), key
    paired = result["offline_1_paper_method"]["paired_vs_offline_1"]
    assert paired["per_movie"][0] == pytest.approx(
        result["offline_1_paper_method"]["pixel_correlation"] - result["offline_1"]["pixel_correlation"], abs=2e-4
    )
    assert [r["fraction"] for r in result["neuron_ablation"]] == [1.0, 0.5, 0.25, 0.125]
    assert [r["neurons"] for r in result["neuron_ablation"]] == [50, 25, 12, 6]
    assert {(r["lag"], r["steps"]) for r in result["streaming"]} == {(2, 1), (8, 1)}
    assert result["mask"]["eval_pixels"] > 0 and "with_mask" in result["mask"]
    cuts = result["cuts"]  # one 40-frame movie: its second half then its first, one cut at frame 20
    assert cuts["cuts"] == 1 and len(cuts["with_cut_rule"]["per_cut"]) == 1
    assert cuts["difference"] == pytest.approx(
        cuts["with_cut_rule"]["pixel_correlation"] - cuts["without_cut_rule"]["pixel_correlation"], abs=2e-4)
    assert cuts["with_cut_rule"] != cuts["without_cut_rule"]
    assert fig.stat().st_size > 10_000
