"""The sans-I/O controller: decisions from events, with time passed in."""

import itertools
import json
from datetime import datetime, timedelta, timezone

import pytest

from twin.battery import ChargeCurve
from twin.control import (
    AuthorizationRestored, CallFailed, CallSucceeded, Controller, ControllerConfig, Link, ManagedVehicle, Notify,
    PlanRequest, PlansReady, PreferencesChanged, Read, Session, SessionPlan, SetChargeLimit, SetChargingCurrent,
    StartCharging, StopCharging, Telemetry, Uncontrolled, Wake,
)
from twin.control.policies import PlanFollower
from twin.domain import Preferences
from twin.oem import (
    AuthExpired, Capabilities, CommandRejected, RateBudget, RateLimited, ReauthorizationRequired, TransientUpstream,
    UnknownVehicle, VehicleAsleep, VehicleReading,
)

T0 = datetime(2026, 1, 12, 18, 0, tzinfo=timezone.utc)
CURVE = ChargeCurve(battery_kwh=60, charger_kw=7, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=1.5)
MIN = timedelta(minutes=1)
SLEEPY = Capabilities(needs_wake=True)
AMPS = Capabilities(min_amps=6, max_amps=32, volts=230, phases=1)


def reading(t, soc=0.4, plugged=True, charging=False, vid="car-1"):
    return VehicleReading(vid, t, soc, plugged, charging)


def calls(actions):
    return [a for a in actions if not isinstance(a, Notify)]


def notes(actions):
    return [a for a in actions if isinstance(a, Notify)]


def one(actions, kind):
    [a] = calls(actions)
    assert isinstance(a, kind), a
    return a


class Fixed(PlanFollower):
    """A plan-following policy with a fixed plan: off until 01:00, on (``level``) until 05:00."""

    name = "fixed"

    def __init__(self, level=7.0, modulated=False):
        self.level, self.modulated = level, modulated

    def plan(self):
        return SessionPlan(T0, timedelta(hours=1), tuple(self.level if 7 <= h < 11 else 0.0 for h in range(14)),
                           0.8, self.modulated)

    def prepare(self, now, tracks, fleet):
        plans = {t.vehicle_id: self.plan() for t in tracks}

        class Job:
            vehicle_ids = tuple(plans)

            def run(self):
                return plans

        return Job()


def make(policy=None, caps=Capabilities(), account="", **cfg):
    ids = itertools.count(1)
    ctl = Controller(policy or Uncontrolled(), ControllerConfig(**cfg), new_id=lambda: f"a{next(ids)}")
    ctl.register(ManagedVehicle("car-1", CURVE, caps, account, "oem"), Preferences(target_soc=0.8))
    return ctl


def plugged(ctl, soc=0.4, charging=False, t=T0, vid="car-1"):
    """First read of a plugged-in car; returns the actions that follow it."""
    read = one([a for a in ctl.step(t) if a.vehicle_id == vid], Read)
    return ctl.step(t, [CallSucceeded(read, reading(t, soc=soc, charging=charging, vid=vid))])


def test_first_step_reads_every_registered_car_once():
    ctl = make()
    ctl.register(ManagedVehicle("car-2", CURVE), Preferences())
    actions = ctl.step(T0)
    assert sorted((type(a), a.vehicle_id) for a in actions) == [(Read, "car-1"), (Read, "car-2")]
    assert len({a.id for a in actions}) == 2  # every action has its own host-supplied id
    assert ctl.step(T0) == []  # reads in flight: nothing more to do
    assert ctl.tracks["car-1"].link is Link.CALLING


def test_uncontrolled_starts_a_plugged_in_car_and_tells_the_driver():
    ctl = make()
    actions = plugged(ctl)
    start = one(actions, StartCharging)
    [note] = notes(actions)
    assert note.topic == "plan" and note.charge_start_at == T0 and note.expected_soc == pytest.approx(0.8)
    assert note.ready_by == datetime(2026, 1, 13, 7, 0, tzinfo=timezone.utc)
    assert ctl.step(T0, [CallSucceeded(start)]) == []
    track = ctl.tracks["car-1"]
    assert track.charging and track.session is Session.PLUGGED and track.link is Link.READY


