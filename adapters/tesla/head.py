"""The Tesla Fleet API head as the project sees it (registered in :data:`adapters.HEADS`)."""

from __future__ import annotations

from typing import Any

import httpx

from adapters.base import Connected, Deliver, Head
from twin.auth import AccountTokens, MemoryTokenStore
from twin.clock import Clock
from twin.sim.oem import SimulatedOEM

from .client import TeslaFleetClient
from .emulator import create_app
from .oauth import TeslaOAuth

__all__ = ["HEAD"]

#: the emulator's application credentials (``twin emulate tesla`` prints them)
CLIENT_ID = "emulator-client-id"
CLIENT_SECRET = "emulator-client-secret"
REDIRECT_URI = "http://127.0.0.1/callback"


def problems(profile: Any) -> list[str]:
    out = []
    if profile.push:
        out.append("push: the Fleet API sends no webhooks (cars are polled); set push: false")
    if not profile.charge_limit_control:
        out.append("charge_limit_control: Tesla sets the charge limit (set_charge_limit); set it to true")
    if profile.current_control is not None and profile.current_control.step_amps != 1:
        out.append("current_control.step_amps: Tesla sets whole amps; use 1")
    if profile.soc_step != 0.01:
        out.append("soc_step: Tesla reports battery_level in whole percent; use 0.01")
    if profile.calls_per_account_per_hour is not None or profile.calls_per_application_per_minute is not None:
        out.append("calls_per_account_per_hour / calls_per_application_per_minute: the Fleet API's 429 does not "
                   "say which budget ran out (the head takes it as the car's); use calls_per_vehicle_per_hour")
    return out


def emulator(cloud: SimulatedOEM, deliver: Deliver | None = None, **options: Any):
    """The Fleet API emulator over ``cloud`` (the API has no webhooks: ``deliver`` is unused)."""
    return create_app(cloud, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options)


def connect(cloud: SimulatedOEM, base_url: str, transport: httpx.AsyncBaseTransport | None, clock: Clock) -> Connected:
    store = MemoryTokenStore()
    for account in sorted(set(cloud.accounts().values())):
        store.put(account, cloud.linked_token(account))
    oauth = TeslaOAuth(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, audience=base_url, clock=clock, transport=transport,
                       token_url=f"{base_url}/oauth2/v3/token")
    cc = cloud.profile.current_control
    current = {} if cc is None else {"min_amps": cc.min_amps, "max_amps": cc.max_amps, "volts": cc.volts,
                                      "phases": cc.phases}
    client = TeslaFleetClient(AccountTokens(store, oauth.refresh, clock), clock, base_url=base_url, transport=transport,
                              accounts=cloud.accounts(), rate_limits=cloud.rate_limits, name=cloud.name, **current)
    return Connected(client, None)


HEAD = Head(name="tesla", features=frozenset({"wake", "current", "charge_limit"}), problems=problems,
            emulator=emulator, connect=connect, token_path="/oauth2/v3/token", api_path="/api/1",
            base_profile={"push": False, "charge_limit_control": True, "soc_step": 0.01})
