"""The on/off programme against brute-force enumeration and the MILP."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from _scheduler_cases import brute_force_onoff, problems, rel_close
from twin.scheduler import FleetProblem, plan_violations, solve


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_cars=2, max_slots=6, mode="onoff"))
def test_onoff_programme_equals_brute_force(p):
    plan = solve(p, "onoff_dp")
    assert plan_violations(p, plan.energy_kwh) == []
    for i in range(p.n_cars):
        best, _ = brute_force_onoff(p, i)
        assert rel_close(plan.objective_gbp[i], best), (i, plan.objective_gbp[i], best)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_cars=3, max_slots=10, mode="onoff"))
def test_onoff_programme_equals_pyomo_milp(p):
    fast = solve(p, "onoff_dp")
    ref = solve(p, "pyomo")
    assert rel_close(fast.objective_total_gbp, ref.objective_total_gbp)


@pytest.mark.parametrize("penalty, runs, expected_starts", [(0.0, 1, 2), (2.0, 1, 1), (0.0, 3, 1)])
def test_start_penalty_and_min_run_merge_runs(penalty, runs, expected_starts):
    # Two cheap slots separated by a dear one: without a penalty the car starts twice.
    p = FleetProblem(slot_hours=1.0, battery_kwh=[40.0], soc0=0.2, target_soc=0.55, start_slot=[0.0],
                     end_slot=[5.0], max_kw=7.0, efficiency=1.0, price_gbp_per_kwh=[0.5, 0.1, 0.3, 0.1, 0.5],
                     mode="onoff", start_penalty_gbp=penalty, min_run_slots=runs)
    plan = solve(p, "onoff_dp")
    assert plan.starts[0] == expected_starts
    best, _ = brute_force_onoff(p, 0)
    assert rel_close(plan.objective_gbp[0], best)


def test_onoff_draws_the_limit_except_when_reaching_the_target():
    p = FleetProblem(slot_hours=1.0, battery_kwh=[40.0], soc0=0.2, target_soc=0.6, start_slot=[0.0],
                     end_slot=[4.0], max_kw=7.0, efficiency=1.0, price_gbp_per_kwh=[0.1, 0.2, 0.3, 0.4],
                     mode="onoff")
    x = solve(p, "auto").energy_kwh[0]
    np.testing.assert_allclose(x, [7, 7, 2, 0])
