"""``twin serve --demo``: both OEM emulators in-process with a small fleet, so a new user sees
cars plug in, get planned and charge within a minute.

The emulators (a Smartcar and a Tesla Fleet API over simulated clouds) run on one clock,
``demo_speed`` emulated seconds per wall second (60 by default), which the hosted controller
shares. They are mounted under ``/demo/smartcar`` and ``/demo/tesla`` (their consent pages are
what ``/oem/{oem}/connect`` redirects a browser to) and the heads reach them in-process over
``httpx.ASGITransport``. A demo user (``demo@chargetwin.local``, password ``demo-password``)
has both accounts linked at start; its four cars plug in during the first emulated minutes and
the Smartcar ones push webhooks to the server's own webhook route.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import httpx
import numpy as np
from pydantic import SecretStr

import adapters
from adapters.smartcar import head as smartcar_head
from adapters.tesla import head as tesla_head
from twin.battery import ChargeCurve
from twin.emulate import ScaledClock
from twin.scenario import OEMProfile
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

__all__ = ["Demo", "DEMO_EMAIL", "DEMO_PASSWORD"]

log = logging.getLogger("server.demo")

DEMO_EMAIL = "demo@chargetwin.local"
DEMO_PASSWORD = "demo-password"
CURVE = ChargeCurve(battery_kwh=60, charger_kw=7.4, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8, floor_kw=2.0)
#: OEM -> (account, [(vehicle id, emulated seconds after start it plugs in, SoC then)])
FLEET = {
    "smartcar": ("demo-smartcar", [("sc-demo-1", 60.0, 0.25), ("sc-demo-2", 180.0, 0.35)]),
    "tesla": ("demo-tesla", [("5YJ3DEMO000000001", 120.0, 0.30), ("5YJ3DEMO000000002", 240.0, 0.40)]),
}
LATENCY = {"read_latency": {"median_s": 2, "p95_s": 6}, "command_latency": {"median_s": 4, "p95_s": 12},
           "wake_latency": {"median_s": 10, "p95_s": 25}, "token_lifetime_s": 7200}
EXTRA = {"smartcar": {"push": True, "push_delay_s": 5}, "tesla": {"sleep_after_s": 1800,
         "current_control": {"min_amps": 5, "max_amps": 32}}}
HOSTS = {"smartcar": "http://smartcar.demo", "tesla": "http://tesla.demo"}


class Demo:
    """The emulated clouds, their apps and the settings that point the server at them."""

    def __init__(self, server) -> None:
        self.server = server
        self.clock = ScaledClock(datetime.now(timezone.utc), server.settings.demo_speed)
        self.clouds: dict[str, SimulatedOEM] = {}
        self.worlds: dict[str, World] = {}
        self.apps = {}
        self.transports: dict[str, httpx.AsyncBaseTransport] = {}
        for i, (oem, (account, cars)) in enumerate(FLEET.items()):
            head = adapters.head(oem)
            profile = OEMProfile(**{**head.base_profile, **LATENCY, **EXTRA[oem]})
            fleet = [Car(j, vid, CURVE, soc=soc, autostart=True) for j, (vid, _, soc) in enumerate(cars)]
            world = World(fleet, session_count=len(fleet))
            cloud = SimulatedOEM(oem, profile, world, self.clock, fleet, np.random.default_rng(i),
                                 frozenset(), {c.vehicle_id: account for c in fleet})
            app = head.emulator(cloud, deliver=self._deliver(oem))
            self.clouds[oem], self.worlds[oem], self.apps[oem] = cloud, world, app
            self.transports[oem] = httpx.ASGITransport(app)
        self._tasks: list[asyncio.Task] = []

    def settings_update(self, public_url: str) -> dict:
        """What the server's settings become: the OEM applications point at the emulators."""
        return {
            "smartcar_client_id": smartcar_head.CLIENT_ID,
            "smartcar_client_secret": SecretStr(smartcar_head.CLIENT_SECRET),
            "smartcar_management_token": SecretStr(smartcar_head.MANAGEMENT_TOKEN),
            "smartcar_api_url": HOSTS["smartcar"], "smartcar_token_url": f"{HOSTS['smartcar']}/oauth/token",
            "smartcar_connect_url": f"{public_url}/demo/smartcar/oauth/authorize",
            "tesla_client_id": tesla_head.CLIENT_ID, "tesla_client_secret": SecretStr(tesla_head.CLIENT_SECRET),
            "tesla_api_url": HOSTS["tesla"], "tesla_token_url": f"{HOSTS['tesla']}/oauth2/v3/token",
            "tesla_authorize_url": f"{public_url}/demo/tesla/oauth2/v3/authorize",
        }

    def _deliver(self, oem: str):
        def deliver(headers: dict[str, str], body: bytes) -> None:
            self.server.spawn(self._post(oem, headers, body))
        return deliver

    async def _post(self, oem: str, headers: dict[str, str], body: bytes) -> None:
        try:
            await self.server.receive_webhook(oem, headers, body)
        except Exception as exc:  # noqa: BLE001 - a demo delivery the server refused: say so
            log.warning("demo %s webhook refused: %s", oem, exc)

    async def start(self) -> None:
        """Create the demo user, link both accounts, and plug the cars in as emulated time passes."""
        await self.server.link_demo_user(DEMO_EMAIL, DEMO_PASSWORD, {
            oem: (account, self.clouds[oem].link(account)) for oem, (account, _) in FLEET.items()})
        for oem, (_, cars) in FLEET.items():
            for j, (vid, at, soc) in enumerate(cars):
                self._tasks.append(asyncio.get_running_loop().create_task(self._plug_in(oem, j, at, soc)))

    async def _plug_in(self, oem: str, index: int, at: float, soc: float) -> None:
        wait = at - self.clock.seconds
        if wait > 0:
            await self.clock.sleep(wait)
        world = self.worlds[oem]
        car = world.cars[index]
        world.plug_in(car, self.clock.seconds, index, soc, 0.8)
        log.info("demo: %s %s plugged in at SoC %.0f %%", oem, car.vehicle_id, soc * 100)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
