"""End-to-end twin runs through the one control path."""

import numpy as np
import pandas as pd
import pytest

from twin import parse_scenario, simulate
from twin.sim.run import simulate as sim_run


def scenario(**over):
    base = {"days": 3, "seed": 7, "fleet": [{"name": "c", "count": 30}]}
    base.update(over)
    return parse_scenario(base)


def test_same_seed_same_results_different_seed_different():
    a = simulate(scenario())
    b = simulate(scenario())
    c = simulate(scenario(), seed=8)
    for name in ("sessions", "timeseries", "events"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.kpis == b.kpis
    assert a.kpis["cost_gbp"] != c.kpis["cost_gbp"]


def test_uncontrolled_with_self_starting_cars_sends_no_commands_and_meets_reachable_targets():
    r = simulate(scenario())
    assert r.kpis["commands_sent"] == 0
    # one initial read per car to learn its state, nothing else is needed with pushed telemetry
    assert r.kpis["oem_calls"] == 30
    s = r.sessions
    assert s.loc[s["target_reachable"] & ~s["left_early"], "met_target"].all()
    # charging starts the moment the car is plugged in
    charged = s["first_charge_at"].notna()
    lag = (s.loc[charged, "first_charge_at"] - s.loc[charged, "arrival"]).dt.total_seconds()
    assert lag.abs().max() < 1e-3


def test_cars_that_do_not_self_start_are_started_by_the_controller_after_the_webhook_delay():
    sc = scenario(oem_profiles={"default": {"charge_on_plug_in": False, "push_delay_s": 40}})
    r = simulate(sc)
    s = r.sessions
    needs = s["soc_arrival"] < s["target_soc"] - 1e-3
    assert r.kpis["commands_sent"] == int(needs.sum())
    delay = (s.loc[needs, "first_charge_at"] - s.loc[needs, "arrival"]).dt.total_seconds()
    np.testing.assert_allclose(delay, 40.0)
    starts = r.events[(r.events["kind"] == "command") & (r.events["detail"] == "start")]
    assert len(starts) == needs.sum()


def test_without_push_the_controller_polls_and_notices_plug_in_within_the_interval():
    sc = scenario(oem_profiles={"default": {"push": False, "charge_on_plug_in": False}})
    r = simulate(sc)
    s = r.sessions
    needs = s["soc_arrival"] < s["target_soc"] - 1e-3
    delay = (s.loc[needs, "first_charge_at"] - s.loc[needs, "arrival"]).dt.total_seconds()
    assert (delay > 0).all() and (delay <= 900 + 1e-6).all()
    reads = (r.events["kind"] == "command") & (r.events["detail"] == "read")
    end = r.events["time"].max()
    hours = 30 * (end - r.timeseries["slot_start"].iloc[0]).total_seconds() / 3600
    plugged_h = ((s["departure"] - s["arrival"]).dt.total_seconds() / 3600).sum()
    # one read per car per 15 minutes while unplugged, per 30 minutes while plugged in
    assert reads.sum() == pytest.approx(4 * (hours - plugged_h) + 2 * plugged_h, rel=0.03)


def test_replayed_sessions_run_as_given(tmp_path):
    csv = tmp_path / "sessions.csv"
    csv.write_text(
        "vehicle_id,arrival,departure,energy_kwh,battery_kwh,soc_arrival,target_soc,ready_by\n"
        "a,2026-03-02T18:00:00Z,2026-03-03T07:00:00Z,20,50,0.3,,\n"
        "a,2026-03-03T18:30:00Z,2026-03-04T07:00:00Z,10,50,,0.9,2026-03-04T06:00:00Z\n"
        "b,2026-03-02T09:00:00Z,2026-03-02T10:00:00Z,30,60,0.1,0.6,\n"
    )
    (tmp_path / "s.yaml").write_text(
        "sessions:\n  csv: sessions.csv\n  charger: {max_kw: 7}\n  vehicle: {max_ac_kw: 11, efficiency: 1.0}\n"
    )
    r = simulate(tmp_path / "s.yaml")
    s = r.sessions.set_index(["vehicle_id", "arrival"]).sort_index()
    assert len(s) == 3
    a1, a2, b1 = s.iloc[0], s.iloc[1], s.iloc[2]
    assert a1["target_soc"] == pytest.approx(0.7) and a1["soc_arrival"] == pytest.approx(0.3)
    assert a2["soc_arrival"] == pytest.approx(0.7) and a2["target_soc"] == pytest.approx(0.9)
    assert a2["ready_by"] == pd.Timestamp("2026-03-04T06:00:00Z")
    assert a1["energy_kwh"] == pytest.approx(20.0) and a1["met_target"]
    # b: one hour at 7 kW cannot add 30 kWh
    assert b1["energy_kwh"] == pytest.approx(7.0) and not b1["met_target"] and not b1["target_reachable"]
    assert b1["shortfall_kwh"] == pytest.approx(23.0)
    # the replay's own day sets the start, not the scenario default
    assert r.timeseries["slot_start"].iloc[0] == pd.Timestamp("2026-03-02T00:00:00Z")


def test_trips_drain_the_battery_between_sessions():
    r = simulate(scenario(fleet=[{"name": "c", "count": 10, "behaviour": {"plug_in_probability": 1.0}}]))
    s = r.sessions.sort_values(["vehicle_id", "arrival"])
    prev = s.groupby("vehicle_id")["soc_departure"].shift()
    later = prev.notna()
    assert (s.loc[later, "soc_arrival"] < prev[later]).all()


def test_adapter_latency_is_waited_out_in_simulated_time():
    """An adapter that takes 90 s to answer delays the controller's start by exactly that."""
    import twin.sim.oem as sim_oem

    class SlowOEM(sim_oem.SimulatedOEM):
        async def start_charging(self, vehicle_id, *, key):
            await self._clock.sleep(90)
            await super().start_charging(vehicle_id, key=key)

    original = sim_oem.SimulatedOEM
    try:
        import twin.sim.run as run_mod

        run_mod.SimulatedOEM = SlowOEM
        r = sim_run(scenario(oem_profiles={"default": {"charge_on_plug_in": False}}))
    finally:
        run_mod.SimulatedOEM = original
    s = r.sessions
    needs = s["soc_arrival"] < s["target_soc"] - 1e-3
    delay = (s.loc[needs, "first_charge_at"] - s.loc[needs, "arrival"]).dt.total_seconds()
    np.testing.assert_allclose(delay, 90.0)
    results = r.events[(r.events["kind"] == "result") & (r.events["detail"] == "start ok")]
    commands = r.events[(r.events["kind"] == "command") & (r.events["detail"] == "start")]
    lag = results["time"].reset_index(drop=True) - commands["time"].reset_index(drop=True)
    np.testing.assert_allclose(lag.dt.total_seconds(), 90.0, atol=1e-3)
