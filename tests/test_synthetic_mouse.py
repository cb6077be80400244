"""The ground-truth mouse: seeds, saving, model equivalences and its designed statistics."""

import numpy as np
import pytest

from neurocine.streams.synthetic import (
    BehaviourGenerator,
    MouseStream,
    expected_activity,
    gaussian_noise_movie,
    load_mouse,
    make_mouse,
    natural_movie,
)
from neurocine.streams.synthetic.mouse import MouseError
from neurocine.streams.synthetic.simulate import TrialPlan, simulate_trials


def test_same_seed_same_mouse_and_other_seed_other_mouse():
    a, b, c = make_mouse(1, 50), make_mouse(1, 50), make_mouse(2, 50)
    for k in a.neurons:
        assert np.array_equal(a.neurons[k], b.neurons[k]), k
    assert not np.allclose(a.neurons["rf_x"], c.neurons["rf_x"])
    assert not np.allclose(a.spatial_filters(), c.spatial_filters())


def test_small_mouse_is_the_first_neurons_of_a_big_one():
    small, big = make_mouse(0, 300), make_mouse(0, 1200)
    assert np.array_equal(small.spatial_filters(), big.spatial_filters()[np.r_[0:300, 1200:1500]])
    assert np.array_equal(big.subset(300).neurons["threshold"], small.neurons["threshold"])


def test_mouse_design_facts():
    m = make_mouse(0, 1000)
    p = m.neurons
    assert 0.25 < 1 - p["is_complex"].mean() < 0.42  # about a third simple
    assert 0.02 < np.median(p["sf_cpd"]) < 0.06
    size_deg = 2 * p["sigma_px"] * m.deg_per_px
    assert size_deg.min() >= 10 - 1e-9 and size_deg.max() <= 20 + 1e-9
    w = m.spatial_filters()
    assert w.shape == (2000, 36 * 64) and w.dtype == np.float32
    assert np.allclose(np.linalg.norm(w, axis=1), 1, atol=1e-4)
    assert np.abs(w.sum(axis=1)).max() < 1e-3  # no response to uniform luminance
    # temporal filters: biphasic (both signs), peak 1-4 Hz
    spectrum = np.abs(np.fft.rfft(p["h1"], n=300, axis=1))
    peak_hz = spectrum.argmax(axis=1) * 30 / 300
    assert (p["h1"].min(axis=1) < 0).all() and (p["h1"].max(axis=1) > 0).all()
    assert 0.5 <= np.median(peak_hz) <= 4.5


def test_save_and_load_round_trip(tmp_path):
    m = make_mouse(7, 40)
    m.save(tmp_path / "mouse")
    back = load_mouse(tmp_path / "mouse")
    assert back.seed == 7 and back.n_neurons == 40 and back.deconv_kernel == m.deconv_kernel
    for k in m.neurons:
        assert np.array_equal(m.neurons[k], back.neurons[k]), k
    with pytest.raises(MouseError, match=r"params\.npz"):
        load_mouse(tmp_path)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(MouseError, match="seed"):
        make_mouse(-1)
    with pytest.raises(MouseError, match="neurons"):
        make_mouse(0, 0)


def test_streaming_model_equals_batch_model():
    m = make_mouse(3, 120)
    video = natural_movie(80, 2, "test")
    beh = BehaviourGenerator(9).frames(80)
    beh[:, 2] *= 3  # large gaze shifts exercise the image shift
    stream = MouseStream(m, movie_seed=5)
    streamed = np.stack([stream.step(f, b).expected for f, b in zip(video, beh, strict=True)])
    batch = expected_activity(m, video, beh)
    assert streamed.shape == batch.shape == (80, 120)
    np.testing.assert_allclose(streamed, batch, rtol=1e-4, atol=1e-5 * np.abs(batch).max())
    assert (batch >= 0).all()


def _smooth(maps, sigma=1.5):
    kernel = np.exp(-0.5 * (np.arange(-4, 5) / sigma) ** 2)
    maps = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), 1, maps)
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), 2, maps)


