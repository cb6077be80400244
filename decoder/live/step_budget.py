"""How many optimiser steps a live frame may run: the decode service's shedding rule, pure (no I/O).

Every arriving frame earns the time since the previous one arrived as compute credit (one frame period at
a steady rate; capped at `max_gap_periods` periods, so a pause is not banked). A step costs its measured
running-average time. A frame runs min(K, credit / step cost) steps, and none while other frames wait
behind it, so the backlog is worked off at the cost of bare pushes and never grows. Credit is capped at one
frame's full work plus one period: an idle spell cannot buy a later burst of full-cost frames.

The clock is injectable (tests drive it by hand); the service passes arrival times it measured itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StepBudget:
    """Grants optimiser steps per frame from earned credit and the measured cost of a step."""

    def __init__(self, steps: int, period_s: float, *, clock: Callable[[], float] = time.monotonic,
                 smoothing: float = 0.2, max_gap_periods: float = 4.0, shed: bool = True) -> None:
        if steps < 0 or period_s <= 0 or not 0 < smoothing <= 1:
            raise ValueError(f"need steps >= 0, period_s > 0, 0 < smoothing <= 1; got {steps}, {period_s}, {smoothing}")
        self.steps = steps
        #: False: every frame gets all its steps, however far behind (a replay where real time does not
        #: matter and every step should count; the backlog then waits in the service's inbox)
        self.shed = shed
        self.clock = clock
        self.smoothing = smoothing
        self.max_gap_periods = max_gap_periods
        self.period_s = period_s
        self.credit_s = 0.0
        self.step_cost_s: float | None = None  # running average of one step's time; None until measured
        self._last_arrival_s: float | None = None

    def reset(self, period_s: float | None = None) -> None:
        """A new stream: no credit, no previous arrival (the measured step cost stays: same machine)."""
        if period_s is not None:
            self.period_s = period_s
        self.credit_s = 0.0
        self._last_arrival_s = None

    def grant(self, backlog: int, arrived_s: float | None = None) -> int:
        """Steps for a frame that arrived at `arrived_s` (the clock's now if None; only differences count)
        with `backlog` frames waiting, itself included."""
        now = self.clock() if arrived_s is None else arrived_s
        since = self.period_s if self._last_arrival_s is None else now - self._last_arrival_s
        self._last_arrival_s = now
        earned = min(max(since, 0.0), self.max_gap_periods * self.period_s)
        self.credit_s = min(self.credit_s + earned, self.steps * (self.step_cost_s or 0.0) + self.period_s)
        if self.step_cost_s is None or not self.shed:
            return self.steps  # the first frame measures what a step costs
        if backlog > 1:
            return 0
        return int(min(self.steps, max(0.0, self.credit_s) // max(self.step_cost_s, 1e-9)))

    def charge(self, steps: int, seconds: float) -> None:
        """What a frame's work cost: `seconds` of credit, and (if it ran steps) a sample of the step cost."""
        self.credit_s -= seconds
        if steps > 0:
            cost = seconds / steps
            a = self.smoothing
            self.step_cost_s = cost if self.step_cost_s is None else (1 - a) * self.step_cost_s + a * cost
