"""The independent modulated fast path against the Pyomo reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _scheduler_cases import problems, rel_close
from twin.scheduler import FleetProblem, example_fleet, plan_violations, solve
from twin.scheduler.independent import solve_independent_modulated

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_against_reference(p):
    fast = solve(p, "independent")
    ref = solve(p, "pyomo")
    assert plan_violations(p, fast.energy_kwh) == []
    for i in range(p.n_cars):
        assert rel_close(fast.objective_gbp[i], ref.objective_gbp[i]), (i, fast.objective_gbp[i], ref.objective_gbp[i])
    return fast


@SETTINGS
@given(problems(taper=True, per_car_price=False))
def test_shared_prices_with_taper(p):
    check_against_reference(p)


@SETTINGS
@given(problems(taper=True, per_car_price=True))
def test_per_car_prices_with_taper(p):
    check_against_reference(p)


@SETTINGS
@given(problems(taper=None, carbon=True, min_soc=True))
def test_carbon_weight_and_min_soc(p):
    check_against_reference(p)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_cars=6, max_slots=24, taper=True), st.sampled_from([100.0, 0.5]))
def test_taper_programme_matches_highs_lp(p, _):
    # A cheaper cross-check on longer windows: the matrix LP (itself checked against Pyomo).
    fast = solve(p, "independent")
    ref = solve(p, "highs")
    assert plan_violations(p, fast.energy_kwh) == []
    assert all(rel_close(a, b) for a, b in zip(fast.objective_gbp, ref.objective_gbp))


def test_taper_binding_cars_use_the_programme_and_stay_exact():
    p = example_fleet(60, seed=5)
    x, ok, used_dp = solve_independent_modulated(p)
    assert ok.all() and used_dp.any() and not used_dp.all()
    ref = solve(p, "highs")
    fast = solve(p, "independent")
    np.testing.assert_allclose(fast.objective_gbp, ref.objective_gbp, rtol=1e-6, atol=1e-6)


def test_cheapest_fill_without_taper_fills_cheapest_slots():
    p = FleetProblem(slot_hours=1.0, battery_kwh=[50.0], soc0=0.2, target_soc=0.5, start_slot=[0.0],
                     end_slot=[5.0], max_kw=7.0, efficiency=1.0, price_gbp_per_kwh=[0.3, 0.1, 0.2, 0.05, 0.4])
    x = solve(p, "independent").energy_kwh[0]
    np.testing.assert_allclose(x, [0, 7, 1, 7, 0])


def test_slots_costlier_than_the_shortfall_are_left_empty():
    p = FleetProblem(slot_hours=1.0, battery_kwh=[50.0], soc0=0.2, target_soc=0.5, start_slot=[0.0],
                     end_slot=[3.0], max_kw=7.0, efficiency=1.0, price_gbp_per_kwh=[0.3, 2.0, 0.2],
                     shortfall_penalty_gbp_per_kwh=1.0)
    plan = solve(p, "independent")
    np.testing.assert_allclose(plan.energy_kwh[0], [7, 0, 7])
    np.testing.assert_allclose(plan.shortfall_kwh, 1.0)


def test_car_that_needs_nothing_draws_nothing():
    p = FleetProblem(slot_hours=1.0, battery_kwh=[50.0], soc0=0.9, target_soc=0.8, start_slot=[0.0],
                     end_slot=[3.0], max_kw=7.0, price_gbp_per_kwh=[-0.3, 0.1, 0.2])
    plan = solve(p, "auto")
    assert plan.energy_kwh.sum() == 0 and plan.shortfall_kwh[0] == 0


def test_shared_price_fleet_takes_the_vectorised_path_and_stays_feasible():
    # Speed is measured in bench/scheduler.py; here: the path chosen and the plans' limits.
    p = example_fleet(1000, seed=3)
    plan = solve(p, "independent")
    assert plan.method == "independent"
    assert plan_violations(p, plan.energy_kwh) == []
    # Cars whose target stays below the taper knee get the plain cheapest fill.
    how = np.asarray(plan.car_method)
    below_knee = p.need_kwh <= p.taper_free_kwh
    assert below_knee.any() and (how[below_knee] == "independent(cheapest fill)").all()


def test_cumsum_rows_is_numpy_cumsum_bit_for_bit():
    from twin.scheduler._physics import cumsum_rows

    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 50))
    for arr in (a, a[:, rng.permutation(50)], np.asfortranarray(a), a[:10], np.zeros((100, 0))):
        np.testing.assert_array_equal(cumsum_rows(arr), np.cumsum(arr, axis=1))


def test_fast_path_builds_no_fleet_sized_limit_matrices():
    # The fast path works on blocks of cars: it never builds the (N, T) availability, power
    # limit or taper matrices (77 MB each at 100k cars), and the plan takes the solver's matrix.
    p = example_fleet(3000, seed=8)
    plan = solve(p, "auto")
    assert plan.method == "independent"
    for name in ("availability", "cap_kwh", "taper_alpha", "taper_rhs_kwh"):
        assert name not in p.__dict__, name
    ref = example_fleet(3000, seed=8)
    ref.cap_kwh, ref.taper_alpha, ref.taper_rhs_kwh  # the same solve from the built matrices
    np.testing.assert_array_equal(solve(ref, "auto").energy_kwh, plan.energy_kwh)
