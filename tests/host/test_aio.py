"""The asyncio host, hardened for live use: call timeouts, adapters that raise the unexpected,
planning off the event loop under a burst of plug-ins, a log that streams instead of growing,
and the composition a live host builds its controller with."""

import asyncio
import logging
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from twin.battery import ChargeCurve
from twin.control import ControllerConfig, ControlSettings, ManagedVehicle, SessionPlan, build_controller
from twin.control.policies import PlanFollower
from twin.host.aio import AsyncClock, AsyncDriver, VirtualTimeLoop
from twin.oem import Capabilities, VehicleReading

T0 = datetime(2026, 1, 12, 18, 0, tzinfo=timezone.utc)
CURVE = ChargeCurve(battery_kwh=60, charger_kw=7, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=1.5)


class Cars:
    """A minimal in-memory head: every car is plugged in at SoC 0.4 and obeys at once.

    ``hang`` makes calls of the given kind never return; ``explode`` makes them raise a
    ``RuntimeError`` (a bug in a head) the given number of times.
    """

    name = "memory"
    rate_limits = ()

    def __init__(self, clock, hang=(), explode=None, unplugged=()):
        self.clock, self.hang, self.explode = clock, set(hang), dict(explode or {})
        self.unplugged = set(unplugged)
        self.charging: dict[str, bool] = {}
        self.calls: list[tuple[float, str, str]] = []
        self.sinks = []

    def capabilities(self, vehicle_id):
        return Capabilities(pushes_telemetry=vehicle_id not in self.unplugged)

    async def discover(self, account_id):
        return []

    async def _call(self, kind, vid):
        self.calls.append((self.clock.seconds, kind, vid))
        if kind in self.hang:
            await asyncio.sleep(10**9)
        if self.explode.get(kind, 0) > 0:
            self.explode[kind] -= 1
            raise RuntimeError(f"head bug in {kind}")

    async def read(self, vid):
        await self._call("read", vid)
        return VehicleReading(vid, self.clock.now(), 0.4, vid not in self.unplugged, self.charging.get(vid, False))

    async def start_charging(self, vid, *, key):
        await self._call("start", vid)
        self.charging[vid] = True

    async def stop_charging(self, vid, *, key):
        await self._call("stop", vid)
        self.charging[vid] = False

    async def set_charging_current(self, vid, amps, *, key):
        await self._call("set_current", vid)

    async def set_charge_limit(self, vid, soc, *, key):
        await self._call("set_limit", vid)

    async def wake(self, vid):
        await self._call("wake", vid)

    def parse_webhook(self, headers, body):
        return []

    def subscribe(self, sink):
        self.sinks.append(sink)


def controller_for(n, head, policy="uncontrolled", **cfg):
    vehicles = [ManagedVehicle(f"car-{i:04d}", CURVE) for i in range(n)]
    settings = ControlSettings(config=ControllerConfig(**cfg))
    ids = iter(range(10**9))
    ctl = build_controller(vehicles, {}, settings, policy, {v.vehicle_id: head for v in vehicles},
                           new_id=lambda: f"id-{next(ids)}")
    return ctl


def run_virtual(n, seconds, **head_kw):
    loop = VirtualTimeLoop()
    clock = AsyncClock(T0, loop)
    head = Cars(clock, **head_kw)
    ctl = controller_for(n, head, call_timeout_s=60, retry_base_s=30)
    rows = []
    driver = AsyncDriver(ctl, {v: head for v in ctl.tracks}, clock, sink=rows.append)
    try:
        loop.run_until_complete(driver.run(seconds))
    finally:
        loop.close()
    return head, ctl, rows


def test_a_call_that_never_returns_times_out_and_is_retried():
    head, ctl, rows = run_virtual(1, 200, hang={"read"})
    # the read is abandoned after 60 s, retried 30 s later, abandoned again, retried 60 s later
    assert [t for t, kind, _ in head.calls] == pytest.approx([0, 90])
    timeouts = [r for r in rows if r[2] == "result" and "CallTimeout" in r[3]]
    assert [r[0] for r in timeouts] == pytest.approx([60, 150])
    assert timeouts[0][3] == "read failed: CallTimeout: car-0000: read: no answer within 60 s"
    assert ctl.tracks["car-0000"].not_before == T0 + timedelta(seconds=210)


