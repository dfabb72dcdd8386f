"""SimulatedOEM behaves like the real clouds in shared/reference/apis.md."""

import asyncio
from datetime import datetime, timezone

import numpy as np
import pytest

from twin.aio import AsyncClock, VirtualTimeLoop
from twin.battery import ChargeCurve
from twin.oem import AuthExpired, CommandRejected, RateLimited, TransientUpstream, UnknownVehicle, VehicleAsleep
from twin.scenario import OEMProfile
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

T0 = datetime(2026, 1, 12, tzinfo=timezone.utc)
CURVE = ChargeCurve(battery_kwh=60, charger_kw=7, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=1.5)


class Cloud:
    """One car behind a SimulatedOEM, on virtual asyncio time."""

    def __init__(self, ignores_stop=False, seed=0, **profile):
        self.loop = VirtualTimeLoop()
        self.clock = AsyncClock(T0, self.loop)
        self.car = Car(0, "car", CURVE, soc=0.4, autostart=False)
        self.world = World([self.car], session_count=1)
        self.oem = SimulatedOEM("oem", OEMProfile(**profile), self.world, self.clock, [self.car],
                                np.random.default_rng(seed), {"car"} if ignores_stop else set())
        self.pushed = []
        self.oem.subscribe(lambda r: self.pushed.append((self.clock.seconds, r)))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def wait(self, seconds):
        self.run(asyncio.sleep(seconds))

    def plug(self, soc=0.4):
        self.world.plug_in(self.car, self.clock.seconds, 0, soc, 0.8)

    def call(self, method):
        return self.run(getattr(self.oem, method)("car"))


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


def test_expired_token_until_refreshed():
    c = Cloud(token_lifetime_s=7200)
    c.plug()
    c.wait(7200)
    with pytest.raises(AuthExpired):
        c.call("read")
    c.call("refresh_auth")
    c.call("read")


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