def test_no_command_when_the_car_already_charges_or_is_at_target():
    ctl = make()
    assert calls(plugged(ctl, charging=True)) == []
    assert calls(ctl.step(T0 + 3 * MIN, [Telemetry(reading(T0 + 3 * MIN, soc=0.8))])) == []


def test_soc_is_estimated_between_readings_and_the_car_is_known_to_stop_at_its_limit():
    ctl = make()
    plugged(ctl, soc=0.5, charging=True)
    track = ctl.tracks["car-1"]
    # 7 kW × 0.9 into 60 kWh: +0.105 per hour
    assert track.soc_estimate(T0 + timedelta(hours=2)) == pytest.approx(0.5 + 0.21)
    assert track.soc_estimate(T0 + timedelta(hours=10)) == pytest.approx(0.8)
    later = T0 + timedelta(hours=10)
    assert calls(ctl.step(later, [PreferencesChanged("car-1", Preferences(target_soc=0.8))])) == []
    assert not track.charging


def test_acknowledged_command_is_verified_by_a_later_reading():
    ctl = make(policy=Fixed(), verify_after_s=600)
    stop = one(plugged(ctl, charging=True), StopCharging)  # plan says off now
    assert ctl.step(T0, [CallSucceeded(stop)]) == []
    ctl.step(T0 + MIN, [Telemetry(reading(T0 + MIN, charging=False))])
    assert ctl.stats["commands_verified"] == 1
    assert calls(ctl.step(T0 + 11 * MIN)) == []


def test_car_that_ignores_stop_is_told_again_then_escalated():
    ctl = make(policy=Fixed(), verify_after_s=600, escalate_after=2)
    stop = one(plugged(ctl, charging=True), StopCharging)
    ctl.step(T0, [CallSucceeded(stop)])
    t = T0 + 10 * MIN
    read = one(ctl.step(t), Read)
    stop2 = one(ctl.step(t, [CallSucceeded(read, reading(t, charging=True, soc=0.42))]), StopCharging)
    ctl.step(t, [CallSucceeded(stop2)])
    t += 10 * MIN
    read = one(ctl.step(t), Read)
    actions = ctl.step(t, [CallSucceeded(read, reading(t, charging=True, soc=0.44))])
    assert calls(actions) == []  # no third stop
    assert [n.topic for n in notes(actions)] == ["escalated"]
    assert ctl.tracks["car-1"].session is Session.ESCALATED and ctl.stats["escalations"] == 1
    assert ctl.stats["commands_retried"] == 1 and ctl.stats["disobeyed"] == 2


def test_plan_is_followed_at_slot_boundaries():
    ctl = make(policy=Fixed())
    stop = one(plugged(ctl, charging=True), StopCharging)
    ctl.step(T0, [CallSucceeded(stop), Telemetry(reading(T0, charging=False))])
    while ctl.wake_at < T0 + timedelta(hours=7):  # stale timers (verification) wake us for nothing
        assert calls(ctl.step(ctl.wake_at)) == []
    assert ctl.wake_at == T0 + timedelta(hours=7)
    start = one(ctl.step(T0 + timedelta(hours=7)), StartCharging)
    ctl.step(T0 + timedelta(hours=7), [CallSucceeded(start)])


def test_asleep_car_is_woken_then_commanded():
    ctl = make(caps=SLEEPY)
    start = one(plugged(ctl), StartCharging)
    one(ctl.step(T0, [CallFailed(start, VehicleAsleep("car-1"))]), Wake)
    wake = ctl.tracks["car-1"].pending
    one(ctl.step(T0 + MIN, [CallSucceeded(wake)]), StartCharging)


