"""The step-shedding rule on a hand-driven clock: no sockets, no sleeping, no timing assertions."""

from __future__ import annotations

import pytest

from neurocine.decoder.live.step_budget import StepBudget

PERIOD = 1 / 30


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def steady(budget: StepBudget, clock: Clock, step_cost_s: float, frames: int, overhead_s: float = 0.0) -> list[int]:
    """`frames` arriving one period apart, each alone; every step costs `step_cost_s`."""
    granted = []
    for _ in range(frames):
        clock.t += PERIOD
        k = budget.grant(backlog=1)
        budget.charge(k, k * step_cost_s + overhead_s)
        granted.append(k)
    return granted


def test_all_steps_when_a_step_is_cheap() -> None:
    clock = Clock()
    budget = StepBudget(2, PERIOD, clock=clock)
    assert steady(budget, clock, step_cost_s=0.005, frames=100) == [2] * 100


def test_the_first_frame_runs_every_step_to_measure_their_cost() -> None:
    clock = Clock()
    budget = StepBudget(3, PERIOD, clock=clock)
    assert budget.step_cost_s is None
    assert budget.grant(backlog=5) == 3  # even behind a backlog: nothing is known yet
    budget.charge(3, 0.3)
    assert budget.step_cost_s == pytest.approx(0.1)


def test_steps_are_shed_when_a_step_is_slow() -> None:
    clock = Clock()
    budget = StepBudget(2, PERIOD, clock=clock)
    granted = steady(budget, clock, step_cost_s=0.025, frames=300)  # 2 steps = 50 ms > one 33 ms period
    later = granted[50:]
    assert 0 < sum(later) < 2 * len(later)  # some steps, not all
    assert set(later) <= {0, 1, 2}
    # what was granted fits the time there was: compute never runs ahead of the frame rate for long
    assert sum(later) * 0.025 <= len(later) * PERIOD + 2 * 0.025 + PERIOD


def test_a_step_slower_than_a_frame_period_still_runs_now_and_then() -> None:
    clock = Clock()
    budget = StepBudget(2, PERIOD, clock=clock)
    granted = steady(budget, clock, step_cost_s=0.05, frames=60)
    assert 0 < sum(granted[10:]) < len(granted[10:])


def test_no_steps_while_frames_wait_behind() -> None:
    clock = Clock()
    budget = StepBudget(4, PERIOD, clock=clock)
    steady(budget, clock, step_cost_s=0.001, frames=5)
    clock.t += 10 * PERIOD  # plenty of credit
    assert budget.grant(backlog=3) == 0
    assert budget.grant(backlog=2) == 0
    assert budget.grant(backlog=1) > 0  # the last of the burst gets its steps back


def test_credit_is_capped_so_an_idle_spell_buys_no_burst() -> None:
    clock = Clock()
    budget = StepBudget(2, PERIOD, clock=clock)
    cost = 0.030  # 2 steps cost 60 ms: about one step per period affordable
    steady(budget, clock, step_cost_s=cost, frames=50)
    clock.t += 60.0  # a minute without frames
    assert budget.credit_s <= 2 * budget.step_cost_s + PERIOD  # nothing banked beyond the cap
    budget.grant(backlog=1)
    assert budget.credit_s <= 2 * budget.step_cost_s + PERIOD + 1e-12
    # then frames arrive back to back (no time between them): one frame's full work, not a minute's
    full = 0
    for _ in range(10):
        k = budget.grant(backlog=1, arrived_s=clock.t)
        budget.charge(k, k * cost)
        full += k
    assert full <= 2 + 2  # the capped credit, plus the frame that carried it


def test_a_long_gap_earns_at_most_a_few_periods() -> None:
    budget = StepBudget(2, PERIOD, clock=Clock(), max_gap_periods=4)
    budget.grant(backlog=1, arrived_s=0.0)
    budget.charge(2, 0.2)  # one step = 100 ms: credit deep in debt
    before = budget.credit_s
    budget.grant(backlog=1, arrived_s=3600.0)
    assert budget.credit_s - before == pytest.approx(4 * PERIOD)


def test_step_cost_is_a_running_average() -> None:
    budget = StepBudget(2, PERIOD, clock=Clock(), smoothing=0.2)
    budget.charge(2, 0.020)
    assert budget.step_cost_s == pytest.approx(0.010)
    budget.charge(1, 0.020)  # one slow sample moves the average a fifth of the way
    assert budget.step_cost_s == pytest.approx(0.8 * 0.010 + 0.2 * 0.020)
    budget.charge(0, 5.0)  # a frame without steps (a bare push) says nothing about a step's cost
    assert budget.step_cost_s == pytest.approx(0.012)
    assert budget.credit_s == pytest.approx(-5.04)


def test_reset_forgets_credit_and_arrivals_but_keeps_the_measured_cost() -> None:
    clock = Clock()
    budget = StepBudget(2, PERIOD, clock=clock)
    steady(budget, clock, step_cost_s=0.004, frames=5)
    budget.reset(period_s=1 / 60)
    assert budget.credit_s == 0.0 and budget.period_s == 1 / 60
    assert budget.step_cost_s == pytest.approx(0.004)
    clock.t += 1000.0  # the first frame after a reset earns one period, not the time since the last stream
    budget.grant(backlog=1)
    assert budget.credit_s == pytest.approx(1 / 60)


def test_zero_steps_asked_grants_zero() -> None:
    clock = Clock()
    assert steady(StepBudget(0, PERIOD, clock=clock), clock, step_cost_s=0.001, frames=5) == [0] * 5


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        StepBudget(2, 0.0)
    with pytest.raises(ValueError):
        StepBudget(-1, PERIOD)


def test_without_shedding_every_frame_gets_every_step_however_far_behind() -> None:
    clock = Clock()
    budget = StepBudget(2, 1 / 30, clock=clock, shed=False)
    assert budget.grant(backlog=1) == 2
    budget.charge(2, 1.0)  # a step far slower than a frame
    clock.t += 0.001
    assert budget.grant(backlog=50) == 2
    budget.charge(2, 1.0)
    assert budget.grant(backlog=1) == 2
