"""SimulatedOEM behaves like the real clouds (Smartcar, Tesla Fleet): latency, failures, quotas per
scope, sleep, cached and stepped SoC, per-account tokens, ignored stops, current and limit control.
The behaviour every head shares is in tests/conformance/; this is what only the simulator has."""

import asyncio
from datetime import datetime, timezone

import numpy as np
import pytest

from twin.battery import ChargeCurve
from twin.host.aio import AsyncClock, VirtualTimeLoop
from twin.oem import (
    CommandRejected, RateLimited, ReauthorizationRequired, TransientUpstream, UnknownVehicle, VehicleAsleep,
)
from twin.scenario import OEMProfile
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

T0 = datetime(2026, 1, 12, tzinfo=timezone.utc)
CURVE = ChargeCurve(battery_kwh=60, charger_kw=7, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=1.5)


class Cloud:
    """``cars`` cars (``car``, ``car2``, ...) behind a SimulatedOEM, on virtual asyncio time."""

    def __init__(self, ignores_stop=False, seed=0, cars=1, accounts=None, **profile):
        self.loop = VirtualTimeLoop()
        self.clock = AsyncClock(T0, self.loop)
        self.cars = [Car(i, "car" if i == 0 else f"car{i + 1}", CURVE, soc=0.4, autostart=False) for i in range(cars)]
        self.car = self.cars[0]
        self.world = World(self.cars, session_count=cars)
        self.oem = SimulatedOEM("oem", OEMProfile(**profile), self.world, self.clock, self.cars,
                                np.random.default_rng(seed), {"car"} if ignores_stop else set(), accounts)
        self.pushed = []
        self.oem.subscribe(lambda r: self.pushed.append((self.clock.seconds, r)))
        self.keys = 0

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def wait(self, seconds):
        self.run(asyncio.sleep(seconds))

    def plug(self, soc=0.4, car=None):
        car = car or self.car
        self.world.plug_in(car, self.clock.seconds, car.index, soc, 0.8)

    def call(self, method, *args, vid="car", key=None):
        fn = getattr(self.oem, method)
        if method in ("read", "wake"):
            return self.run(fn(vid))
        self.keys += 1
        return self.run(fn(vid, *args, key=key or f"k{self.keys}"))


def test_latency_is_waited_in_loop_time():
    c = Cloud(read_latency={"median_s": 3, "p95_s": 3}, command_latency={"median_s": 12, "p95_s": 12})
    c.plug()
    r = c.call("read")
    assert c.clock.seconds == pytest.approx(3) and r.taken_at == c.clock.at(3)
    c.call("start_charging")
    assert c.clock.seconds == pytest.approx(15)


def test_latency_distribution_matches_median_and_p95():
    c = Cloud(read_latency={"median_s": 2, "p95_s": 10})
    c.plug()
    times = []
    for _ in range(2000):
        t = c.clock.seconds
        c.call("read")
        times.append(c.clock.seconds - t)
    assert np.median(times) == pytest.approx(2, rel=0.1)
    assert np.percentile(times, 95) == pytest.approx(10, rel=0.15)


def test_failure_rate():
    c = Cloud(failure_rate=0.2)
    c.plug()
    failures = 0
    for _ in range(3000):
        try:
            c.call("read")
        except TransientUpstream:
            failures += 1
    assert failures / 3000 == pytest.approx(0.2, abs=0.02)


def test_outage_fails_calls_and_holds_webhooks_until_it_ends():
    c = Cloud(outages=[{"start": "2026-01-12T00:10:00Z", "end": "2026-01-12T01:00:00Z"}])
    c.wait(900)
    c.plug()
    with pytest.raises(TransientUpstream, match="outage"):
        c.call("read")
    assert c.pushed == []
    c.wait(3600)
    [(when, reading)] = c.pushed
    assert when == pytest.approx(3600) and reading.taken_at == c.clock.at(900) and reading.plugged_in
    assert c.call("read").plugged_in


def test_per_vehicle_quota_answers_429_with_retry_after():
    c = Cloud(calls_per_vehicle_per_hour=3)
    c.plug()
    for _ in range(3):
        c.call("read")
        c.wait(600)
    with pytest.raises(RateLimited) as err:
        c.call("read")
    # the first call leaves the rolling hour at t=3600; we are at t=1800
    assert err.value.retry_after_s == 1800
    c.wait(1800)
    c.call("read")


def test_idle_car_falls_asleep_and_must_be_woken():
    c = Cloud(sleep_after_s=900, wake_latency={"median_s": 30, "p95_s": 30})
    c.plug()  # plugging in wakes the car
    c.call("read")
    c.wait(1000)
    with pytest.raises(VehicleAsleep):
        c.call("start_charging")
    c.call("wake")
    assert c.clock.seconds == pytest.approx(1030)
    c.call("start_charging")
    c.wait(5000)  # a charging car stays online
    assert c.call("read").charging


def test_soc_is_floored_to_the_reporting_step_and_reads_may_come_from_a_cache():
    c = Cloud(soc_step=0.01, reading_max_age_s=300, push=False)
    c.plug(soc=0.4567)
    first = c.call("read")
    assert first.soc == pytest.approx(0.45)
    c.call("start_charging")
    c.wait(120)
    cached = c.call("read")
    assert cached.taken_at == c.clock.at(0) and not cached.charging  # older than the command
    c.wait(300)
    fresh = c.call("read")
    assert fresh.charging and fresh.taken_at == c.clock.at(420)


