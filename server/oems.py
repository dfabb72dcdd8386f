"""The OEM applications the server is registered with: for each, its head (the HTTP client the
controller calls), the OAuth steps the link routes take, and its webhook verification.

Live, each is configured from the settings (client id and secret, API and auth URLs); an OEM
without a client id is not offered. In the demo they point at the in-process emulators
(:mod:`server.demo`), reached over ``httpx.ASGITransport``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters.smartcar import SmartcarClient, SmartcarOAuth, SmartcarWebhooks
from adapters.smartcar import authorize_url as smartcar_authorize_url
from adapters.tesla.client import TeslaFleetClient
from adapters.tesla.oauth import TeslaOAuth
from twin.auth import AccountTokens, Token
from twin.oem import VehicleReading, WebhookRejected

__all__ = ["OEMS", "OemLink"]


class OemLink:
    """One OEM application: ``head`` (an :class:`twin.oem.OEMAdapter`), and the steps of linking
    a driver's account."""

    def __init__(self, name: str, head: Any, authorize: Callable[[str], tuple[str, str | None]],
                 exchange: Callable[[str, str | None], Any], webhooks: SmartcarWebhooks | None = None,
                 closers: tuple[Callable[[], Any], ...] = ()) -> None:
        self.name = name
        self.head = head
        self._authorize = authorize
        self._exchange = exchange
        self._webhooks = webhooks
        self._closers = closers

    def authorize_url(self, state: str) -> tuple[str, str | None]:
        """The consent URL for ``state``, and the PKCE verifier to keep (None without PKCE)."""
        return self._authorize(state)

    async def exchange(self, code: str, verifier: str | None) -> Token:
        return await self._exchange(code, verifier)

    def answer_verify(self, body: bytes) -> dict[str, str] | None:
        """The answer to a webhook set-up challenge (Smartcar VERIFY), or None."""
        if self._webhooks is None:
            return None
        try:
            return self._webhooks.answer_verify(body)
        except WebhookRejected:
            return None

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> tuple[list[VehicleReading], str | None]:
        """Verified readings of a delivery and its delivery id (for de-duplication that outlives
        a restart). Raises :class:`WebhookRejected`."""
        if self._webhooks is None:
            raise WebhookRejected(f"{self.name} sends no webhooks to this server")
        import json

        readings = self._webhooks.parse(headers, body)
        try:
            data = json.loads(body)
            delivery = data.get("eventId") if isinstance(data, dict) else None
        except ValueError:
            delivery = None
        return readings, delivery if isinstance(delivery, str) else None

    async def close(self) -> None:
        for close in self._closers:
            await close()


def _secret(value) -> str:
    return "" if value is None else value.get_secret_value()


def smartcar(server, transport: httpx.AsyncBaseTransport | None = None) -> OemLink | None:
    s = server.settings
    if not s.smartcar_client_id:
        return None
    redirect = f"{s.public_url}/oem/smartcar/callback"
    oauth = SmartcarOAuth(s.smartcar_client_id, _secret(s.smartcar_client_secret), redirect,
                          token_url=s.smartcar_token_url, transport=transport, now=server.clock.now)
    webhooks = SmartcarWebhooks(_secret(s.smartcar_management_token)) if s.smartcar_management_token else None
    head = SmartcarClient(AccountTokens(server.tokens, oauth.refresh, server.clock), webhooks=webhooks,
                          api_origin=s.smartcar_api_url, transport=transport)

    def authorize(state: str) -> tuple[str, str | None]:
        return smartcar_authorize_url(s.smartcar_client_id, redirect, state, connect_url=s.smartcar_connect_url), None

    async def exchange(code: str, verifier: str | None) -> Token:
        return await oauth.exchange_code(code)

    return OemLink("smartcar", head, authorize, exchange, webhooks, (head.aclose,))


def tesla(server, transport: httpx.AsyncBaseTransport | None = None) -> OemLink | None:
    s = server.settings
    if not s.tesla_client_id:
        return None
    redirect = f"{s.public_url}/oem/tesla/callback"
    oauth = TeslaOAuth(s.tesla_client_id, _secret(s.tesla_client_secret), redirect, audience=s.tesla_api_url,
                       clock=server.clock, transport=transport, token_url=s.tesla_token_url)
    head = TeslaFleetClient(AccountTokens(server.tokens, oauth.refresh, server.clock), server.clock,
                            base_url=s.tesla_api_url, transport=transport)

    def authorize(state: str) -> tuple[str, str | None]:
        request = oauth.authorization_request(state=state)
        query = urlsplit(request.url).query
        return f"{s.tesla_authorize_url}?{query}", request.code_verifier

    async def exchange(code: str, verifier: str | None) -> Token:
        return await oauth.exchange_code(code, verifier or "")

    return OemLink("tesla", head, authorize, exchange, None, (head.aclose, oauth.aclose))


#: OEM name -> how the server connects to it (None when it is not configured)
OEMS: dict[str, Callable[..., OemLink | None]] = {"smartcar": smartcar, "tesla": tesla}
