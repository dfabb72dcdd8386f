"""What the adapter conformance suite needs from a head under test.

Each head provides a factory ``make(profile) -> Harness``: the head's adapter pointed at a cloud
that behaves as the fault ``profile`` says (a :class:`twin.scenario.OEMProfile` as a dict: sleep,
quotas, failure rate, token lifetime, current control ...), with cars ``car-a`` and ``car-b`` on
account ``acct-1`` and ``car-c`` on ``acct-2``, all unplugged at SoC 0.5. For SimulatedOEM the
cloud is the twin itself; an HTTP head points its client at its emulator, in-process
(``httpx.ASGITransport``) or over a loopback socket, and registers both factories in
``conftest.HEADS``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import httpx
import numpy as np
import pytest

import adapters

from twin.battery import ChargeCurve
from twin.emulate import EmulatorThread
from twin.host.aio import AsyncClock, VirtualTimeLoop
from twin.oem import OEMAdapter, VehicleReading
from twin.scenario import OEMProfile
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

T0 = datetime(2026, 1, 12, tzinfo=timezone.utc)
CARS = {"car-a": "acct-1", "car-b": "acct-1", "car-c": "acct-2"}
CURVE = ChargeCurve(battery_kwh=60, charger_kw=11, vehicle_kw=11, efficiency=0.9, knee_soc=0.8, floor_kw=2)


#: every optional part of the protocol (a head has those its API has)
ALL_FEATURES = frozenset({"push", "wake", "current", "charge_limit"})

class Harness(Protocol):
    adapter: OEMAdapter
    #: the optional parts of the protocol the head has (``ALL_FEATURES`` for the simulated one)
    features: frozenset[str]

    def run(self, coro) -> Any:
        """Run ``coro`` to completion in the head's time (virtual or real)."""

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""

    def plug_in(self, vehicle_id: str, soc: float = 0.5) -> None: ...

    def charging(self, vehicle_id: str) -> bool:
        """Ground truth: is the car drawing power?"""

    def commands_reached(self) -> int:
        """Commands that reached the cloud (not de-duplicated by the head)."""

    def token_refreshes(self) -> int: ...

    def revoke(self, account_id: str) -> None:
        """The driver revokes the platform's access in the OEM's app."""

    def forget(self, vehicle_id: str) -> None:
        """The OEM cloud no longer knows the car."""

    def webhook(self, readings: list[VehicleReading]) -> tuple[dict[str, str], bytes]:
        """A signed webhook delivery carrying ``readings``, as the cloud would post it."""

    def now(self) -> datetime: ...


class _Cloudy:
    """What every harness does to the simulated cloud and cars (``self.cloud``, ``self.cars``,
    ``self.world``, ``self.clock``)."""

    def _make_cloud(self, profile: OEMProfile, clock) -> SimulatedOEM:
        self.clock = clock
        self.cars = {vid: Car(i, vid, CURVE, soc=0.5, autostart=False) for i, vid in enumerate(CARS)}
        self.world = World(list(self.cars.values()), session_count=len(CARS))
        self.cloud = SimulatedOEM("sim", profile, self.world, clock, list(self.cars.values()), np.random.default_rng(1),
                                  frozenset(), CARS)
        return self.cloud

    def plug_in(self, vehicle_id: str, soc: float = 0.5) -> None:
        car = self.cars[vehicle_id]
        self.world.plug_in(car, self.clock.seconds, car.index, soc, 0.9)

    def charging(self, vehicle_id: str) -> bool:
        car = self.cars[vehicle_id]
        self.world.advance(car, self.clock.seconds)
        return car.charging

    def commands_reached(self) -> int:
        return self.cloud.stats["calls"]

    def token_refreshes(self) -> int:
        return self.cloud.stats["token_refreshes"]

    def revoke(self, account_id: str) -> None:
        self.cloud.revoke(account_id)

    def forget(self, vehicle_id: str) -> None:
        self.cloud.forget(vehicle_id)

    def now(self) -> datetime:
        return self.clock.now()