def test_a_car_that_cannot_be_woken_is_backed_off_not_woken():
    ctl = make(caps=Capabilities(needs_wake=False), retry_base_s=30)
    start = one(plugged(ctl), StartCharging)
    assert calls(ctl.step(T0, [CallFailed(start, VehicleAsleep("car-1"))])) == []
    assert ctl.tracks["car-1"].link is Link.BACKOFF and ctl.wake_at == T0 + timedelta(seconds=30)


def test_a_rejected_access_token_is_retried_after_a_back_off():
    # the head refreshes tokens itself; the controller only sees a transient rejection
    ctl = make(retry_base_s=30)
    start = one(plugged(ctl), StartCharging)
    assert calls(ctl.step(T0, [CallFailed(start, AuthExpired("car-1"))])) == []
    one(ctl.step(T0 + timedelta(seconds=30)), StartCharging)


def test_failed_command_is_retried_with_exponential_backoff():
    ctl = make(retry_base_s=30)
    start = one(plugged(ctl), StartCharging)
    now = T0
    delays = []
    for _ in range(3):
        assert calls(ctl.step(now, [CallFailed(start, TransientUpstream("car-1", "502"))])) == []
        wake = ctl.wake_at
        delays.append((wake - now).total_seconds())
        assert calls(ctl.step(wake - timedelta(seconds=1))) == []  # not before the back-off
        start = one(ctl.step(wake), StartCharging)
        now = wake
    assert delays == [30, 60, 120]
    assert ctl.stats["commands_failed"] == 3 and ctl.stats["commands_retried"] == 3


def test_back_off_never_sleeps_through_the_last_chance_to_start():
    ctl = make(retry_base_s=30, retry_max_s=1800, backoff_slack_share=0.25)
    # 0.4 -> 0.8 of 60 kWh at 7 kW x 0.9 takes 3.81 h; ready-by is 07:00 next day
    start = one(plugged(ctl, t=T0 + timedelta(hours=9)), StartCharging)
    now = T0 + timedelta(hours=9)
    track = ctl.tracks["car-1"]
    track.attempts = 10  # a long run of failures: exponential back-off would say 30 min
    ctl.step(now, [CallFailed(start, TransientUpstream("car-1", "502"))])
    slack = (track.deadline - now).total_seconds() - CURVE.hours_to(0.4, 0.8) * 3600
    assert (track.not_before - now).total_seconds() == pytest.approx(0.25 * slack)
    assert (track.not_before - now).total_seconds() < 1800


def test_rate_limit_retry_after_is_honoured_without_growing_the_back_off():
    ctl = make(retry_base_s=30)
    start = one(plugged(ctl), StartCharging)
    ctl.step(T0, [CallFailed(start, RateLimited("car-1", retry_after_s=600))])
    assert ctl.wake_at == T0 + timedelta(seconds=600)
    assert calls(ctl.step(T0 + timedelta(seconds=599))) == []
    one(ctl.step(T0 + timedelta(seconds=600)), StartCharging)
    assert ctl.tracks["car-1"].attempts == 0


def test_an_account_wide_429_holds_every_car_of_the_account():
    ctl = make(account="family")
    ctl.register(ManagedVehicle("car-2", CURVE, Capabilities(), "family", "oem"), Preferences())
    first = ctl.step(T0)
    r1 = next(a for a in first if a.vehicle_id == "car-1")
    r2 = next(a for a in first if a.vehicle_id == "car-2")
    ctl.step(T0, [CallFailed(r1, RateLimited("car-1", 300, scope="account"))])
    # car-2's read comes back fine, but a new call for it must also wait for the account
    ctl.step(T0 + MIN, [CallSucceeded(r2, reading(T0 + MIN, vid="car-2", plugged=False))])
    ctl.tracks["car-2"].read_due = T0 + MIN
    assert calls(ctl.step(T0 + MIN, [Telemetry(reading(T0 + MIN, vid="car-2", plugged=False))])) == []
    got = ctl.step(T0 + timedelta(seconds=300))
    assert sorted(a.vehicle_id for a in calls(got)) == ["car-1", "car-2"]


