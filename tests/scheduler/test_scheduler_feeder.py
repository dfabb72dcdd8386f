"""The feeder path (min-cost flow + decomposition) against the Pyomo reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings

from _scheduler_cases import problems, rel_close
from twin.scheduler import example_fleet, plan_violations, solve
from twin.scheduler.errors import InfeasibleProblem
from twin.scheduler.feeder import transportation_flow


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_cars=4, max_slots=10, feeder=True))
def test_feeder_path_equals_pyomo(p):
    try:
        ref = solve(p, "pyomo")
    except InfeasibleProblem:
        return
    fast = solve(p, "feeder")
    assert plan_violations(p, fast.energy_kwh) == []
    assert rel_close(fast.objective_total_gbp, ref.objective_total_gbp)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_cars=4, max_slots=10, feeder=True, taper=False, min_soc=False))
def test_flow_respects_limits_and_is_within_rounding_of_the_lp(p):
    x = transportation_flow(p)
    assert plan_violations(p, x) == []  # capacities rounded down: never over a limit
    ref = solve(p, "highs")
    # Up to 1 Wh lost per arc and per need, valued at most at the shortfall value.
    arcs = (p.availability > 0).sum() + p.n_cars
    slack = arcs * 1e-3 * (p.shortfall_value.max() + 1.0)
    from twin.scheduler.problem import evaluate_plan

    assert evaluate_plan(p, x, method="flow").objective_total_gbp <= ref.objective_total_gbp + slack


def test_fleet_with_binding_feeder_and_taper():
    p = example_fleet(150, seed=4, feeder=True)
    fast = solve(p, "auto")
    assert fast.method.startswith("feeder")
    ref = solve(p, "highs")
    assert plan_violations(p, fast.energy_kwh) == []
    assert rel_close(fast.objective_total_gbp, ref.objective_total_gbp)
    load = fast.energy_kwh.sum(axis=0) / p.slot_hours
    assert (load <= p.feeder_kw + 1e-6).all()
    assert np.isclose(load, p.feeder_kw, rtol=1e-6).sum() >= 5  # the limit binds
