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
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from twin.battery import ChargeCurve
from twin.host.aio import AsyncClock, VirtualTimeLoop
from twin.oem import OEMAdapter, VehicleReading
from twin.scenario import OEMProfile
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

T0 = datetime(2026, 1, 12, tzinfo=timezone.utc)
CARS = {"car-a": "acct-1", "car-b": "acct-1", "car-c": "acct-2"}
CURVE = ChargeCurve(battery_kwh=60, charger_kw=11, vehicle_kw=11, efficiency=0.9, knee_soc=0.8, floor_kw=2)


class Harness(Protocol):
    adapter: OEMAdapter

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


class SimHarness:
    """SimulatedOEM on a virtual-time asyncio loop."""

    def __init__(self, profile: dict[str, Any]) -> None:
        self.loop = VirtualTimeLoop()
        self.clock = AsyncClock(T0, self.loop)
        self.cars = {vid: Car(i, vid, CURVE, soc=0.5, autostart=False) for i, vid in enumerate(CARS)}
        self.world = World(list(self.cars.values()), session_count=len(CARS))
        self.adapter = SimulatedOEM("sim", OEMProfile(**profile), self.world, self.clock, list(self.cars.values()),
                                    np.random.default_rng(1), frozenset(), CARS)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def advance(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    def plug_in(self, vehicle_id: str, soc: float = 0.5) -> None:
        car = self.cars[vehicle_id]
        self.world.plug_in(car, self.clock.seconds, car.index, soc, 0.9)

    def charging(self, vehicle_id: str) -> bool:
        car = self.cars[vehicle_id]
        self.world.advance(car, self.clock.seconds)
        return car.charging

    def commands_reached(self) -> int:
        return self.adapter.stats["calls"]

    def token_refreshes(self) -> int:
        return self.adapter.stats["token_refreshes"]

    def revoke(self, account_id: str) -> None:
        self.adapter.revoke(account_id)

    def forget(self, vehicle_id: str) -> None:
        self.adapter.forget(vehicle_id)

    def webhook(self, readings):
        return self.adapter.webhook_delivery(readings)

    def now(self) -> datetime:
        return self.clock.now()

    def close(self) -> None:
        self.loop.close()