def test_calls_stay_inside_the_heads_budget():
    ctl = make(retry_base_s=30)
    ctl.set_rate_limits("oem", (RateBudget("vehicle", 2, 3600.0),))
    read = one(ctl.step(T0), Read)
    start = one(ctl.step(T0, [CallSucceeded(read, reading(T0))]), StartCharging)
    # two calls used: the verification read after the start must wait for the hour to roll
    ctl.step(T0 + MIN, [CallSucceeded(start)])
    assert calls(ctl.step(T0 + 11 * MIN)) == []
    assert ctl.wake_at == T0 + timedelta(hours=1)
    one(ctl.step(T0 + timedelta(hours=1)), Read)


def test_a_revoked_account_stops_all_its_cars_until_it_is_linked_again():
    ctl = make(account="fleet")
    ctl.register(ManagedVehicle("car-2", CURVE, Capabilities(), "fleet", "oem"), Preferences())
    first = ctl.step(T0)
    r1, r2 = sorted(calls(first), key=lambda a: a.vehicle_id)
    actions = ctl.step(T0, [CallFailed(r1, ReauthorizationRequired("car-1", "fleet"))])
    assert [n.topic for n in notes(actions)] == ["reauthorize"]
    assert ctl.tracks["car-1"].link is Link.REAUTH
    # car-2's call was in flight; when it ends, car-2 is held too
    ctl.step(T0, [CallSucceeded(r2, reading(T0, vid="car-2"))])
    assert ctl.tracks["car-2"].link is Link.REAUTH
    assert calls(ctl.step(T0 + timedelta(hours=2))) == []
    restored = ctl.step(T0 + timedelta(hours=2), [AuthorizationRestored("fleet")])
    assert sorted((type(a), a.vehicle_id) for a in calls(restored)) == [(Read, "car-1"), (Read, "car-2")]
    assert ctl.stats["reauthorizations"] == 1


def test_a_car_the_oem_no_longer_knows_is_dropped_and_reported():
    ctl = make()
    start = one(plugged(ctl), StartCharging)
    actions = ctl.step(T0, [CallFailed(start, UnknownVehicle("car-1"))])
    assert [n.topic for n in notes(actions)] == ["unregistered"] and calls(actions) == []
    assert ctl.tracks["car-1"].link is Link.GONE
    assert calls(ctl.step(T0 + timedelta(hours=1), [Telemetry(reading(T0 + timedelta(hours=1)))])) == []


@pytest.mark.parametrize("reason", ["not_plugged_in", "other"])
def test_a_refused_command_is_not_repeated_blindly(reason):
    ctl = make(retry_base_s=30)
    start = one(plugged(ctl), StartCharging)
    # look at the car again instead of re-sending the command
    one(ctl.step(T0, [CallFailed(start, CommandRejected("car-1", reason))]), Read)
    assert ctl.stats["commands_rejected"] == 1 and ctl.stats["commands_retried"] == 0


def test_a_start_refused_as_already_charging_counts_as_done():
    ctl = make()
    start = one(plugged(ctl), StartCharging)
    ctl.step(T0, [CallFailed(start, CommandRejected("car-1", "already_charging"))])
    track = ctl.tracks["car-1"]
    assert track.charging and track.expect is not None and ctl.stats["commands_failed"] == 0


def test_a_start_refused_as_fully_charged_believes_the_car():
    ctl = make()
    start = one(plugged(ctl, soc=0.79), StartCharging)
    ctl.step(T0, [CallFailed(start, CommandRejected("car-1", "fully_charged"))])
    track = ctl.tracks["car-1"]
    assert not track.needs_charge(T0) and not track.charging


