"""The sans-I/O controller: decisions from events, with time passed in."""

from datetime import datetime, timedelta, timezone

import pytest

from twin.battery import ChargeCurve
from twin.controller import (
    CallFailed,
    CallSucceeded,
    Controller,
    ControllerConfig,
    Read,
    StartCharging,
    StopCharging,
    Telemetry,
    Uncontrolled,
)
from twin.domain import Preferences
from twin.oem import RateLimited, TransientUpstream, VehicleReading

T0 = datetime(2026, 1, 12, 18, 0, tzinfo=timezone.utc)
CURVE = ChargeCurve(battery_kwh=60, charger_kw=7, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=1.5)


def reading(t, soc=0.4, plugged=True, charging=False, vid="car-1"):
    return VehicleReading(vid, t, soc, plugged, charging)


def make(pushes=True, **cfg):
    ctl = Controller(Uncontrolled(), ControllerConfig(**cfg))
    ctl.register("car-1", CURVE, Preferences(target_soc=0.8), pushes=pushes)
    return ctl


def test_first_step_reads_every_registered_car_once():
    ctl = make()
    ctl.register("car-2", CURVE, Preferences())
    actions = ctl.step(T0)
    assert sorted((type(a), a.vehicle_id) for a in actions) == [(Read, "car-1"), (Read, "car-2")]
    assert ctl.step(T0) == []  # reads in flight: nothing more to do


def test_uncontrolled_starts_a_plugged_in_car_that_is_not_charging():
    ctl = make()
    [read] = ctl.step(T0)
    [start] = ctl.step(T0, [CallSucceeded(read, reading(T0))])
    assert isinstance(start, StartCharging) and start.vehicle_id == "car-1"
    assert ctl.step(T0, [CallSucceeded(start)]) == []
    assert ctl.tracks["car-1"].charging


def test_no_command_when_the_car_already_charges_or_is_at_target():
    ctl = make()
    [read] = ctl.step(T0)
    assert ctl.step(T0, [CallSucceeded(read, reading(T0, charging=True))]) == []
    assert ctl.step(T0, [Telemetry(reading(T0 + timedelta(hours=3), soc=0.8, charging=False))]) == []


def test_unplugged_car_gets_no_command():
    ctl = make()
    [read] = ctl.step(T0)
    assert ctl.step(T0, [CallSucceeded(read, reading(T0, plugged=False))]) == []


def test_stale_reading_is_ignored():
    ctl = make()
    [read] = ctl.step(T0)
    ctl.step(T0, [CallSucceeded(read, reading(T0, charging=True))])
    # a delayed push taken before what we already know must not override it
    assert ctl.step(T0 + timedelta(minutes=1), [Telemetry(reading(T0 - timedelta(minutes=5), plugged=False))]) == []
    assert ctl.tracks["car-1"].plugged_in


def test_failed_command_is_retried_with_exponential_backoff():
    ctl = make(retry_base_s=30)
    [read] = ctl.step(T0)
    [start] = ctl.step(T0, [CallSucceeded(read, reading(T0))])
    now = T0
    delays = []
    for _ in range(3):
        assert ctl.step(now, [CallFailed(start, TransientUpstream("car-1", "502"))]) == []
        wake = ctl.wake_at
        delays.append((wake - now).total_seconds())
        assert ctl.step(wake - timedelta(seconds=1)) == []  # not before the back-off
        [start] = ctl.step(wake)
        assert isinstance(start, StartCharging)
        now = wake
    assert delays == [30, 60, 120]


def test_rate_limit_retry_after_is_honoured():
    ctl = make(retry_base_s=30)
    [read] = ctl.step(T0)
    [start] = ctl.step(T0, [CallSucceeded(read, reading(T0))])
    ctl.step(T0, [CallFailed(start, RateLimited("car-1", retry_after_s=600))])
    assert ctl.wake_at == T0 + timedelta(seconds=600)
    assert ctl.step(T0 + timedelta(seconds=599)) == []
    assert isinstance(ctl.step(T0 + timedelta(seconds=600))[0], StartCharging)


def test_cars_without_push_are_polled_at_the_interval():
    ctl = make(pushes=False, poll_interval_s=900)
    [read] = ctl.step(T0)
    assert ctl.step(T0, [CallSucceeded(read, reading(T0, plugged=False))]) == []
    assert ctl.wake_at == T0 + timedelta(seconds=900)
    [read2] = ctl.step(T0 + timedelta(seconds=900))
    assert isinstance(read2, Read)


def test_stop_is_sent_when_policy_no_longer_wants_charge():
    ctl = make()
    [read] = ctl.step(T0)
    ctl.step(T0, [CallSucceeded(read, reading(T0, charging=True))])
    # the driver lowers the target below the current SoC
    from twin.controller import PreferencesChanged
    [stop] = ctl.step(T0, [PreferencesChanged("car-1", Preferences(target_soc=0.3))])
    assert isinstance(stop, StopCharging)


def test_unknown_vehicle_event_is_a_clear_error():
    ctl = make()
    with pytest.raises(KeyError, match="car-9 is not registered"):
        ctl.step(T0, [Telemetry(reading(T0, vid="car-9"))])
