"""Smartcar Connect: the OAuth2 authorization-code flow of the v2 API.

A web route sends the driver to :func:`authorize_url`, receives the redirect back
(:func:`code_from_redirect` checks ``state``), and exchanges the code for tokens
(:meth:`SmartcarOAuth.exchange_code`). :meth:`SmartcarOAuth.refresh` is the refresher that
:class:`twin.auth.AccountTokens` calls ahead of expiry.

Smartcar facts this follows:

* consent at ``https://connect.smartcar.com/oauth/authorize`` with ``response_type=code``,
  ``client_id``, ``redirect_uri``, ``approval_prompt``, space-separated ``scope``, ``mode``
  (``live``/``test``/``simulated``) and ``state``; Smartcar documents no PKCE parameters, so
  none are sent;
* the token endpoint ``https://auth.smartcar.com/oauth/token`` takes a form body and HTTP Basic
  ``client_id:client_secret``; access tokens live 7200 s;
* refresh tokens rotate: every refresh returns a new one and the used one dies shortly after,
  so the new token must be stored at once (``AccountTokens`` stores it atomically);
* refusals come as ``{"error": "invalid_grant", "error_description": ...}``.

Tokens, codes and the client secret never appear in logs, exception messages or reprs.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx

from twin.auth import RefreshFailed, RefreshRefused, Token

__all__ = [
    "CONNECT_URL",
    "DEFAULT_SCOPES",
    "TOKEN_URL",
    "AuthorizationFailed",
    "SmartcarOAuth",
    "authorize_url",
    "code_from_redirect",
]

CONNECT_URL = "https://connect.smartcar.com/oauth/authorize"
TOKEN_URL = "https://auth.smartcar.com/oauth/token"
#: what a charging head needs: attributes, battery, charge status and charge control
DEFAULT_SCOPES = ("read_vehicle_info", "read_battery", "read_charge", "control_charge")
_MODES = ("live", "test", "simulated")
_TIMEOUT_S = 30.0


def authorize_url(client_id: str, redirect_uri: str, state: str, *, scope: Sequence[str] = DEFAULT_SCOPES,
                  mode: str = "live", approval_prompt: str = "auto", make: str | None = None,
                  single_select: bool | None = None, connect_url: str = CONNECT_URL) -> str:
    """The Smartcar Connect URL to send the driver to. ``state`` must be an unguessable value
    the route keeps in the driver's session and checks on the way back."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    if approval_prompt not in ("auto", "force"):
        raise ValueError(f"approval_prompt must be 'auto' or 'force', got {approval_prompt!r}")
    if not state:
        raise ValueError("state is required (it protects the redirect against forgery)")
    if not scope:
        raise ValueError("at least one scope is required")
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "approval_prompt": approval_prompt,
        "scope": " ".join(scope),
        "mode": mode,
        "state": state,
    }
    if make is not None:
        params["make"] = make
    if single_select is not None:
        params["single_select"] = "true" if single_select else "false"
    return f"{connect_url}?{urlencode(params)}"


class AuthorizationFailed(Exception):
    """Linking an account failed. ``error`` is the OAuth error code (``access_denied``,
    ``invalid_grant``, ...); ``transient`` says whether trying again may help."""

    def __init__(self, error: str, message: str, transient: bool = False) -> None:
        self.error = error
        self.transient = transient
        super().__init__(message)


def code_from_redirect(query: Mapping[str, str], expected_state: str) -> str:
    """The authorization code of Connect's redirect back (``?code=..&state=..``), after checking
    ``state`` against the one the route issued. Raises :class:`AuthorizationFailed`."""
    state = query.get("state") or ""
    if not expected_state or not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise AuthorizationFailed("invalid_state", "the redirect's state does not match the one issued")
    if "error" in query:
        raise AuthorizationFailed(str(query["error"]), f"the driver did not grant access ({query['error']})")
    code = query.get("code")
    if not code:
        raise AuthorizationFailed("invalid_request", "the redirect carries no authorization code")
    return code


class SmartcarOAuth:
    """The Smartcar token endpoint for one application.

    ``transport`` and ``token_url`` are injectable (tests, emulators); ``now`` gives UTC time
    for the tokens' expiry.
    """

    def __init__(self, client_id: str, client_secret: str, redirect_uri: str, *, token_url: str = TOKEN_URL,
                 transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = _TIMEOUT_S,
                 now: Callable[[], datetime] | None = None) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.token_url = token_url
        self._transport = transport
        self._timeout_s = timeout_s
        self._now = now or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"SmartcarOAuth(client_id={self.client_id!r}, token_url={self.token_url!r})"

    def authorize_url(self, state: str, **options) -> str:
        """:func:`authorize_url` for this application."""
        return authorize_url(self.client_id, self.redirect_uri, state, **options)

    async def exchange_code(self, code: str) -> Token:
        """Tokens for the code of Connect's redirect. Raises :class:`AuthorizationFailed`."""
        outcome = await self._post({"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri})
        if isinstance(outcome, Token):
            return outcome
        refused, error, message = outcome
        raise AuthorizationFailed(error, f"code exchange failed: {message}", transient=not refused)

    async def refresh(self, account_id: str, token: Token) -> Token:
        """The refresh-token grant (a :data:`twin.auth.Refresher`): the new access token and the
        rotated refresh token. Raises :class:`~twin.auth.RefreshRefused` when Smartcar refuses
        the refresh token, :class:`~twin.auth.RefreshFailed` when it could not be asked."""
        if not token.refresh_token:
            raise RefreshRefused("no refresh token")
        outcome = await self._post({"grant_type": "refresh_token", "refresh_token": token.refresh_token})
        if isinstance(outcome, Token):
            return outcome
        refused, _error, message = outcome
        raise (RefreshRefused if refused else RefreshFailed)(message)

    async def _post(self, form: dict[str, str]) -> Token | tuple[bool, str, str]:
        """POST the grant; the token, or (refused, OAuth error code, message). Messages name
        only error codes and statuses, never a token, code or secret."""
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=self._timeout_s) as client:
                response = await client.post(self.token_url, data=form, auth=(self.client_id, self._client_secret),
                                             headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            return False, "timeout", "the token endpoint did not answer in time"
        except httpx.HTTPError as exc:
            return False, "unreachable", f"the token endpoint could not be reached ({type(exc).__name__})"
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if response.status_code == 200:
            token = self._token(body)
            if token is None:
                return False, "invalid_response", "the token endpoint answered 200 with an unusable body"
            return token
        error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
        if error is None or response.status_code == 429 or not 400 <= response.status_code < 500:
            # no OAuth refusal in the body (a proxy page, an outage, throttling): try again later
            return False, error or "server_error", f"the token endpoint answered {response.status_code}"
        return True, error, f"the token endpoint refused the grant: {error}"

    def _token(self, body: object) -> Token | None:
        """The :class:`Token` of a 200 body, or None when it lacks or mistypes a field."""
        if not isinstance(body, dict):
            return None
        access, refresh, expires_in = body.get("access_token"), body.get("refresh_token"), body.get("expires_in")
        token_type = body.get("token_type")
        if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
            return None
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or not math.isfinite(expires_in) \
                or expires_in <= 0:
            return None
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            return None
        return Token(access, refresh, self._now() + timedelta(seconds=float(expires_in)))
