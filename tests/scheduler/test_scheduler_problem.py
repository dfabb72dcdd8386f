"""Validation of FleetProblem and the accounting of plans."""

import numpy as np
import pytest

from twin.scheduler import FleetProblem, evaluate_plan, plan_violations

BASE = dict(
    slot_hours=0.5, battery_kwh=[60.0, 40.0], soc0=[0.3, 0.5], target_soc=[0.8, 0.9],
    start_slot=[0.0, 1.5], end_slot=[6.0, 5.0], max_kw=[7.0, 11.0], price_gbp_per_kwh=[0.2] * 6,
    vehicle_ids=["a", "b"],
)


def make(**changes):
    kw = dict(BASE)
    kw.update(changes)
    return FleetProblem(**kw)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"battery_kwh": [60.0, -1.0]}, r"battery_kwh\[1\].*'b'.*> 0"),
        ({"soc0": [1.2, 0.5]}, r"soc0\[0\].*'a'.*\[0, 1\]"),
        ({"target_soc": [0.8, np.nan]}, r"target_soc\[1\].*finite"),
        ({"battery_kwh": [np.inf, 40.0]}, r"battery_kwh\[0\].*finite"),
        ({"start_penalty_gbp": [0.0, np.inf]}, r"start_penalty_gbp\[1\].*finite"),
        ({"end_slot": [6.0, -np.inf]}, r"end_slot\[1\].*finite"),
        ({"end_slot": [6.0, 1.0]}, r"end_slot\[1\].*before plug-in"),
        ({"end_slot": [7.0, 5.0]}, r"end_slot\[0\].*beyond the horizon of 6"),
        ({"price_gbp_per_kwh": [[0.2] * 6] * 3}, r"price_gbp_per_kwh must have shape"),
        ({"carbon_g_per_kwh": [100.0] * 5}, r"carbon_g_per_kwh must have shape"),
        ({"feeder_kw": [10.0] * 4}, r"feeder_kw must have shape"),
        ({"feeder_kw": [10.0, -1, 10, 10, 10, 10]}, r"feeder_kw\[1\]"),
        ({"mode": ["modulated", "sometimes"]}, r"mode\[1\].*'b'"),
        ({"min_run_slots": 0}, r"min_run_slots\[0\]"),
        ({"efficiency": [0.0, 0.9]}, r"efficiency\[0\]"),
        ({"max_kw": [7.0]}, r"max_kw must be a scalar or have shape \(2,\)"),
        ({"price_gbp_per_kwh": [0.2, np.inf, 0.2, 0.2, 0.2, 0.2]}, r"price_gbp_per_kwh\[1\].*finite"),
        ({"slot_hours": 0}, r"slot_hours must be a positive"),
        ({"vehicle_ids": ["a"]}, r"vehicle_ids has 1 entries"),
    ],
)
def test_bad_input_names_field_and_car(changes, match):
    with pytest.raises(ValueError, match=match):
        make(**changes)


def test_broadcast_and_derived_arrays():
    p = make(carbon_g_per_kwh=[100.0] * 6, carbon_weight_gbp_per_kg=0.1)
    assert p.n_cars == 2 and p.n_slots == 6
    np.testing.assert_allclose(p.availability[1], [0, 0.5, 1, 1, 1, 0])
    np.testing.assert_allclose(p.cap_kwh[1, 1], 0.5 * 0.5 * 11.0)
    np.testing.assert_allclose(p.unit_cost()[0], 0.21)
    assert not p.has_taper.any()
    assert p.min_soc.shape == (2,) and (p.min_soc == 0).all()
    with pytest.raises(ValueError):
        p.battery_kwh[0] = 1.0  # read-only


