"""Host the controller on asyncio against OEM heads: the shape of the live server's loop.

The controller is built by :func:`twin.control.build_controller` — the same composition the
twin uses — from the cars, their drivers' preferences, the control settings, a policy name and
one OEM head per car. :class:`twin.host.aio.AsyncDriver` then runs the loop: telemetry and
forecasts in, commands out.

Here the heads are simulated clouds (three cars, one of them polled) on a virtual-time asyncio
loop, so a night passes in a second, and plans are computed inline (in zero virtual time). A
live host passes HTTP heads (``adapters/<oem>/``), an :class:`~twin.host.aio.AsyncClock` on an
ordinary loop and ``planning="thread"`` (plans off the event loop), and runs until stopped::

    python examples/asyncio_host.py
"""

from __future__ import annotations

import asyncio
from datetime import datetime, time, timedelta, timezone

import numpy as np
import pandas as pd

from twin.battery import ChargeCurve
from twin.control import ControlSettings, ForecastUpdated, ManagedVehicle, build_controller
from twin.domain import Preferences
from twin.host.aio import AsyncClock, AsyncDriver, VirtualTimeLoop
from twin.scenario import OEMProfile
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

START = datetime(2026, 1, 12, 17, 0, tzinfo=timezone.utc)
CURVE = ChargeCurve(battery_kwh=64, charger_kw=7.0, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=2.0)


def night_prices(start: datetime, hours: int = 24) -> pd.DataFrame:
    """Half-hourly prices: dear in the evening peak, cheap after midnight."""
    slots = pd.date_range(start, periods=hours * 2, freq="30min", tz="UTC")
    hour = slots.hour + slots.minute / 60
    price = np.where((hour >= 16) & (hour < 19), 0.35, np.where(hour < 6, 0.09, 0.22))
    return pd.DataFrame({"price_gbp_per_kwh": price, "carbon_g_per_kwh": 150.0}, index=slots)


def run_night(policy: str = "smart", hours: float = 15.0) -> dict:
    """Three cars plug in at 17:00-17:20 and are controlled until ``hours`` later.

    Returns the host's log rows, the notifications sent to drivers and the final SoCs.
    """
    loop = VirtualTimeLoop()
    clock = AsyncClock(START, loop)
    cars = [Car(i, f"ev-{i}", CURVE, soc=0.3, autostart=True) for i in range(3)]
    world = World(cars, session_count=3)
    webhooks = SimulatedOEM("webhooks", OEMProfile(push=True, push_delay_s=20), world, clock, cars[:2])
    polled = SimulatedOEM("polled", OEMProfile(push=False), world, clock, cars[2:])
    adapters = {"ev-0": webhooks, "ev-1": webhooks, "ev-2": polled}

    # the composition: cars, preferences, settings, policy, heads -> a running controller
    vehicles = [ManagedVehicle(c.vehicle_id, CURVE, account_id="household") for c in cars]
    preferences = {c.vehicle_id: Preferences(ready_by=time(7, 0), target_soc=0.8, min_soc=0.2) for c in cars}
    controller = build_controller(vehicles, preferences, ControlSettings(slot_minutes=30), policy, adapters)

    log: list = []
    notices: list = []
    driver = AsyncDriver(controller, adapters, clock, sink=log.append, on_notify=notices.append)

    async def drivers() -> None:
        driver.deliver(ForecastUpdated(night_prices(START), 30))
        for i, car in enumerate(cars):
            await asyncio.sleep(600 if i else 0)
            world.plug_in(car, clock.seconds, i, 0.3, 0.8)

    async def main() -> None:
        runner = asyncio.ensure_future(driver.run(hours * 3600))
        await drivers()
        await runner

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    world.close(clock.seconds)
    return {"log": log, "notices": notices, "soc": {c.vehicle_id: c.soc for c in cars}, "stats": controller.stats}


if __name__ == "__main__":
    out = run_night()
    for note in out["notices"]:
        print(note.vehicle_id, note.describe())
    print("SoC at 08:00:", {k: round(v, 3) for k, v in out["soc"].items()})
    print("controller:", {k: v for k, v in out["stats"].items() if v})
    print("timeline:", timedelta(hours=15), "in", len(out["log"]), "log rows")
