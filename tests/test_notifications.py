"""Drivers are told at plug-in when charging will start and what SoC to expect, and again when
the plan moves materially."""

import pandas as pd

import twin

SCENARIO = {"days": 3, "seed": 9, "fleet": [{"name": "c", "count": 40}],
            "oem_profiles": {"default": {"push_delay_s": 15}}}


def notes(result):
    ev = result.events
    n = ev[ev["kind"] == "notification"].copy()
    n["topic"] = n["detail"].str.split().str[0]
    n["start"] = pd.to_datetime(n["detail"].str.extract(r"start=(\S+)")[0], utc=True, format="ISO8601")
    n["expected_soc"] = n["detail"].str.extract(r"expected_soc=(\S+)")[0].astype(float)
    return n


def test_every_plug_in_gets_a_plan_notification_with_the_planned_start():
    r = twin.simulate(SCENARIO, "smart")
    n = notes(r)
    plans = n[n["topic"] == "plan"]
    s = r.sessions
    assert len(plans) == len(s)
    # sent right after the plug-in webhook, per session
    sessions = s.sort_values("arrival")[["vehicle_id", "arrival", "target_soc"]]
    sessions["arrival"] = sessions["arrival"].astype(plans["time"].dtype)
    merged = pd.merge_asof(plans.sort_values("time"), sessions, left_on="time", right_on="arrival", by="vehicle_id")
    assert ((merged["time"] - merged["arrival"]).dt.total_seconds().round(3) == 15).all()
    # smart waits for cheap slots: most start later than plug-in, and the start is what happened
    assert (merged["start"] > merged["time"]).mean() > 0.5
    # (the car started by itself at plug-in and was stopped; its next segment is the plan's)
    waited = merged[merged["start"] > merged["time"] + pd.Timedelta(minutes=1)]
    segments = r.charging
    lags = []
    for row in waited.itertuples():
        later = segments[(segments["vehicle_id"] == row.vehicle_id) & (segments["start"] > row.time)]
        lags.append((later["start"].min() - row.start).total_seconds())
    assert pd.Series(lags).between(0, 120).mean() > 0.9
    assert (merged["expected_soc"] <= merged["target_soc"] + 1e-9).all()


def test_uncontrolled_tells_drivers_charging_starts_now():
    r = twin.simulate(SCENARIO, "uncontrolled")
    plans = notes(r)
    plans = plans[plans["topic"] == "plan"]
    charging = plans.dropna(subset=["start"])
    assert ((charging["start"] - charging["time"]).abs() < pd.Timedelta(seconds=1)).all()