def test_tokens_are_refreshed_ahead_of_expiry_without_a_failed_call():
    c = Cloud(token_lifetime_s=7200)
    c.plug()
    c.call("read")
    c.wait(7200 - 300)  # within the refresh-ahead margin
    c.call("read")  # refreshed first: no AuthExpired reaches the caller
    c.wait(7200 * 3)  # long expired
    c.call("read")
    assert c.oem.stats["auth_expired"] == 0
    assert c.oem.stats["token_refreshes"] == 2


def test_one_refresh_for_all_cars_of_an_account_and_rotated_refresh_tokens():
    c = Cloud(cars=5, accounts={f"car{i}" if i else "car": "family" for i in range(6)}, token_lifetime_s=3600,
              read_latency={"median_s": 2, "p95_s": 2})
    for car in c.cars:
        c.plug(car=car)
    c.wait(4000)
    old = c.oem.tokens.store.get("family")

    async def everyone():
        return await asyncio.gather(*(c.oem.read(car.vehicle_id) for car in c.cars))

    readings = c.run(everyone())
    assert len(readings) == 5 and c.oem.stats["token_refreshes"] == 1
    new = c.oem.tokens.store.get("family")
    assert new.refresh_token != old.refresh_token and new.access_token != old.access_token
    assert "redacted" in repr(new) and new.access_token not in repr(new)
    # the rotated-out refresh token dies a minute after use: replaying it is refused
    c.wait(120)
    from twin.auth import RefreshRefused

    with pytest.raises(RefreshRefused):
        c.run(c.oem._refresh("family", old))


def test_a_revoked_grant_needs_reauthorisation_for_every_car_of_the_account():
    c = Cloud(cars=2, accounts={"car": "a", "car2": "a"}, token_lifetime_s=3600)
    c.plug()
    c.oem.revoke("a")
    for vid in ("car", "car2"):
        with pytest.raises(ReauthorizationRequired) as err:
            c.call("read", vid=vid)
        assert err.value.account_id == "a"
    c.oem.relink("a")
    assert c.call("read").plugged_in


def test_account_and_application_quotas_answer_429_with_their_scope():
    c = Cloud(cars=3, accounts={"car": "a", "car2": "a", "car3": "b"}, calls_per_account_per_hour=2,
              calls_per_application_per_minute=3)
    c.call("read", vid="car")
    c.call("read", vid="car2")
    with pytest.raises(RateLimited) as err:
        c.call("read", vid="car")  # account a used its two calls
    assert err.value.scope == "account" and err.value.retry_after_s == 3600
    c.call("read", vid="car3")  # the third call that reached the application's window
    with pytest.raises(RateLimited) as err:
        c.call("read", vid="car3")  # account b has room; the application's 3 a minute are used
    assert err.value.scope == "application" and 0 < err.value.retry_after_s <= 60
    assert {b.scope: (b.calls, b.period_s) for b in c.oem.rate_limits} == {
        "account": (2, 3600.0), "application": (3, 60.0)}


def test_commands_are_idempotent_per_key():
    c = Cloud(command_latency={"median_s": 5, "p95_s": 5})
    c.plug()
    c.call("start_charging", key="start-1")
    c.call("stop_charging", key="stop-1")
    assert not c.car.charging
    t = c.clock.seconds
    c.call("start_charging", key="start-1")  # a replay after a crash: not sent again
    assert not c.car.charging and c.clock.seconds == t and c.oem.stats["duplicates"] == 1


def test_charging_current_caps_the_draw_and_is_checked_against_the_cars_range():
    c = Cloud(current_control={"min_amps": 6, "max_amps": 32, "volts": 230, "phases": 1})
    caps = c.oem.capabilities("car")
    assert caps.can_set_current and caps.kw_per_amp() == pytest.approx(0.23)
    c.plug(soc=0.2)
    c.call("set_charging_current", 10)
    c.call("start_charging")
    c.wait(3600)
    # 10 A x 230 V = 2.3 kW for an hour, 90 % into 60 kWh
    assert c.call("read").soc == pytest.approx(0.2 + 2.3 * 0.9 / 60)
    with pytest.raises(CommandRejected) as err:
        c.call("set_charging_current", 40)
    assert err.value.reason == "out_of_range"
    plain = Cloud()
    with pytest.raises(CommandRejected) as err:
        plain.call("set_charging_current", 10)
    assert err.value.reason == "not_capable"


def test_charge_limit_can_be_set_where_the_profile_allows():
    c = Cloud(charge_limit_control=True)
    c.plug(soc=0.6)
    c.call("start_charging")
    c.call("set_charge_limit", 0.6)  # at the new limit: the car stops
    assert not c.car.charging and c.car.limit == 0.6
    with pytest.raises(CommandRejected) as err:
        c.call("set_charge_limit", 0.3)
    assert err.value.reason == "out_of_range"
    with pytest.raises(CommandRejected):
        Cloud().call("set_charge_limit", 0.9)


@pytest.mark.parametrize("kwargs", [{"ignores_stop": True}, {"ignore_stop_probability": 1.0}])
def test_car_that_ignores_stop_acknowledges_and_keeps_charging(kwargs):
    c = Cloud(**kwargs)
    c.plug()
    c.call("start_charging")
    c.call("stop_charging")  # no error: the API says success
    assert c.car.charging
    assert c.oem.stats["stops_ignored"] == 1


def test_commands_push_the_new_charging_state_and_reject_unplugged_cars():
    c = Cloud(push_delay_s=20)
    with pytest.raises(CommandRejected, match="not_plugged_in"):
        c.call("start_charging")
    c.plug()
    c.call("start_charging")
    c.wait(30)
    assert [r.charging for _, r in c.pushed] == [False, True]  # plug-in, then the start
    assert c.pushed[1][0] == pytest.approx(20)
    with pytest.raises(UnknownVehicle):
        c.run(c.oem.read("other"))