def test_evaluate_plan_accounting():
    p = make(carbon_g_per_kwh=[100.0] * 6, carbon_weight_gbp_per_kg=0.5, mode=["onoff", "modulated"],
             start_penalty_gbp=[1.0, 1.0])
    x = np.zeros((2, 6))
    x[0, [1, 2, 4]] = 3.5
    plan = evaluate_plan(p, x, method="test")
    assert plan.starts.tolist() == [2, 0]
    np.testing.assert_allclose(plan.cost_gbp[0], 0.2 * 10.5)
    np.testing.assert_allclose(plan.carbon_kg[0], 1.05)
    soc_end = 0.3 + 0.9 * 10.5 / 60
    np.testing.assert_allclose(plan.soc_at_end[0], soc_end)
    np.testing.assert_allclose(plan.shortfall_kwh[0], (0.8 - soc_end) * 60)
    np.testing.assert_allclose(
        plan.objective_gbp[0], 2.1 + 0.5 * 1.05 + 100 * (0.8 - soc_end) * 60 + 2 * 1.0
    )
    assert plan.on[0, 1] and not plan.on[1].any()
    assert plan_violations(p, x) == []
    x[1, 0] = 1.0
    assert any("window" in v for v in plan_violations(p, x))


def test_caller_arrays_stay_writable_and_fields_are_read_only():
    soc0 = np.array([0.3, 0.5])
    p = make(soc0=soc0)
    soc0[0] = 0.9  # the problem holds its own copy
    assert p.soc0[0] == 0.3
    for name in ("battery_kwh", "soc0", "end_slot", "start_penalty_gbp", "price_gbp_per_kwh"):
        with pytest.raises(ValueError):
            getattr(p, name)[0] = 1.0


def test_errors_follow_field_order():
    # A non-finite value is reported before a shape error in a later field, as before.
    with pytest.raises(ValueError, match=r"soc0\[1\].*finite"):
        make(soc0=[0.3, np.nan], max_kw=[7.0])
    with pytest.raises(ValueError, match=r"max_kw must be a scalar"):
        make(max_kw=[7.0])
    with pytest.raises(ValueError, match=r"efficiency\[1\].*\(0, 1\]"):
        make(efficiency=[0.9, 1.5])
    with pytest.raises(ValueError, match=r"mode\[0\].*'a'"):
        make(mode="sometimes")


@pytest.mark.parametrize("runs, ok", [(2, True), (np.int64(2), True), (2.0, True), ([1, 3], True), (1.5, False), (True, True)])
def test_min_run_slots_forms(runs, ok):
    if ok:
        assert (make(min_run_slots=runs).min_run_slots >= 1).all()
    else:
        with pytest.raises(ValueError, match=r"min_run_slots\[0\]"):
            make(min_run_slots=runs)


def test_limit_rows_equal_the_properties():
    p = make(taper_knee_soc=[0.7, 0.8], taper_floor_kw=1.0, vehicle_max_kw=[7.4, 11.0])
    q = make(taper_knee_soc=[0.7, 0.8], taper_floor_kw=1.0, vehicle_max_kw=[7.4, 11.0])
    rows = np.array([1, 0, 1])
    got = q.limit_rows(rows)  # computed row by row: q's properties are not built yet
    assert "availability" not in q.__dict__
    for a, b in zip(got, (p.availability, p.cap_kwh, p.taper_alpha, p.taper_rhs_kwh)):
        np.testing.assert_array_equal(a, b[rows])
    for a, b in zip(p.limit_rows(slice(0, 1)), (p.availability, p.cap_kwh, p.taper_alpha, p.taper_rhs_kwh)):
        np.testing.assert_array_equal(a, b[:1])
    assert q.limit_rows(rows, taper=False)[2] is None


def test_evaluate_plan_without_copy_takes_the_matrix():
    p = make()
    x = np.zeros((2, 6))
    x[0, 1] = 3.5
    x[1, 2] = 1e-12
    plan = evaluate_plan(p, x, method="test", copy=False)
    assert plan.energy_kwh is x and x[1, 2] == 0.0
    y = np.zeros((2, 6))
    y[1, 2] = 1e-12
    assert evaluate_plan(p, y, method="test").energy_kwh is not y and y[1, 2] == 1e-12
