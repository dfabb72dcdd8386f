"""Tesla Fleet API third-party OAuth: authorization code with PKCE, code exchange, refresh.

* The driver is sent to ``https://auth.tesla.com/oauth2/v3/authorize`` (``auth.tesla.cn`` in
  China) with ``response_type=code``, ``client_id``, ``redirect_uri``, ``scope``, ``state`` and a
  PKCE ``code_challenge`` (S256 of a random ``code_verifier``).
* The returned code is exchanged at the token endpoint (form-encoded ``grant_type=
  authorization_code`` with ``client_id``, ``client_secret``, ``code``, ``redirect_uri``,
  ``audience`` = the Fleet API base URL, and the PKCE ``code_verifier``).
* Refresh tokens are **single use**: every refresh returns a new one that must replace the old
  one at once (:class:`twin.auth.AccountTokens` stores both tokens in one write and refreshes
  once per account). :meth:`TeslaOAuth.refresh` has the signature of
  :data:`twin.auth.Refresher`.

Tokens, the client secret and the PKCE verifier are secrets: they are never logged, never put
in exception messages, and hidden from ``repr``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx

from twin.auth import RefreshFailed, RefreshRefused, Token
from twin.clock import Clock

__all__ = [
    "AUTHORIZE_URLS",
    "DEFAULT_SCOPES",
    "TOKEN_URL",
    "AuthorizationRequest",
    "TeslaAuthError",
    "TeslaOAuth",
    "code_challenge",
    "make_code_verifier",
]

#: authorization endpoint per region (China has its own auth host)
AUTHORIZE_URLS = {
    "na": "https://auth.tesla.com/oauth2/v3/authorize",
    "eu": "https://auth.tesla.com/oauth2/v3/authorize",
    "cn": "https://auth.tesla.cn/oauth2/v3/authorize",
}
#: token endpoint (code exchange and refresh), form-encoded
TOKEN_URL = "https://fleet-auth.prd.vn.cloud.tesla.com/oauth2/v3/token"
#: what a charging head needs; ``offline_access`` is what yields a refresh token
DEFAULT_SCOPES = ("openid", "offline_access", "vehicle_device_data", "vehicle_cmds", "vehicle_charging_cmds")

def make_code_verifier() -> str:
    """A random PKCE code verifier (86 URL-safe characters; RFC 7636 allows 43..128)."""
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    """The S256 PKCE challenge of ``verifier``: unpadded base64url of its SHA-256."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the driver, and what to keep until the redirect comes back: ``state``
    (compare it with the redirect's) and the PKCE ``code_verifier`` (for the code exchange)."""

    url: str
    state: str
    code_verifier: str = field(repr=False)


class TeslaAuthError(Exception):
    """The code exchange failed. ``error`` is the auth server's error code (or a short
    description of the failure); ``refused`` says whether the server refused the grant (a new
    authorization is needed) rather than failing to answer."""

    def __init__(self, error: str, status: int | None, refused: bool) -> None:
        self.error = error
        self.status = status
        self.refused = refused
        super().__init__(f"tesla token request failed: {error}" + (f" (HTTP {status})" if status else ""))


class TeslaOAuth:
    """The Tesla auth server for one registered application.

    ``audience`` is the Fleet API base URL the tokens are for (the account's region). ``clock``
    (a :class:`twin.clock.Clock`) dates token expiries; without one, wall-clock UTC is used.
    ``transport`` lets tests serve the auth server with ``httpx.MockTransport``.
    """

    def __init__(self, client_id: str, client_secret: str, redirect_uri: str, audience: str, *,
                 region: str = "na", clock: Clock | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, token_url: str = TOKEN_URL,
                 timeout_s: float = 30.0) -> None:
        if region not in AUTHORIZE_URLS:
            raise ValueError(f"unknown Tesla region {region!r}; use one of {sorted(AUTHORIZE_URLS)}")
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.audience = audience
        self.region = region
        self.token_url = token_url
        self._clock = clock
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"TeslaOAuth(client_id={self.client_id!r}, region={self.region!r}, client_secret=<redacted>)"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> TeslaOAuth:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- authorization --------------------------------------------------------------------

    def authorization_request(self, scopes: Iterable[str] = DEFAULT_SCOPES, state: str | None = None,
                              code_verifier: str | None = None) -> AuthorizationRequest:
        """The authorize URL for a driver to grant ``scopes``, with a fresh ``state`` and PKCE
        verifier unless given."""
        state = state or secrets.token_urlsafe(24)
        verifier = code_verifier or make_code_verifier()
        query = urlencode({
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",
        })
        return AuthorizationRequest(f"{AUTHORIZE_URLS[self.region]}?{query}", state, verifier)

    async def exchange_code(self, code: str, code_verifier: str) -> Token:
        """The tokens for an authorization ``code``. Raises :class:`TeslaAuthError`."""
        form = {
            "grant_type": "authorization_code",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "code": code,
            "redirect_uri": self.redirect_uri,
            "audience": self.audience,
            "code_verifier": code_verifier,
        }
        try:
            data = await self._post(form)
        except _Refused as exc:
            raise TeslaAuthError(exc.error, exc.status, refused=True) from None
        except _Failed as exc:
            raise TeslaAuthError(exc.error, exc.status, refused=False) from None
        try:
            return self._token(data, require_refresh=False)
        except _Failed as exc:
            raise TeslaAuthError(exc.error, exc.status, refused=False) from None

    # -- refresh (a twin.auth.Refresher) ----------------------------------------------------

    async def refresh(self, account_id: str, token: Token) -> Token:
        """Trade the account's refresh token for new tokens, including the rotated refresh token.

        Raises :class:`twin.auth.RefreshRefused` when the server refuses the refresh token
        (already used, expired, revoked) and :class:`twin.auth.RefreshFailed` when it could not
        be reached or answered badly.
        """
        if not token.refresh_token:
            raise RefreshRefused(f"account {account_id} has no refresh token")
        form = {"grant_type": "refresh_token", "client_id": self.client_id, "refresh_token": token.refresh_token}
        try:
            data = await self._post(form)
            return self._token(data, require_refresh=True)
        except _Refused as exc:
            raise RefreshRefused(exc.error) from None
        except _Failed as exc:
            raise RefreshFailed(exc.error + (f" (HTTP {exc.status})" if exc.status else "")) from None

    # -- the wire -------------------------------------------------------------------------

    async def _post(self, form: dict[str, str]) -> dict[str, Any]:
        try:
            response = await self._http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise _Failed("timeout", None) from None
        except httpx.HTTPError as exc:
            raise _Failed(type(exc).__name__, None) from None
        data = _json_object(response.content)
        if response.is_success:
            if data is None:
                raise _Failed("token response is not a JSON object", response.status_code)
            return data
        error = _error_code(data)
        # a 4xx with an OAuth error code in a JSON body is a refusal; anything else (5xx, an
        # HTML page from a proxy) is a failure worth retrying
        if 400 <= response.status_code < 500 and response.status_code != 429 and error:
            raise _Refused(error, response.status_code)
        raise _Failed(error or "auth server error", response.status_code)

    def _token(self, data: dict[str, Any], *, require_refresh: bool) -> Token:
        access = data.get("access_token")
        refresh = data.get("refresh_token")
        expires_in = data.get("expires_in")
        if not isinstance(access, str) or not access:
            raise _Failed("token response without access_token", None)
        if refresh is not None and not isinstance(refresh, str):
            raise _Failed("token response with a malformed refresh_token", None)
        if require_refresh and not refresh:
            raise _Failed("token response without the rotated refresh_token", None)
        if (isinstance(expires_in, bool) or not isinstance(expires_in, (int, float))
                or not math.isfinite(expires_in) or expires_in <= 0):
            raise _Failed("token response without a valid expires_in", None)
        now = self._clock.now() if self._clock is not None else datetime.now(UTC)
        return Token(access, refresh or None, now + timedelta(seconds=float(expires_in)))


class _Refused(Exception):
    def __init__(self, error: str, status: int | None) -> None:
        self.error, self.status = error, status
        super().__init__(error)


class _Failed(Exception):
    def __init__(self, error: str, status: int | None) -> None:
        self.error, self.status = error, status
        super().__init__(error)


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _error_code(data: dict[str, Any] | None) -> str:
    """The server's ``error`` code, if it looks like one (short, no spaces): descriptions are
    left out of messages."""
    if data is None:
        return ""
    error = data.get("error")
    if isinstance(error, str) and 0 < len(error) <= 64 and error.replace("_", "").isalnum():
        return error
    return "unknown_error" if error else ""
