"""A simulated cloud behind an emulator app, on a virtual-time loop, for the emulators' HTTP
contract tests: raw httpx requests over ``httpx.ASGITransport``, as any client would send."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import numpy as np

from twin.battery import ChargeCurve
from twin.host.aio import AsyncClock, VirtualTimeLoop
from twin.scenario import OEMProfile
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

T0 = datetime(2026, 1, 12, tzinfo=timezone.utc)
CARS = {"car-a": "acct-1", "car-b": "acct-1", "car-c": "acct-2"}
CURVE = ChargeCurve(battery_kwh=60, charger_kw=11, vehicle_kw=11, efficiency=0.9, knee_soc=0.8, floor_kw=2)


class Emulated:
    def __init__(self, create_app, profile: dict, **options) -> None:
        self.loop = VirtualTimeLoop()
        self.clock = AsyncClock(T0, self.loop)
        self.cars = {vid: Car(i, vid, CURVE, soc=0.5, autostart=False) for i, vid in enumerate(CARS)}
        self.world = World(list(self.cars.values()), session_count=len(CARS))
        self.cloud = SimulatedOEM("sim", OEMProfile(**profile), self.world, self.clock, list(self.cars.values()),
                                  np.random.default_rng(1), frozenset(), CARS)
        self.app = create_app(self.cloud, **options)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url="http://emulator.test")

    def token(self, account: str = "acct-1") -> str:
        return self.cloud.linked_token(account).access_token

    def auth(self, account: str = "acct-1") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(account)}"}

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, path, **kwargs))

    def advance(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def plug_in(self, vehicle_id: str, soc: float = 0.5, limit: float = 0.9) -> None:
        car = self.cars[vehicle_id]
        self.world.plug_in(car, self.clock.seconds, car.index, soc, limit)

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()
