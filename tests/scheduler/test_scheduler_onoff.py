"""The on/off programme against brute-force enumeration and the MILP."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from _scheduler_cases import brute_force_onoff, onoff_plans, problems, rel_close
from twin.scheduler import FleetProblem, example_fleet, plan_violations, solve
from twin.scheduler.onoff import _solve_block, _solve_car, solve_onoff_independent


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


# ---- the per-car programme (single-slot runs) against the programme vectorised over cars


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(onoff_plans())
def test_per_car_programme_equals_the_block_programme_bit_for_bit(p):
    block = _solve_block(p, np.arange(p.n_cars))
    cost = p.unit_cost()
    for i in range(p.n_cars):
        x = _solve_car(p, i, cost[i])
        assert x is not None  # min-SoC slots always form a prefix of the window
        np.testing.assert_array_equal(x, block[i])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(onoff_plans(max_cars=2, max_slots=7))
def test_per_car_programme_equals_brute_force(p):
    plan = solve(p, "auto")
    assert plan.method == "onoff_dp"
    assert plan_violations(p, plan.energy_kwh) == []
    for i in range(p.n_cars):
        best, _ = brute_force_onoff(p, i)
        assert rel_close(plan.objective_gbp[i], best), (i, plan.objective_gbp[i], best)


def test_cars_with_longer_runs_use_the_block_programme_in_the_same_call():
    p = example_fleet(40, seed=7, mode="onoff", start_penalty_gbp=0.05, min_run_slots=1)
    runs = np.where(np.arange(40) % 3 == 0, 2, 1)
    mixed = FleetProblem(**{**{f.name: getattr(p, f.name) for f in dataclasses.fields(p)}, "min_run_slots": runs})
    x = solve_onoff_independent(mixed)
    np.testing.assert_array_equal(x, _solve_block(mixed, np.arange(40)))
    assert plan_violations(mixed, x) == []


def test_single_car_plans_use_the_per_car_programme():
    # The smart policy solves one car per plug-in: 30 half-hour slots, a start penalty, a taper.
    rng = np.random.default_rng(3)
    kws = []
    for _ in range(300):
        T = int(rng.integers(20, 40))
        kws.append(dict(
            slot_hours=0.5, battery_kwh=[float(rng.uniform(40, 90))], soc0=[float(rng.uniform(0.2, 0.6))],
            target_soc=[0.8], min_soc=[0.2], start_slot=[float(rng.uniform(0, 1))], end_slot=[float(T - rng.uniform(0, 1))],
            max_kw=[7.0], vehicle_max_kw=[7.4], efficiency=[0.9], taper_knee_soc=[0.8], taper_floor_kw=[1.5],
            price_gbp_per_kwh=rng.normal(0.2, 0.08, T), carbon_g_per_kwh=rng.uniform(50, 300, T),
            carbon_weight_gbp_per_kg=0.0, mode="onoff", start_penalty_gbp=0.02, min_run_slots=1, vehicle_ids=["v"],
        ))
    # Speed is measured in bench/scheduler.py; here: every call takes the exact programme,
    # keeps the limits, and only falls short of the target after charging in every slot.
    for kw in kws:
        p = FleetProblem(**kw)
        plan = solve(p)
        assert plan.method == "onoff_dp"
        assert plan_violations(p, plan.energy_kwh) == []
        if plan.shortfall_kwh[0] > 1e-6:
            # Falling short is only optimal when the car charged in every slot it could.
            assert (plan.energy_kwh[0][p.availability[0] > 0] > 0).all()