def test_an_adapter_raising_a_non_oem_error_is_logged_and_the_call_retried(caplog):
    with caplog.at_level(logging.WARNING, logger="chargetwin.host"):
        head, ctl, rows = run_virtual(1, 600, explode={"start": 2})
    starts = [t for t, kind, _ in head.calls if kind == "start"]
    assert len(starts) == 3 and head.charging["car-0000"]  # two failures, then it started
    assert starts[1] - starts[0] == pytest.approx(30) and starts[2] - starts[1] == pytest.approx(60)
    failed = [r[3] for r in rows if r[2] == "result" and "failed" in r[3]]
    assert failed == ["start failed: TransientUpstream: car-0000: unexpected RuntimeError: head bug in start"] * 2
    assert "head bug in start" in caplog.text and "Traceback" in caplog.text


class Gate(PlanFollower):
    """Plans every car to charge from now, but its planning job waits for ``release``."""

    name = "gate"

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.jobs = 0

    def prepare(self, now, tracks, fleet):
        ids = tuple(t.vehicle_id for t in tracks)
        policy = self

        class Job:
            vehicle_ids = ids

            def run(self):
                policy.jobs += 1
                policy.started.set()
                assert policy.release.wait(30), "never released"
                return {v: SessionPlan(now, timedelta(hours=12), (7.0,), 0.8) for v in ids}

        return Job()


def test_a_burst_of_1000_plug_ins_is_planned_off_the_loop_while_other_cars_are_served():
    async def scenario():
        clock = AsyncClock(datetime.now(timezone.utc))
        head = Cars(clock, unplugged={"car-1000"})
        policy = Gate()
        vehicles = [ManagedVehicle(f"car-{i:04d}", CURVE) for i in range(1001)]
        adapters = {v.vehicle_id: head for v in vehicles}
        ids = iter(range(10**9))
        # car-1000 is unplugged and polled every 0.1 s; the other 1,000 plug in at once
        settings = ControlSettings(config=ControllerConfig(poll_interval_s=0.1))
        ctl = build_controller(vehicles, {}, settings, policy, adapters, new_id=lambda: f"id-{next(ids)}")
        driver = AsyncDriver(ctl, adapters, clock, planning="thread")
        runner = asyncio.ensure_future(driver.run())
        while not policy.started.is_set():
            await asyncio.sleep(0.01)
        # the planning job blocks its thread: the loop keeps polling the other car meanwhile
        polls = sum(1 for _, kind, vid in head.calls if vid == "car-1000")
        await asyncio.sleep(0.5)
        served = sum(1 for _, kind, vid in head.calls if vid == "car-1000") - polls
        started_while_blocked = sum(kind == "start" for _, kind, _ in head.calls)
        policy.release.set()
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if sum(t.charging for t in ctl.tracks.values()) >= 1000:
                break
        runner.cancel()
        return head, ctl, served, started_while_blocked

    head, ctl, served, started_while_blocked = asyncio.run(scenario())
    assert served >= 2 and started_while_blocked == 0
    assert sum(kind == "start" for _, kind, _ in head.calls) == 1000
    plugged = [t for vid, t in ctl.tracks.items() if vid != "car-1000"]
    assert ctl.stats["replans"] == 1000 and all(t.plan is not None and t.charging for t in plugged)


def test_the_log_streams_to_its_sink():
    head, ctl, rows = run_virtual(3, 120)
    assert [r[2] for r in rows[:2]] == ["command", "command"] and len(rows) >= 6
    loop = VirtualTimeLoop()
    clock = AsyncClock(T0, loop)
    quiet = AsyncDriver(controller_for(2, Cars(clock)), {"car-0000": Cars(clock), "car-0001": Cars(clock)}, clock)
    assert not hasattr(quiet, "log")  # nothing accumulates in the host: rows go to logging
    loop.close()


def test_the_example_host_builds_its_controller_through_the_composition():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    try:
        import asyncio_host
    finally:
        sys.path.pop(0)
    out = asyncio_host.run_night()
    assert out["soc"] == pytest.approx({"ev-0": 0.8, "ev-1": 0.8, "ev-2": 0.8})
    starts = [r for r in out["log"] if r[2] == "command" and r[3] == "start"]
    # smart waits for the cheap hours after midnight
    assert starts and all(r[0] >= 7 * 3600 for r in starts)
    assert sorted({n.vehicle_id for n in out["notices"] if n.topic == "plan"}) == ["ev-0", "ev-1", "ev-2"]