def test_modulated_plans_are_dispatched_as_a_charging_current():
    ctl = make(policy=Fixed(level=4.6, modulated=True), caps=AMPS)
    t = T0 + timedelta(hours=7)
    actions = plugged(ctl, t=t)
    current = one(actions, SetChargingCurrent)
    assert current.amps == 20  # 4.6 kW at 230 V single phase
    start = one(ctl.step(t, [CallSucceeded(current)]), StartCharging)
    ctl.step(t, [CallSucceeded(start)])
    track = ctl.tracks["car-1"]
    assert track.cap_kw == pytest.approx(4.6)
    # the estimate follows the capped power: 4.6 kW x 0.9 / 60 kWh per hour
    assert track.soc_estimate(t + timedelta(hours=1)) == pytest.approx(0.4 + 4.6 * 0.9 / 60)


def test_a_car_without_current_control_follows_a_modulated_plan_on_off():
    ctl = make(policy=Fixed(level=4.6, modulated=True))
    one(plugged(ctl, t=T0 + timedelta(hours=7)), StartCharging)


def test_a_lowered_target_sets_the_cars_charge_limit_where_it_can():
    ctl = make(caps=Capabilities(can_set_charge_limit=True))
    start = one(plugged(ctl), StartCharging)
    ctl.step(T0, [CallSucceeded(start), Telemetry(reading(T0, charging=True))])
    limit = one(ctl.step(T0 + MIN, [PreferencesChanged("car-1", Preferences(target_soc=0.6))]), SetChargeLimit)
    assert limit.soc == 0.6
    ctl.step(T0 + MIN, [CallSucceeded(limit)])
    assert ctl.tracks["car-1"].limit == 0.6


def test_events_for_unknown_cars_and_stale_outcomes_are_counted_and_dropped():
    ctl = make()
    assert ctl.step(T0, [Telemetry(reading(T0, vid="car-9"))]) != []  # car-1's first read still goes out
    assert ctl.stats["events_dropped"] == 1
    ctl.step(T0, [CallSucceeded(Read("car-1", "not-the-pending-one"), reading(T0))])
    assert ctl.stats["stale_outcomes"] == 1 and ctl.tracks["car-1"].link is Link.CALLING


def test_planning_can_run_off_the_loop_and_holds_the_car_until_its_plan_lands():
    ctl = make(policy=Fixed())
    ctl.inline_planning = False
    actions = plugged(ctl, charging=True)
    [request] = [a for a in actions if isinstance(a, PlanRequest)]
    assert calls([a for a in actions if not isinstance(a, PlanRequest)]) == []  # held: no stop yet
    ready = PlansReady(request.id, request.job.run())
    actions = ctl.step(T0 + MIN, [ready])
    one(actions, StopCharging)
    assert [n.topic for n in notes(actions)] == ["plan"]


def test_a_failed_planning_job_charges_the_car_flat_out_and_plans_again_later():
    ctl = make(policy=Fixed(), replan_after_failure_s=300)
    ctl.inline_planning = False
    request = next(a for a in plugged(ctl) if isinstance(a, PlanRequest))
    one(ctl.step(T0, [PlansReady(request.id, {}, error="SolverFailed: boom")]), StartCharging)
    assert ctl.stats["planning_failures"] == 1
    assert ctl.tracks["car-1"].plan.on_at(T0 + timedelta(hours=2))
    again = ctl.step(T0 + timedelta(seconds=300))
    assert any(isinstance(a, PlanRequest) for a in again)


