"""The Smartcar head as the project sees it (registered in :data:`adapters.HEADS`)."""

from __future__ import annotations

from typing import Any

import httpx

from adapters.base import Connected, Deliver, Head
from twin.auth import AccountTokens, MemoryTokenStore
from twin.clock import Clock
from twin.sim.oem import SimulatedOEM

from .client import SmartcarClient
from .emulator import create_app
from .oauth import SmartcarOAuth
from .webhooks import SmartcarWebhooks

__all__ = ["HEAD"]

#: the emulator's application credentials (``twin emulate smartcar`` prints them)
CLIENT_ID = "emulator-client-id"
CLIENT_SECRET = "emulator-client-secret"
MANAGEMENT_TOKEN = "emulator-amt"
REDIRECT_URI = "http://127.0.0.1/callback"


def problems(profile: Any) -> list[str]:
    out = []
    if profile.sleep_after_s is not None:
        out.append("sleep_after_s: the Smartcar API has no wake-up call; leave it unset")
    if profile.current_control is not None:
        out.append("current_control: the Smartcar v2 API cannot set the charging current; leave it unset")
    if not profile.charge_limit_control:
        out.append("charge_limit_control: Smartcar sets the charge limit (POST /charge/limit); set it to true")
    return out


def emulator(cloud: SimulatedOEM, deliver: Deliver | None = None, **options: Any):
    """The Smartcar emulator over ``cloud``; it pushes webhooks when the profile says so."""
    return create_app(cloud, deliver=deliver if cloud.profile.push else None, client_id=CLIENT_ID,
                      client_secret=CLIENT_SECRET, management_token=MANAGEMENT_TOKEN, **options)


def connect(cloud: SimulatedOEM, base_url: str, transport: httpx.AsyncBaseTransport | None, clock: Clock) -> Connected:
    store = MemoryTokenStore()
    for account in sorted(set(cloud.accounts().values())):
        store.put(account, cloud.linked_token(account))
    oauth = SmartcarOAuth(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, token_url=f"{base_url}/oauth/token",
                          transport=transport, now=clock.now)
    webhooks = SmartcarWebhooks(MANAGEMENT_TOKEN) if cloud.profile.push else None
    client = SmartcarClient(AccountTokens(store, oauth.refresh, clock), vehicles=cloud.accounts(), webhooks=webhooks,
                            api_origin=base_url, transport=transport, rate_limits=cloud.rate_limits)
    return Connected(client, client.receive if webhooks is not None else None)


HEAD = Head(name="smartcar", features=frozenset({"push", "charge_limit"}), problems=problems, emulator=emulator,
            connect=connect, token_path="/oauth/token", api_path="/v2.0",
            base_profile={"charge_limit_control": True})