def _triggered_average(stimulus, responses, lags=range(1, 7)):
    """Response-weighted average of the stimulus over the filter's lags, one map per neuron."""
    s = stimulus.reshape(len(stimulus), -1)
    s = s - s.mean(axis=0)
    r = responses - responses.mean(axis=0)
    out = sum(r[lag:].T @ s[:-lag] for lag in lags)
    return out.reshape(responses.shape[1], *stimulus.shape[1:])


@pytest.mark.slow  # minutes of simulated white noise
def test_spike_triggered_averages_recover_receptive_field_centres():
    m = make_mouse(0, 150)
    video = gaussian_noise_movie(3000, spatial_length=1, temporal_length=1, seed=2, rms_contrast=0.5)
    still = np.array([0, 12, 0, 0], np.float32)  # eye at rest, so the screen maps straight to the retina
    stream = MouseStream(m, movie_seed=1)
    traces = np.stack([stream.step(f, still).traces for f in video])  # noisy deconvolved traces
    x = (video.astype(np.float32) - 127.5) / 127.5
    # the standard analysis per class: STA for simple cells, STA of stimulus energy for complex cells
    linear = _smooth(_triggered_average(x, traces) ** 2)
    energy = _smooth(_triggered_average(x**2, traces))
    maps = np.where(m.neurons["is_complex"][:, None, None], energy, linear)
    peaks = np.array([np.unravel_index(np.argmax(s), s.shape) for s in maps])
    err = np.hypot(peaks[:, 0] - m.neurons["rf_y"], peaks[:, 1] - m.neurons["rf_x"])
    assert np.mean(err < 4) > 0.7, f"median error {np.median(err):.1f} px"


def test_running_raises_activity_by_the_designed_gain():
    m = make_mouse(0, 200)
    video = natural_movie(300, 1, "test")
    still = np.tile(np.array([0, 12, 0, 0], np.float32), (300, 1))
    running = still.copy()
    running[:, 0] = 30.0
    _, r_still = expected_activity(m, video, still, return_rates=True)
    _, r_run = expected_activity(m, video, running, return_rates=True)
    visual = (r_run - m.neurons["baseline"]).mean() / (r_still - m.neurons["baseline"]).mean()
    design = m.designed_run_gain()
    assert 1.7 < design < 2.3
    assert abs(visual - design) < 0.15 * design
    # the noisy spikes show it too
    s_still, s_run = MouseStream(m, 3), MouseStream(m, 3)
    n_still = sum(s_still.step(f, b).spikes.sum() for f, b in zip(video, still, strict=True))
    n_run = sum(s_run.step(f, b).spikes.sum() for f, b in zip(video, running, strict=True))
    assert 1.4 < n_run / n_still < 2.4


def test_repeats_correlate_and_observed_tracks_expected():
    m = make_mouse(0, 150)
    repeats = [TrialPlan(i, "final_test_main", "test", 0) for i in range(4)]
    other = [TrialPlan(4 + i, "final_test_main", "test", 1 + i) for i in range(2)]
    trials = list(simulate_trials(m, repeats + other, movie_seed=2))
    obs = np.stack([np.stack([f.traces for f in fr]) for _, _, fr in trials])[:, 30:]  # (6, T, N)
    exp = np.stack([np.stack([f.expected for f in fr]) for _, _, fr in trials])[:, 30:]

    def mean_corr(a, b):
        return np.nanmean([np.corrcoef(a[:, n], b[:, n])[0, 1] for n in range(a.shape[1])])

    reliability = np.mean([mean_corr(obs[i], obs[j]) for i in range(4) for j in range(i + 1, 4)])
    unrelated = np.mean([mean_corr(obs[i], obs[4]) for i in range(4)])
    single_trial = np.mean([mean_corr(exp[i], obs[i]) for i in range(6)])
    assert 0.05 < reliability < 0.4
    assert abs(unrelated) < 0.1 and reliability > unrelated + 0.05  # behaviour alone correlates a little
    assert 0.25 < single_trial < 0.5