def test_snapshot_is_json_and_restore_rebuilds_the_same_state():
    ctl = make(policy=Fixed(), caps=SLEEPY, retry_base_s=30)
    stop = one(plugged(ctl, charging=True), StopCharging)
    ctl.step(T0, [CallFailed(stop, TransientUpstream("car-1", "502"))])  # back-off pending
    snap = json.loads(json.dumps(ctl.snapshot(), allow_nan=False))
    vehicle = ManagedVehicle("car-1", CURVE, SLEEPY, "", "oem")
    back = Controller.restore(snap, policy=Fixed(), vehicles=[vehicle], new_id=lambda: "new",
                              config=ControllerConfig(retry_base_s=30))
    assert json.loads(json.dumps(back.snapshot())) == snap
    t = back.tracks["car-1"]
    assert t.link is Link.BACKOFF and t.plan == ctl.tracks["car-1"].plan and t.curve is CURVE
    # the back-off timer survived: the stop is sent again at the same instant by both
    assert back.wake_at == ctl.wake_at
    when = ctl.wake_at
    assert [type(a) for a in calls(back.step(when))] == [type(a) for a in calls(ctl.step(when))] == [StopCharging]


def test_restore_sends_calls_in_flight_again_with_their_ids():
    ctl = make()
    start = one(plugged(ctl), StartCharging)
    snap = json.loads(json.dumps(ctl.snapshot()))
    back = Controller.restore(snap, policy=Uncontrolled(), vehicles=[ManagedVehicle("car-1", CURVE)],
                              new_id=lambda: "new")
    [again] = calls(back.step(T0 + MIN))
    assert isinstance(again, StartCharging) and again.id == start.id  # the same idempotency key
    with pytest.raises(ValueError, match="not registered"):
        Controller.restore(snap, policy=Uncontrolled(), vehicles=[], new_id=lambda: "x")
    with pytest.raises(ValueError, match="'uncontrolled' controller"):
        Controller.restore(snap, policy=Fixed(), vehicles=[ManagedVehicle("car-1", CURVE)], new_id=lambda: "x")


def test_cars_without_push_are_polled_at_the_interval():
    ctl = make(caps=Capabilities(pushes_telemetry=False), poll_interval_s=900, plugged_poll_interval_s=1800)
    read = one(ctl.step(T0), Read)
    assert ctl.step(T0, [CallSucceeded(read, reading(T0, plugged=False))]) == []
    assert ctl.wake_at == T0 + timedelta(seconds=900)
    read2 = one(ctl.step(T0 + timedelta(seconds=900)), Read)
    ctl.step(T0 + timedelta(seconds=900), [CallSucceeded(read2, reading(T0 + timedelta(seconds=900), charging=True))])
    assert ctl.wake_at == T0 + timedelta(seconds=900 + 1800)


def test_stop_is_sent_when_the_driver_lowers_the_target():
    ctl = make()
    plugged(ctl, charging=True)
    actions = ctl.step(T0, [PreferencesChanged("car-1", Preferences(target_soc=0.3))])
    one(actions, StopCharging)


def test_unregistering_drops_the_car():
    ctl = make()
    ctl.unregister("car-1")
    assert ctl.step(T0) == [] and "car-1" not in ctl.tracks


def test_a_plan_that_ran_out_short_is_planned_again_once():
    # the fixed plan charges 01:00-05:00 and expects the target; the car is still short at
    # 05:00 (it started late): one re-plan, and a policy that answers with the same plan is not
    # asked again at the same instant (which would never let time move on)
    policy = Fixed()
    asked = []
    prepare = policy.prepare
    policy.prepare = lambda now, tracks, fleet: asked.append(now) or prepare(now, tracks, fleet)
    ctl = make(policy=policy)
    stop = one(plugged(ctl, charging=True), StopCharging)
    ctl.step(T0, [CallSucceeded(stop), Telemetry(reading(T0, charging=False))])
    assert asked == [T0]
    end = T0 + timedelta(hours=11)  # 05:00, the plan is over
    track = ctl.tracks["car-1"]
    news = reading(end - MIN, soc=0.4, charging=False)  # as estimated: no deviation to re-plan on
    assert calls(ctl.step(end, [Telemetry(news)])) == []
    for _ in range(3):
        assert calls(ctl.step(end)) == []
    assert asked == [T0, end] and track.short_replanned
    assert ctl.wake_at is None or ctl.wake_at > end
