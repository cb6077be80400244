"""The resolution analysis: its stimuli, its per-cell scoring and shuffle test, and the bench at a toy size."""

import argparse
import json

import numpy as np
import pytest

from neurocine.decoder.analysis.resolution import cut, grid, score_cells
from neurocine.decoder.bench import resolution as bench_resolution
from neurocine.streams.synthetic.resolution import grating_clips, noise_clips, programme
from neurocine.streams.synthetic.stimuli import StimulusError


def test_noise_clips_cells_draws_and_inverted_copies():
    clips = noise_clips([0, 4], [2], instances=2, n_frames=10)
    assert [(c.cell, c.instance, c.inverted) for c in clips] == [
        ((0.0, 2.0), 0, False), ((0.0, 2.0), 0, True), ((0.0, 2.0), 1, False), ((0.0, 2.0), 1, True),
        ((4.0, 2.0), 0, False), ((4.0, 2.0), 0, True), ((4.0, 2.0), 1, False), ((4.0, 2.0), 1, True),
    ]  # fmt: skip
    assert all(c.frames.shape == (10, 36, 64) and c.frames.dtype == np.uint8 for c in clips)
    np.testing.assert_array_equal(clips[1].frames, 255 - clips[0].frames)
    assert not np.array_equal(clips[0].frames, clips[2].frames)  # draws differ
    np.testing.assert_array_equal(noise_clips([4], [2], 1, 10)[0].frames, clips[4].frames)  # seeded
    with pytest.raises(StimulusError, match="instances"):
        noise_clips([0], [0], instances=0)


def test_gratings_are_in_cycles_per_pixel_and_hz():
    (fine,) = grating_clips([0.5], [0.0], [0.0], n_frames=3)
    x = fine.frames[0, 0].astype(float) - 127.5
    assert np.all(x[:-1] * x[1:] <= 0)  # 0.5 cycles/px: neighbours alternate sign
    (flicker,) = grating_clips([0.0625], [15.0], [90.0], n_frames=3)
    f = flicker.frames.astype(float) - 127.5
    np.testing.assert_allclose(f[1], -f[0], atol=1.0)  # 15 Hz at 30 Hz: the sign flips every frame
    (coarse,) = grating_clips([0.0625], [0.0], [0.0], n_frames=2)
    row = coarse.frames[0, 0].astype(float)
    assert np.argmax(np.abs(np.fft.rfft(row - row.mean()))) == 4  # 64 px x 0.0625 = 4 cycles


def test_programme_lays_clips_with_grey_between():
    clips = noise_clips([1], [1], 1, n_frames=5)
    movie, starts = programme(clips, lead=3, gap=2)
    assert movie.shape == (3 + 2 * (5 + 2), 36, 64) and starts == [3, 10]
    np.testing.assert_array_equal(movie[10:15], clips[1].frames)
    assert (movie[:3] == 128).all() and (movie[8:10] == 128).all()


def test_score_cells_perfect_inverted_and_shuffle():
    clips = noise_clips([4], [4], instances=3, n_frames=12)
    recons = [c.frames.astype(float) for c in clips]
    cells = score_cells(clips, recons, None)
    row = cells[("noise", 4.0, 4.0)]
    assert row["r"] == pytest.approx(1.0) and row["r_inverted"] == pytest.approx(1.0)
    assert row["inverted_vs_original"] == pytest.approx(-1.0) and row["recon_vs_inverted_recon"] == pytest.approx(-1.0)
    assert row["beats_shuffle"] == 1.0 and row["nulls_per_clip"] == 4 and abs(row["null_mean"]) < 0.5
    assert grid(cells, "noise", [4, 8], [4]) == [[row["r"]], [None]]
    # a reconstruction that ignores the stimulus is at chance and does not beat the shuffle
    grey = [np.full_like(r, 127.5) + np.random.default_rng(k).normal(0, 1, r.shape) for k, r in enumerate(recons)]
    row = score_cells(clips, grey, None)[("noise", 4.0, 4.0)]
    assert abs(row["r"]) < 0.1 and row["beats_shuffle"] < 1.0
    with pytest.raises(ValueError, match="reconstructions"):
        score_cells(clips, recons[:-1], None)


def test_cut_smooths_the_programme_then_slices():
    video = np.zeros((20, 4, 4))
    video[10] = 1.0
    (a,) = cut(video, [8], 5, sigma=0.0)
    np.testing.assert_array_equal(a, video[8:13])
    (b,) = cut(video, [8], 5, sigma=0.5)
    assert 0 < b[2].mean() < 1 and b[1].mean() > 0  # smoothed over time, across the clip's own frames


def test_bench_resolution_toy_run(tmp_path, capsys):
    """Built-in model, predicted activity, one noise cell and one grating cell, 3 iterations."""
    parser = argparse.ArgumentParser()
    bench_resolution.register(parser.add_subparsers())
    out, fig = tmp_path / "r.json", tmp_path / "r.png"
    args = parser.parse_args(
        ["resolution", "--sources", "predicted", "--spatial", "4", "--temporal", "8", "--sf", "0.0625",
         "--tf", "0", "--directions", "0,90", "--iterations", "3", "--gap", "4", "--json", str(out),
         "--figure", str(fig)]
    )  # fmt: skip
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    noise = result["sources"]["predicted"]["noise"]
    (cell,) = noise["cells"]
    assert cell["clips"] == 4 and noise["r"] == [[cell["r"]]]
    # a coarse, slow noise clip is recovered, and its inverted copy comes out anti-correlated with it
    assert cell["r"] > 0.1 and cell["inverted_vs_original"] < -0.1
    assert result["sources"]["predicted"]["gratings"]["cells"][0]["clips"] == 2
    assert result["mask"]["scored"] > 0 and fig.stat().st_size > 10_000
