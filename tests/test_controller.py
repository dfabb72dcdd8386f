"""The sans-I/O controller: decisions from events, with time passed in."""

from datetime import datetime, timedelta, timezone

import pytest

from twin.battery import ChargeCurve
from twin.controller import (
    CallFailed,
    CallSucceeded,
    Controller,
    ControllerConfig,
    Notify,
    PreferencesChanged,
    Read,
    RefreshAuth,
    SessionPlan,
    StartCharging,
    StopCharging,
    Telemetry,
    Uncontrolled,
    Wake,
)
from twin.domain import Preferences
from twin.oem import AuthExpired, RateLimited, TransientUpstream, VehicleAsleep, VehicleReading

T0 = datetime(2026, 1, 12, 18, 0, tzinfo=timezone.utc)
CURVE = ChargeCurve(battery_kwh=60, charger_kw=7, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=1.5)
MIN = timedelta(minutes=1)


def reading(t, soc=0.4, plugged=True, charging=False, vid="car-1"):
    return VehicleReading(vid, t, soc, plugged, charging)


def calls(actions):
    return [a for a in actions if not isinstance(a, Notify)]


def one(actions, kind):
    [a] = calls(actions)
    assert isinstance(a, kind), a
    return a


class Fixed:
    """A plan-following policy with a fixed plan: off until 01:00, on until 05:00."""

    name = "fixed"

    def replan(self, now, tracks, fleet):
        for t in tracks:
            starts = tuple(T0 + timedelta(hours=h) for h in range(14))
            t.plan = SessionPlan(starts, tuple(7 <= h < 11 for h in range(14)), T0 + timedelta(hours=14), 0.8)
        return tracks

    def wants_charging(self, now, track):
        return track.plan is not None and track.plan.on_at(now)

    def next_change(self, now, track):
        return track.plan.next_change(now) if track.plan else None

    def on_forecast(self, now, event):
        return False

    def outlook(self, now, track):
        return track.plan.charge_start_at, track.plan.expected_soc


def make(policy=None, pushes=True, **cfg):
    ctl = Controller(policy or Uncontrolled(), ControllerConfig(**cfg))
    ctl.register("car-1", CURVE, Preferences(target_soc=0.8), pushes=pushes)
    return ctl


def plugged(ctl, soc=0.4, charging=False, t=T0):
    """First read of a plugged-in car; returns the actions that follow it."""
    read = one(ctl.step(t), Read)
    return ctl.step(t, [CallSucceeded(read, reading(t, soc=soc, charging=charging))])


def test_first_step_reads_every_registered_car_once():
    ctl = make()
    ctl.register("car-2", CURVE, Preferences())
    actions = ctl.step(T0)
    assert sorted((type(a), a.vehicle_id) for a in actions) == [(Read, "car-1"), (Read, "car-2")]
    assert ctl.step(T0) == []  # reads in flight: nothing more to do


def test_uncontrolled_starts_a_plugged_in_car_and_tells_the_driver():
    ctl = make()
    actions = plugged(ctl)
    start = one(actions, StartCharging)
    [note] = [a for a in actions if isinstance(a, Notify)]
    assert note.topic == "plan" and note.charge_start_at == T0 and note.expected_soc == pytest.approx(0.8)
    assert note.ready_by == datetime(2026, 1, 13, 7, 0, tzinfo=timezone.utc)
    assert ctl.step(T0, [CallSucceeded(start)]) == []
    assert ctl.tracks["car-1"].charging


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
    # the driver reopens the app (any event for the car): no stop is sent, the car stopped itself
    later = T0 + timedelta(hours=10)
    assert calls(ctl.step(later, [PreferencesChanged("car-1", Preferences(target_soc=0.8))])) == []
    assert not track.charging


def test_acknowledged_command_is_verified_by_a_later_reading():
    ctl = make(policy=Fixed(), verify_after_s=600)
    stop = one(plugged(ctl, charging=True), StopCharging)  # plan says off now
    assert ctl.step(T0, [CallSucceeded(stop)]) == []
    # a webhook confirms: no read is needed
    ctl.step(T0 + MIN, [Telemetry(reading(T0 + MIN, charging=False))])
    assert ctl.stats["commands_verified"] == 1
    assert calls(ctl.step(T0 + 11 * MIN)) == []


def test_car_that_ignores_stop_is_told_again_then_escalated():
    ctl = make(policy=Fixed(), verify_after_s=600, escalate_after=2)
    stop = one(plugged(ctl, charging=True), StopCharging)
    ctl.step(T0, [CallSucceeded(stop)])
    t = T0 + 10 * MIN
    read = one(ctl.step(t), Read)  # no confirmation came: check
    stop2 = one(ctl.step(t, [CallSucceeded(read, reading(t, charging=True, soc=0.42))]), StopCharging)
    ctl.step(t, [CallSucceeded(stop2)])
    t += 10 * MIN
    read = one(ctl.step(t), Read)
    actions = ctl.step(t, [CallSucceeded(read, reading(t, charging=True, soc=0.44))])
    assert calls(actions) == []  # no third stop
    [note] = actions
    assert note.topic == "escalated"
    assert ctl.tracks["car-1"].escalated and ctl.stats["escalations"] == 1
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
    ctl = make()
    start = one(plugged(ctl), StartCharging)
    one(ctl.step(T0, [CallFailed(start, VehicleAsleep("car-1"))]), Wake)
    wake = ctl.tracks["car-1"].pending
    one(ctl.step(T0 + MIN, [CallSucceeded(wake)]), StartCharging)


def test_expired_token_is_refreshed_then_the_call_repeated():
    ctl = make()
    start = one(plugged(ctl), StartCharging)
    refresh = one(ctl.step(T0, [CallFailed(start, AuthExpired("car-1"))]), RefreshAuth)
    one(ctl.step(T0, [CallSucceeded(refresh)]), StartCharging)


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


def test_rate_limit_retry_after_is_honoured():
    ctl = make(retry_base_s=30)
    start = one(plugged(ctl), StartCharging)
    ctl.step(T0, [CallFailed(start, RateLimited("car-1", retry_after_s=600))])
    assert ctl.wake_at == T0 + timedelta(seconds=600)
    assert calls(ctl.step(T0 + timedelta(seconds=599))) == []
    one(ctl.step(T0 + timedelta(seconds=600)), StartCharging)


def test_cached_reading_older_than_the_command_does_not_undo_it():
    ctl = make(policy=Fixed())
    stop = one(plugged(ctl, charging=True), StopCharging)
    ctl.step(T0 + MIN, [CallSucceeded(stop)])
    t = T0 + 11 * MIN
    read = one(ctl.step(t), Read)
    # the cloud answers from a cache taken before the stop: inconclusive, no new stop
    assert calls(ctl.step(t, [CallSucceeded(read, reading(T0, charging=True))])) == []
    assert not ctl.tracks["car-1"].charging
    one(ctl.step(t + 10 * MIN), Read)  # looks again later


def test_cars_without_push_are_polled_at_the_interval():
    ctl = make(pushes=False, poll_interval_s=900, plugged_poll_interval_s=1800)
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


def test_unknown_vehicle_event_is_a_clear_error():
    ctl = make()
    with pytest.raises(KeyError, match="car-9 is not registered"):
        ctl.step(T0, [Telemetry(reading(T0, vid="car-9"))])
