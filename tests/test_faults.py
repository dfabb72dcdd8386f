"""Smart control under a hostile OEM cloud: 20 % failed calls and 10 % of cars ignoring stop."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

import twin

ROOT = Path(__file__).resolve().parents[1]
# The first check of a stop (10 min) plus the controller's escalate-within delay (30 min),
# with room for latency and back-off.
GRACE = pd.Timedelta(minutes=50)


@pytest.fixture(scope="module")
def run():
    data = yaml.safe_load((ROOT / "scenarios" / "unreliable_cloud.yaml").read_text())
    data["days"] = 5
    data["fleet"][0]["count"], data["fleet"][1]["count"] = 108, 12
    return twin.simulate(data, "smart")


def test_ready_by_is_met_for_reachable_sessions(run):
    s = run.sessions
    fair = s["target_reachable"] & ~s["left_early"]
    assert fair.sum() > 300
    assert s.loc[fair, "met_target"].mean() >= 0.99
    assert run.kpis["commands_failed"] > 0.1 * run.kpis["commands_sent"]  # the cloud really failed


def test_no_car_keeps_charging_against_the_plan_without_an_escalation(run):
    ev, charging, sessions = run.events, run.charging, run.sessions
    acked = ev[(ev["kind"] == "result") & (ev["detail"] == "stop ok")]
    escalations = ev[(ev["kind"] == "notification") & ev["detail"].str.startswith("escalated")]
    starts = ev[(ev["kind"] == "command") & (ev["detail"] == "start")]
    disobeyed = 0
    for row in acked.itertuples():
        # the segment that was running when the stop was acknowledged
        seg = charging[(charging["vehicle_id"] == row.vehicle_id) & (charging["start"] <= row.time)
                       & (charging["end"] > row.time + GRACE)]
        if seg.empty:
            continue
        seg = seg.iloc[0]
        restarted = starts[(starts["vehicle_id"] == row.vehicle_id) & starts["time"].between(row.time, seg["end"])]
        if not restarted.empty:
            continue  # the plan switched back on: charging is not against it
        disobeyed += 1
        session = sessions.set_index("session_id").loc[seg["session_id"]]
        escalated = escalations[(escalations["vehicle_id"] == row.vehicle_id)
                                & escalations["time"].between(session["arrival"], row.time + GRACE)]
        assert not escalated.empty, f"{row.vehicle_id} charged on after a stop at {row.time} with no escalation"
    assert disobeyed > 10


def test_only_cars_that_ignored_stop_are_escalated(run):
    ev = run.events
    ignored = set(ev.loc[(ev["kind"] == "fault") & (ev["detail"] == "stop ignored"), "vehicle_id"])
    escalated = set(ev.loc[(ev["kind"] == "notification") & ev["detail"].str.startswith("escalated"), "vehicle_id"])
    stubborn = set(run.vehicles.loc[run.vehicles["ignores_stop"], "vehicle_id"])
    assert escalated and escalated <= ignored == stubborn
    assert run.kpis["cars_escalated"] == len(ev[(ev["kind"] == "notification") & ev["detail"].str.startswith("escalated")])
