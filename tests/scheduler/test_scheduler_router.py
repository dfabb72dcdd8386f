"""The auto router: fast paths when they apply, fallbacks when they refuse."""

import dataclasses

import numpy as np
import pytest

from twin.scheduler import FleetProblem, SolverRefused, example_fleet, plan_violations, solve
import twin.scheduler._taper_dp as taper_dp


def replace(p, **kw):
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    fields.update(kw)
    return FleetProblem(**fields)


def test_auto_uses_fast_paths_for_independent_cars():
    p = example_fleet(40, seed=1)
    plan = solve(p, "auto")
    assert set(plan.car_method) <= {"independent(cheapest fill)", "independent(taper dp)"}
    assert "independent(taper dp)" in set(plan.car_method)
    mixed = replace(p, mode=["onoff"] * 5 + ["modulated"] * 35, start_penalty_gbp=0.2)
    plan = solve(mixed, "auto")
    assert set(plan.car_method[:5]) == {"onoff_dp"}
    assert plan.method == "independent+onoff_dp"


def test_auto_falls_back_per_car_when_the_programme_refuses(monkeypatch):
    monkeypatch.setattr(taper_dp, "MAX_TAPER_STEPS", 1)
    p = example_fleet(30, seed=1)
    plan = solve(p, "auto")
    assert "highs" in set(plan.car_method)
    ref = solve(p, "highs")
    np.testing.assert_allclose(plan.objective_gbp, ref.objective_gbp, rtol=1e-6, atol=1e-6)
    with pytest.raises(SolverRefused):
        solve(p, "independent")


def test_feeder_that_does_not_bind_keeps_the_independent_plan():
    p = example_fleet(30, seed=2)
    loose = replace(p, feeder_kw=np.full(p.n_slots, 1e4))
    assert solve(loose, "auto").method == "independent"


def test_binding_feeder_with_onoff_cars_falls_back_to_the_milp():
    # Three cars wanting the same two cheap slots under a 10 kW feeder.
    p = FleetProblem(slot_hours=1.0, battery_kwh=[40.0, 50.0, 30.0], soc0=0.2, target_soc=0.5,
                     start_slot=[0.0, 0.0, 1.0], end_slot=[6.0, 5.5, 6.0], max_kw=[7.0, 7.0, 3.6],
                     price_gbp_per_kwh=[0.3, 0.1, 0.1, 0.2, 0.25, 0.3], feeder_kw=np.full(6, 10.0),
                     mode="onoff", start_penalty_gbp=0.1)
    with pytest.raises(SolverRefused):
        solve(p, "onoff_dp")
    with pytest.raises(SolverRefused):
        solve(p, "feeder")
    assert solve(p, "auto").method == "highs"


def test_feeder_refusal_falls_back_to_highs(monkeypatch):
    import twin.scheduler.feeder as feeder

    # Levels that do not certify, then a decomposition that does not converge.
    monkeypatch.setattr(feeder, "recover_at_levels", lambda p, beta0: None)
    monkeypatch.setattr(feeder, "MAX_ROUNDS", 0)
    p = example_fleet(20, seed=4, feeder=True)
    with pytest.raises(SolverRefused):
        solve(p, "feeder")
    assert solve(p, "auto").method == "highs"


def test_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        solve(example_fleet(2), "magic")


def test_large_coupled_fleets_use_levels_or_the_lp(monkeypatch):
    import twin.scheduler.feeder as feeder
    import twin.scheduler.router as solve_mod

    monkeypatch.setattr(solve_mod, "FEEDER_DECOMPOSITION_MAX_CARS", 10)
    monkeypatch.setattr(solve_mod, "FEEDER_LP_MAX_CARS", 0)  # 20 cars stand in for a large fleet
    p = example_fleet(20, seed=6, feeder=True)
    ref = solve(p, "highs").objective_total_gbp
    plan = solve(p, "auto")
    assert plan.method == "feeder(flow+levels)"
    assert abs(plan.objective_total_gbp - ref) <= 1e-6 * ref
    # Levels that do not certify: too many cars for the decomposition, so the LP.
    monkeypatch.setattr(feeder, "recover_at_levels", lambda p, beta0: None)
    plan = solve(p, "auto")
    assert plan.method == "highs"
    assert abs(plan.objective_total_gbp - ref) <= 1e-6 * ref
    assert solve(p, "feeder").method == "feeder(flow+dw)"


def test_a_few_coupled_cars_go_straight_to_one_lp():
    # one car under a per-slot cap (the room a feeder leaves it) and a handful of cars under a
    # binding feeder: the LP, whose answer the flow would only reach by iterating
    p = example_fleet(8, seed=3, feeder=True)
    plan = solve(p, "auto")
    assert plan.method == "highs" and plan_violations(p, plan.energy_kwh) == []
    assert abs(plan.objective_total_gbp - solve(p, "pyomo").objective_total_gbp) <= 1e-6 * abs(plan.objective_total_gbp)
