"""plan_charging: the analysts' entry point with pandas tables."""

import numpy as np
import pandas as pd
import pytest

from twin.scheduler import plan_charging

SLOTS = pd.date_range("2026-03-02 16:00", periods=40, freq="30min", tz="UTC")


def signals():
    hour = SLOTS.hour + SLOTS.minute / 60
    price = np.where((hour >= 0) & (hour < 5), 0.08, np.where((hour >= 16) & (hour < 19), 0.35, 0.22))
    return pd.DataFrame({"price_gbp_per_kwh": price, "carbon_g_per_kwh": np.where(price < 0.1, 120.0, 240.0)},
                        index=SLOTS)


def cars():
    return pd.DataFrame({
        "vehicle_id": ["ev-1", "ev-2", "ev-3"],
        "plugged_in_at": [SLOTS[0] + pd.Timedelta("25min"), SLOTS[4], SLOTS[2]],
        "ready_by": [SLOTS[0] + pd.Timedelta("15h"), SLOTS[0] + pd.Timedelta("14h40min"), SLOTS[-1]],
        "battery_kwh": [60.0, 77.0, 40.0],
        "soc": [0.3, 0.5, 0.2],
        "target_soc": [0.9, 0.8, 1.0],
        "min_soc": [0.4, 0.0, 0.0],
        "max_kw": [7.4, 11.0, 3.6],
        "taper_knee_soc": [0.8, 0.8, 1.0],
        "taper_floor_kw": [1.5, 2.0, 0.0],
    })


def test_tables_have_documented_columns_and_units():
    res = plan_charging(cars(), signals(), carbon_weight_gbp_per_kg=0.05)
    s, sm = res.schedule, res.summary
    assert list(s.columns) == ["vehicle_id", "slot_start", "energy_kwh", "power_kw", "soc_end"]
    assert list(sm.columns) == ["vehicle_id", "energy_kwh", "cost_gbp", "carbon_kg", "soc_at_ready_by",
                                "shortfall_kwh", "first_charge_at"]
    assert str(s["slot_start"].dt.tz) == "UTC"
    np.testing.assert_allclose(s["power_kw"], s["energy_kwh"] / 0.5)
    per_car = s.groupby("vehicle_id", sort=False)["energy_kwh"].sum()
    np.testing.assert_allclose(per_car.to_numpy(), sm["energy_kwh"].to_numpy())
    np.testing.assert_allclose(sm["soc_at_ready_by"], [0.9, 0.8, 1.0], atol=1e-6)
    # ev-1 must reach its 40 % minimum first, from plug-in, despite the evening peak.
    assert sm.loc[0, "first_charge_at"] == SLOTS[0]
    assert sm.loc[1, "first_charge_at"] >= pd.Timestamp("2026-03-03 00:00", tz="UTC")
    assert (sm["shortfall_kwh"] < 1e-6).all()


def test_now_moves_the_start_and_feeder_mode_options():
    res = plan_charging(cars().drop(columns="plugged_in_at"), signals(), now=SLOTS[6], mode="onoff",
                        start_penalty_gbp=0.1, min_run_slots=2, feeder_kw=30.0)
    s = res.schedule
    assert s["slot_start"].min() == SLOTS[6]
    load = s.groupby("slot_start")["power_kw"].sum()
    assert (load <= 30.0 + 1e-6).all()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c, s: (c.drop(columns=["max_kw", "soc"]), s), r"missing columns \['soc', 'max_kw'\]"),
        (lambda c, s: (c.assign(ready_by=c["ready_by"].dt.tz_localize(None)), s), "timezone-aware"),
        (lambda c, s: (c, s.tz_localize(None)), "timezone-aware"),
        (lambda c, s: (c.assign(ready_by=c["plugged_in_at"]), s), "not after plugged_in_at.*ev-1"),
        (lambda c, s: (c.assign(ready_by=c["ready_by"] + pd.Timedelta("2D")), s), "after the last signal slot"),
        (lambda c, s: (c.assign(vehicle_id=["a", "a", "b"]), s), "appears more than once"),
        (lambda c, s: (c.assign(battery_kwh=[60.0, -3.0, 40.0]), s), r"battery_kwh\[1\].*'ev-2'"),
        (lambda c, s: (c.assign(soc=[0.3, np.nan, 0.2]), s), "soc is missing.*ev-2"),
        (lambda c, s: (c, s.drop(columns="price_gbp_per_kwh")), "price_gbp_per_kwh"),
        (lambda c, s: (c, s.drop(s.index[3])), "not evenly spaced"),
    ],
)
def test_clear_errors(mutate, match):
    c, s = mutate(cars(), signals())
    with pytest.raises(ValueError, match=match):
        plan_charging(c, s)
