"""The synthetic mouse: naturalistic stimuli, a ground-truth visual cortex, calcium traces and a live rig.

numpy only at import (scikit-image is imported when the photographs are first needed).
"""

from neurocine.streams.synthetic.behaviour import BehaviourGenerator
from neurocine.streams.synthetic.model import ExpectedActivityStream, expected_activity
from neurocine.streams.synthetic.mouse import DEFAULT_NEURONS, DEFAULT_SEED, Mouse, load_mouse, make_mouse
from neurocine.streams.synthetic.simulate import (
    MouseStream,
    SimFrame,
    TrialPlan,
    build_example_session,
    plan_trials,
    simulate_dataset,
    simulate_session,
)
from neurocine.streams.synthetic.stimuli import (
    NaturalMovie,
    drifting_grating,
    gaussian_noise_movie,
    grating_set,
    grey_movie,
    natural_movie,
)

__all__ = [
    "DEFAULT_NEURONS", "DEFAULT_SEED", "BehaviourGenerator", "ExpectedActivityStream", "Mouse",
    "MouseStream", "NaturalMovie", "SimFrame", "TrialPlan", "build_example_session", "drifting_grating",
    "expected_activity", "gaussian_noise_movie", "grating_set", "grey_movie", "load_mouse", "make_mouse",
    "natural_movie", "plan_trials", "simulate_dataset", "simulate_session",
]