class SimHarness(_Cloudy):
    """SimulatedOEM on a virtual-time asyncio loop."""

    features = ALL_FEATURES

    def __init__(self, profile: dict[str, Any]) -> None:
        self.loop = VirtualTimeLoop()
        self.adapter = self._make_cloud(OEMProfile(**profile), AsyncClock(T0, self.loop))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def advance(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    def webhook(self, readings):
        return self.adapter.webhook_delivery(readings)

    def close(self) -> None:
        self.loop.close()


class _Emulated(_Cloudy):
    """What the HTTP harnesses share: a simulated cloud behind a head's emulator."""

    def _build(self, head_name: str, profile: dict[str, Any], clock) -> OEMProfile:
        self.head = adapters.head(head_name)
        self.features = self.head.features
        merged = OEMProfile(**{**self.head.base_profile, **profile})
        problems = self.head.problems(merged)
        if problems:
            pytest.skip(f"{head_name} cannot serve this profile: {'; '.join(problems)}")
        self.app = self.head.emulator(self._make_cloud(merged, clock))
        return merged

    def webhook(self, readings):
        from adapters.smartcar.emulator import webhook_delivery
        from adapters.smartcar.head import MANAGEMENT_TOKEN

        if self.head.name != "smartcar":
            pytest.skip(f"{self.head.name} sends no webhooks")
        [reading] = readings
        return webhook_delivery(reading, MANAGEMENT_TOKEN, event_id=f"evt-{time.monotonic_ns()}", user_id="acct-1",
                                delivered_ms=round(self.clock.now().timestamp() * 1000))


class AsgiHarness(_Emulated):
    """A head's client against its emulator in-process (``httpx.ASGITransport``), in virtual
    time: the emulator's latencies and the test's waits take no wall time."""

    def __init__(self, head_name: str, profile: dict[str, Any]) -> None:
        self.loop = VirtualTimeLoop()
        self._build(head_name, profile, AsyncClock(T0, self.loop))
        self.adapter = self.head.connect(self.cloud, "http://emulator.test", httpx.ASGITransport(self.app),
                                         self.clock).adapter

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def advance(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    def close(self) -> None:
        self.run(self.adapter.aclose())
        self.loop.close()


class SkipClock:
    """Wall time plus an offset that waits add to (a :class:`twin.clock.Clock` shared by the
    test's thread and the server's): the emulator's latencies and the test's ``advance`` move
    time forward at once, so a socket test of a cloud with 20 s wakes runs in milliseconds."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self._t0 = time.monotonic()
        self.offset = 0.0
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._t0 + self.offset

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        with self._lock:
            self.offset += max(0.0, seconds)
        await asyncio.sleep(0)

    def call_later(self, seconds: float, callback) -> None:
        asyncio.get_running_loop().call_soon(callback)

    def create_future(self):
        return asyncio.get_running_loop().create_future()

    def spawn(self, coro):
        from twin.host.aio import _spawn

        return _spawn(asyncio.get_running_loop(), coro)


class SocketHarness(_Emulated):
    """A head's client against its emulator served by uvicorn on 127.0.0.1 (a real socket, a
    real HTTP/1.1 server), started here and stopped by :meth:`close`."""

    def __init__(self, head_name: str, profile: dict[str, Any]) -> None:
        self._build(head_name, profile, SkipClock(T0))
        self.server = EmulatorThread(self.app)
        self.base_url = self.server.base_url
        self.loop = asyncio.new_event_loop()
        self.adapter = self.head.connect(self.cloud, self.base_url, None, self.clock).adapter

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def advance(self, seconds: float) -> None:
        self.clock.offset += seconds

    def close(self) -> None:
        self.run(self.adapter.aclose())
        self.loop.close()
        self.server.stop()
