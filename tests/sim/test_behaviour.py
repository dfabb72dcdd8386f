"""Drivers' behaviour: generated daily cycles follow the scenario's distributions."""

import numpy as np
import pandas as pd
import pytest

from twin.scenario import parse_scenario
from twin.sim.behaviour import generate_fleet


def fleet(n=2000, days=7, **behaviour):
    sc = parse_scenario({"days": days, "fleet": [{"name": "c", "count": n, "behaviour": behaviour}]})
    return sc, generate_fleet(sc.fleet, sc.start, days, np.random.default_rng(1))


def minutes(ts):
    return ts.dt.hour * 60 + ts.dt.minute + ts.dt.second / 60


def test_daily_cycle_is_consistent():
    sc, (vehicles, sessions) = fleet()
    assert len(vehicles) == 2000 and vehicles["vehicle_id"].is_unique
    assert (sessions["departure"] > sessions["arrival"]).all()
    assert (sessions["ready_by"] > sessions["arrival"]).all()
    assert (sessions["ready_by"] - sessions["arrival"] <= pd.Timedelta(days=1)).all()
    nxt = sessions.groupby("vehicle_id")["arrival"].shift(-1)
    has = nxt.notna()
    assert (nxt[has] > sessions.loc[has, "departure"]).all()
    # only the first session of each car has a given SoC; later ones follow from trips
    first = ~sessions["vehicle_id"].duplicated()
    assert sessions.loc[first, "soc_arrival"].between(0.25, 0.6).all()
    assert sessions.loc[~first, "soc_arrival"].isna().all()
    assert (sessions.loc[first, "trip_kwh"] == 0).all()
    assert (sessions.loc[~first, "trip_kwh"] > 0).all()


def test_distributions_match_the_scenario():
    sc, (vehicles, sessions) = fleet()
    b = sc.fleet[0].behaviour
    # plug-in probability 0.75 per day
    assert len(sessions) / (2000 * 7) == pytest.approx(b.plug_in_probability, abs=0.01)
    arr = minutes(sessions["arrival"])
    assert arr.between(15 * 60, 23 * 60 + 30).all()
    # truncated at +/- ~2 sd, the mean stays close to 18:30
    assert arr.mean() == pytest.approx(18.5 * 60, abs=10)
    dep = minutes(sessions["departure"])
    assert dep.between(5 * 60, 10 * 60 + 30).all()
    ready = pd.to_datetime(vehicles["ready_by"], format="%H:%M")
    assert (ready.dt.second == 0).all()
    # declared ready-by and actual departure are separate draws: some drivers leave early
    early = (sessions["departure"] < sessions["ready_by"]).mean()
    assert 0.1 < early < 0.4


def test_trip_energy_follows_distance_and_consumption():
    sc, (vehicles, sessions) = fleet(n=3000, days=5, plug_in_probability=1.0,
                                     daily_distance={"mean_km": 40, "sd_km": 20})
    later = sessions["trip_kwh"][sessions["trip_kwh"] > 0]
    # every day plugged in: one day of driving between sessions, 40 km × 0.18 kWh/km on average
    assert later.mean() == pytest.approx(40 * 0.18, rel=0.03)
    assert later.std() == pytest.approx(20 * 0.18, rel=0.08)


def test_start_mid_day_drops_cycles_before_it():
    sc = parse_scenario({"days": 2, "start": "2026-01-12T20:00:00Z", "fleet": [{"name": "c", "count": 200}]})
    _, sessions = generate_fleet(sc.fleet, sc.start, 2, np.random.default_rng(1))
    assert (sessions["arrival"] >= pd.Timestamp("2026-01-12T20:00:00Z")).all()
    first = ~sessions["vehicle_id"].duplicated()
    assert sessions.loc[first, "soc_arrival"].notna().all()
