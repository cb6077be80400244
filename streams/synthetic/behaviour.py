"""The synthetic mouse's behaviour, generated one frame at a time (channel order as neurocine.streams.session).

- running_speed (cm/s): the mouse alternates between sitting (bouts ~20 s) and running (bouts ~8 s, a
  bout speed of ~15 cm/s with fluctuations), smoothed by the treadmill's inertia, plus encoder noise;
- pupil_dilation (eye-camera px): a resting size, dilating with running (slow, ~2 s) and slow drifts;
- pupil_x, pupil_y (degrees of gaze, 0 = resting position; +x to the right, +y down the screen): slow
  drift back to rest plus saccades (mostly horizontal, more frequent while running).
"""

from __future__ import annotations

import numpy as np

from neurocine.streams.synthetic.stimuli import FRAME_RATE


class BehaviourGenerator:
    """A stateful generator of (running_speed, pupil_dilation, pupil_x, pupil_y) at `fps`."""

    def __init__(self, seed: int | list[int] | np.random.SeedSequence, fps: float = FRAME_RATE,
                 pupil_rest: float = 12.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.dt = 1.0 / fps
        self.pupil_rest = pupil_rest
        self.running = bool(self.rng.random() < 0.3)
        self.bout_speed = self._new_bout_speed()
        self.speed = self.bout_speed if self.running else 0.0
        self.fluct = 0.0
        self.run_level = float(self.running)
        self.pupil_drift = 0.0
        self.eye = np.zeros(2)

    def _new_bout_speed(self) -> float:
        return float(np.exp(self.rng.normal(np.log(15.0), 0.4)))

    def step(self) -> np.ndarray:
        """The next frame's behaviour, (4,) float32."""
        rng, dt = self.rng, self.dt
        u = rng.random(3)
        if self.running and u[0] < dt / 8.0:
            self.running = False
        elif not self.running and u[0] < dt / 20.0:
            self.running = True
            self.bout_speed = self._new_bout_speed()
        n = rng.standard_normal(6)
        self.fluct += -self.fluct * dt / 1.0 + 3.0 * np.sqrt(2 * dt / 1.0) * n[0]
        target = max(self.bout_speed + self.fluct, 0.0) if self.running else 0.0
        self.speed += (target - self.speed) * dt / 0.7
        speed = max(self.speed + 0.3 * n[1], 0.0)
        self.run_level += (float(self.running) - self.run_level) * dt / 2.0
        self.pupil_drift += -self.pupil_drift * dt / 5.0 + 1.5 * np.sqrt(2 * dt / 5.0) * n[2]
        pupil = max(self.pupil_rest + 8.0 * self.run_level + self.pupil_drift + 0.1 * n[3], 3.0)
        self.eye += -self.eye * dt / 2.0 + np.array([1.5, 1.0]) * np.sqrt(2 * dt / 2.0) * n[4:6]
        rate = 1.0 if self.running else 0.3  # saccades per second
        if u[1] < rate * dt:
            jump = rng.normal(0.0, 1.0, 2) * np.array([6.0, 2.0])
            self.eye = np.clip(self.eye + jump, -15.0, 15.0)
        return np.array([speed, pupil, self.eye[0], self.eye[1]], dtype=np.float32)

    def frames(self, n: int) -> np.ndarray:
        """(n, 4) float32: the next n frames."""
        return np.stack([self.step() for _ in range(n)]) if n else np.zeros((0, 4), np.float32)
