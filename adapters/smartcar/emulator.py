"""A Smartcar v2.0 API emulator: the same paths, JSON bodies, status codes, error bodies and
headers as ``api.smartcar.com``, its token endpoint and Connect, and signed webhook deliveries,
served by FastAPI over a simulated cloud (:class:`twin.sim.oem.SimulatedOEM`).

The cars are the twin's car physics and the cloud's behaviour is the scenario's OEM profile
(latency, 5xx failures, outages, 429 quotas, stale and coarse SoC, token expiry, cars that
ignore "stop"), so a head under test meets the cloud the twin's direct head meets. Time is the
cloud's clock: wall time when served on a socket (``twin emulate smartcar``), virtual time in
the API-in-the-loop twin (``oem_transport: http``).

What is served (under ``/v2.0``):

* ``GET /vehicles`` (``limit``/``offset`` paging), ``GET /vehicles/{id}`` (attributes);
* ``GET /vehicles/{id}/battery``, ``/charge``, ``/charge/limit`` and ``POST .../batch``; the
  readings carry ``sc-data-age`` (when the car measured them, to the millisecond);
* ``POST /vehicles/{id}/charge`` (``START``/``STOP``) and ``POST .../charge/limit``;
* ``POST /oauth/token`` (HTTP Basic client credentials; ``authorization_code`` and rotating
  ``refresh_token`` grants) and ``GET /oauth/authorize`` (Connect, approving at once);
* webhooks: each change the cloud pushes (plug-in, unplug, charging started or stopped) becomes a
  ``VEHICLE_STATE`` delivery signed with ``SC-Signature`` (HMAC-SHA256 keyed by the Application
  Management Token), handed to ``deliver(headers, body)``.

Errors have Smartcar's body (``type``, ``code``, ``description``, ``statusCode``,
``requestId``, ``resolution``); throttling answers 429 ``RATE_LIMIT`` with ``Retry-After``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from twin.auth import RefreshFailed, RefreshRefused
from twin.oem import (
    AuthExpired,
    CommandRejected,
    OEMError,
    RateLimited,
    TransientUpstream,
    UnknownVehicle,
    VehicleAsleep,
    VehicleReading,
)
from twin.sim.oem import SimulatedOEM

from .webhooks import CHARGING_SIGNAL, PLUGGED_SIGNAL, SIGNATURE_HEADER, SOC_SIGNAL

__all__ = ["create_app", "percent_of", "webhook_delivery"]

DOC = "https://smartcar.com/docs/errors/api-errors/"
#: what a refused command's reason is called in Smartcar's VEHICLE_STATE codes
_STATE_CODES = {
    "not_plugged_in": "CHARGING_PLUG_NOT_CONNECTED",
    "fully_charged": "FULLY_CHARGED",
    "already_charging": "CHARGING_IN_PROGRESS",
    "not_charging": "NOT_CHARGING",
    "other": "UNKNOWN",
}
_PAGE_MAX = 50

Deliver = Callable[[dict[str, str], bytes], Any]


def percent_of(soc: float) -> float:
    """``soc`` (a fraction) in percent, chosen so that ``percent / 100`` is ``soc`` again where a
    float allows (always for whole hundredths, the step clouds report in; other values may come back
    one bit off): a reading pushed through a webhook reaches the controller
    as the cloud measured it."""
    value = soc * 100.0
    for _ in range(4):
        back = value / 100.0
        if back == soc:
            break
        value = math.nextafter(value, math.inf if back < soc else -math.inf)
    return value if value / 100.0 == soc else soc * 100.0


def webhook_delivery(reading: VehicleReading, management_token: str, *, event_id: str, user_id: str,
                     delivered_ms: int) -> tuple[dict[str, str], bytes]:
    """The signed ``VEHICLE_STATE`` delivery (headers, body) Smartcar sends for ``reading``."""
    measured = round(reading.taken_at.timestamp() * 1000)
    meta = {"retrievedAt": delivered_ms, "oemUpdatedAt": measured}
    signals = [
        {"code": CHARGING_SIGNAL, "name": "IsCharging", "group": "Charge", "body": {"value": reading.charging},
         "meta": meta},
        {"code": PLUGGED_SIGNAL, "name": "IsChargingCableConnected", "group": "Charge",
         "body": {"value": reading.plugged_in}, "meta": meta},
    ]
    if reading.soc is not None:
        signals.insert(0, {"code": SOC_SIGNAL, "name": "StateOfCharge", "group": "TractionBattery",
                           "body": {"value": percent_of(reading.soc), "unit": "percent"}, "meta": meta})
    body = json.dumps({
        "eventId": event_id,
        "eventType": "VEHICLE_STATE",
        "data": {"vehicle": {"id": reading.vehicle_id}, "signals": signals, "user": {"id": user_id}},
        "triggers": [{"type": "SIGNAL_UPDATED", "signal": {"code": CHARGING_SIGNAL}}],
        "meta": {"version": "4.0", "deliveryId": f"dlv-{event_id}", "deliveredAt": delivered_ms,
                 "webhookId": "emulator", "webhookName": "chargetwin emulator", "signalCount": len(signals),
                 "mode": "SIMULATED"},
    }, separators=(",", ":")).encode()
    signature = hmac.new(management_token.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", SIGNATURE_HEADER: signature}, body


def _error(status: int, etype: str, code: str | None, description: str, *, retry_after: float | None = None,
           resolution: str | None = None) -> JSONResponse:
    request_id = secrets.token_hex(8)
    anchor = (code or etype).lower().replace("_", "-")
    body = {"type": etype, "code": code, "description": description,
            "docURL": f"{DOC}{etype.lower().replace('_', '-')}#{anchor}", "statusCode": status,
            "requestId": request_id, "resolution": {"type": resolution},
            "suggestedUserMessage": description}
    headers = {"sc-request-id": request_id}
    if retry_after is not None:
        headers["Retry-After"] = str(math.ceil(retry_after))
    return JSONResponse(body, status_code=status, headers=headers)


def _error_of(exc: OEMError) -> JSONResponse:
    """Smartcar's answer for a typed error of the simulated cloud."""
    if isinstance(exc, VehicleAsleep):
        return _error(409, "VEHICLE_STATE", "ASLEEP",
                      "The vehicle is in a sleep state and temporarily unable to perform your request.",
                      resolution="RETRY_LATER")
    if isinstance(exc, RateLimited):
        if exc.scope == "application":
            return _error(429, "RATE_LIMIT", "SMARTCAR_API", "Your application has exceeded its rate limit.",
                          retry_after=exc.retry_after_s, resolution="RETRY_LATER")
        if exc.scope == "account":
            return _error(502, "UPSTREAM", "RATE_LIMIT", "The vehicle's manufacturer throttled this account.",
                          retry_after=exc.retry_after_s, resolution="RETRY_LATER")
        return _error(429, "RATE_LIMIT", "VEHICLE", "You have reached the throttling rate limit for this vehicle.",
                      retry_after=exc.retry_after_s, resolution="RETRY_LATER")
    if isinstance(exc, AuthExpired):
        return _error(401, "AUTHENTICATION", None, "The access token you provided is invalid or has expired.",
                      resolution="REAUTHENTICATE")
    if isinstance(exc, UnknownVehicle):
        return _error(404, "RESOURCE_NOT_FOUND", "PATH", "The vehicle you requested does not exist.")
    if isinstance(exc, CommandRejected):
        if exc.reason == "not_capable":
            return _error(501, "COMPATIBILITY", "VEHICLE_NOT_CAPABLE", "The vehicle is not capable of this request.")
        if exc.reason == "out_of_range":
            return _error(400, "VALIDATION", "PARAMETER", "A parameter of the request is out of range.")
        code = _STATE_CODES.get(exc.reason, "UNKNOWN")
        return _error(409, "VEHICLE_STATE", code, f"The vehicle refused the request ({code}).")
    if isinstance(exc, TransientUpstream):
        return _error(502, "UPSTREAM", "UNKNOWN", "The vehicle's manufacturer did not answer as expected.",
                      resolution="RETRY_LATER")
    return _error(500, "SERVER", "INTERNAL", "Smartcar encountered an internal error.", resolution="RETRY_LATER")


def _validation(description: str) -> JSONResponse:
    return _error(400, "VALIDATION", "PARAMETER", description)


def _data_age(reading: VehicleReading) -> str:
    return reading.taken_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _battery(reading: VehicleReading) -> dict[str, Any]:
    return {"percentRemaining": reading.soc, "range": None if reading.soc is None else round(reading.soc * 400.0, 1)}


def _charge(reading: VehicleReading, limit: float) -> dict[str, Any]:
    state = "CHARGING" if reading.charging else (
        "FULLY_CHARGED" if reading.plugged_in and reading.soc is not None and reading.soc >= limit - 1e-9
        else "NOT_CHARGING")
    return {"isPluggedIn": reading.plugged_in, "state": state}


def create_app(cloud: SimulatedOEM, *, client_id: str = "emulator-client-id",
               client_secret: str = "emulator-client-secret", management_token: str = "emulator-amt",
               deliver: Deliver | None = None, make: str = "TESLA", model: str = "Model 3",
               year: int = 2021) -> FastAPI:
    """The emulator app over ``cloud``. ``deliver(headers, body)`` receives each signed webhook
    delivery (posting it to a URL, or handing it to a head in-process); without it, nothing is
    pushed."""
    app = FastAPI(title="Smartcar v2.0 API emulator (chargetwin)", docs_url="/docs", redoc_url=None)
    app.state.cloud = cloud
    app.state.codes = {}
    sequence = iter(range(1, 1 << 62))

    if deliver is not None:
        def push(reading: VehicleReading) -> None:
            n = next(sequence)
            account = cloud.account_of(reading.vehicle_id)
            headers, body = webhook_delivery(reading, management_token, event_id=f"evt-{cloud.name}-{n}",
                                             user_id=account, delivered_ms=round(cloud.clock.now().timestamp() * 1000))
            deliver(headers, body)

        cloud.subscribe(push)

    def bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def unauthenticated() -> JSONResponse:
        return _error(401, "AUTHENTICATION", None, "The request has no valid Bearer access token.",
                      resolution="REAUTHENTICATE")

    async def json_body(request: Request) -> dict[str, Any] | None:
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    async def reading_of(vehicle_id: str, token: str) -> VehicleReading | JSONResponse:
        try:
            return await cloud.serve_read(vehicle_id, token)
        except OEMError as exc:
            return _error_of(exc)

    def limit_of(vehicle_id: str) -> float:
        return cloud.car(vehicle_id).limit

    def answer(body: dict[str, Any], reading: VehicleReading | None = None) -> JSONResponse:
        headers = {"sc-request-id": secrets.token_hex(8), "sc-unit-system": "metric",
                   "sc-fetched-at": cloud.clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        if reading is not None:
            headers["sc-data-age"] = _data_age(reading)
        return JSONResponse(body, headers=headers)

    @app.get("/v2.0/vehicles")
    async def vehicles(request: Request, limit: int = 10, offset: int = 0):
        token = bearer(request)
        account = None if token is None else cloud.account_for_token(token)
        if account is None:
            return unauthenticated()
        if not 1 <= limit <= _PAGE_MAX or offset < 0:
            return _validation(f"limit must be 1..{_PAGE_MAX} and offset >= 0")
        try:
            found = await cloud.serve_discover(account)
        except OEMError as exc:
            return _error_of(exc)
        ids = [v.vehicle_id for v in found]
        return answer({"vehicles": ids[offset:offset + limit], "paging": {"count": len(ids), "offset": offset}})

    @app.get("/v2.0/vehicles/{vehicle_id}")
    async def attributes(vehicle_id: str, request: Request):
        if bearer(request) is None:
            return unauthenticated()
        try:
            cloud.car(vehicle_id)
        except OEMError as exc:
            return _error_of(exc)
        return answer({"id": vehicle_id, "make": make, "model": model, "year": year})

    async def served(request: Request, vehicle_id: str, body_of: Callable[[VehicleReading], dict[str, Any]]):
        """A read route: the car's reading, answered as ``body_of(reading)`` with its data age."""
        token = bearer(request)
        if token is None:
            return unauthenticated()
        reading = await reading_of(vehicle_id, token)
        return reading if isinstance(reading, Response) else answer(body_of(reading), reading)

    @app.get("/v2.0/vehicles/{vehicle_id}/battery")
    async def battery(vehicle_id: str, request: Request):
        return await served(request, vehicle_id, _battery)

    @app.get("/v2.0/vehicles/{vehicle_id}/charge")
    async def charge(vehicle_id: str, request: Request):
        return await served(request, vehicle_id, lambda reading: _charge(reading, limit_of(vehicle_id)))

    @app.get("/v2.0/vehicles/{vehicle_id}/charge/limit")
    async def get_limit(vehicle_id: str, request: Request):
        return await served(request, vehicle_id, lambda reading: {"limit": limit_of(vehicle_id)})

    async def posted(request: Request) -> tuple[str | None, Any]:
        """A POST route's bearer token and JSON object body ({} when the body is none); without
        a token, (None, the 401 answer)."""
        token = bearer(request)
        if token is None:
            return None, unauthenticated()
        return token, (await json_body(request)) or {}

    @app.post("/v2.0/vehicles/{vehicle_id}/batch")
    async def batch(vehicle_id: str, request: Request):
        token, body = await posted(request)
        if token is None:
            return body
        paths = body.get("requests")
        if not isinstance(paths, list) or not paths or not all(
                isinstance(p, dict) and isinstance(p.get("path"), str) for p in paths):
            return _validation('the body must be {"requests": [{"path": "/battery"}, ...]}')
        wanted = [p["path"] for p in paths]
        unknown = [p for p in wanted if p not in ("/battery", "/charge", "/charge/limit")]
        if unknown:
            return _validation(f"batch paths not served by this emulator: {', '.join(unknown)}")
        reading = await reading_of(vehicle_id, token)  # one call to the car for the whole batch
        if isinstance(reading, Response):
            return reading
        items = []
        for path in wanted:
            item_body = (_battery(reading) if path == "/battery" else _charge(reading, limit_of(vehicle_id))
                         if path == "/charge" else {"limit": limit_of(vehicle_id)})
            items.append({"path": path, "code": 200, "headers": {"sc-data-age": _data_age(reading)},
                          "body": item_body})
        return answer({"responses": items})

    async def command(vehicle_id: str, token: str, what: str, value: float | None = None) -> Response:
        try:
            await cloud.serve_command(vehicle_id, what, token, value)
        except OEMError as exc:
            return _error_of(exc)
        return answer({"status": "success", "message": "Successfully sent request to vehicle"})

    @app.post("/v2.0/vehicles/{vehicle_id}/charge")
    async def start_stop(vehicle_id: str, request: Request):
        token, body = await posted(request)
        if token is None:
            return body
        action = body.get("action")
        if action not in ("START", "STOP"):
            return _validation('the body must be {"action": "START"} or {"action": "STOP"}')
        return await command(vehicle_id, token, "start" if action == "START" else "stop")

    @app.post("/v2.0/vehicles/{vehicle_id}/charge/limit")
    async def set_limit(vehicle_id: str, request: Request):
        token, body = await posted(request)
        if token is None:
            return body
        limit = body.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0.5 <= limit <= 1.0:
            return _validation("limit must be a number from 0.5 to 1")
        return await command(vehicle_id, token, "limit", float(limit))

    # -- Connect and the token endpoint -------------------------------------------------------

    @app.get("/oauth/authorize")
    async def authorize(request: Request):
        """Smartcar Connect, approving at once: redirects with a code for the account named by
        ``user`` (default: the first account)."""
        q = request.query_params
        if q.get("response_type") != "code" or q.get("client_id") != client_id or not q.get("redirect_uri"):
            return JSONResponse({"error": "invalid_request",
                                 "error_description": "response_type=code, client_id and redirect_uri are required"},
                                status_code=400)
        accounts = sorted(set(cloud.accounts().values()))
        account = q.get("user") or (accounts[0] if accounts else "")
        if account not in accounts:
            return JSONResponse({"error": "invalid_request", "error_description": f"no account {account!r}"},
                                status_code=400)
        code = secrets.token_urlsafe(16)
        app.state.codes[code] = (account, q["redirect_uri"])
        params = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(params)}", status_code=302)

    @app.post("/oauth/token")
    async def token(request: Request):
        if not _basic_ok(request.headers.get("authorization", ""), client_id, client_secret):
            return JSONResponse({"error": "invalid_client", "error_description": "client authentication failed"},
                                status_code=401)
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        grant = form.get("grant_type")
        if grant == "authorization_code":
            entry = app.state.codes.pop(form.get("code"), None)
            if entry is None or entry[1] != form.get("redirect_uri"):
                return JSONResponse({"error": "invalid_grant", "error_description": "unknown or used code"},
                                    status_code=400)
            issued = cloud.link(entry[0])
        elif grant == "refresh_token":
            try:
                _, issued = await cloud.serve_refresh(str(form.get("refresh_token", "")))
            except RefreshRefused:
                return JSONResponse({"error": "invalid_grant", "error_description": "refresh token is invalid"},
                                    status_code=400)
            except RefreshFailed:
                return JSONResponse({"error": "server_error", "error_description": "try again later"},
                                    status_code=503)
        else:
            return JSONResponse({"error": "unsupported_grant_type", "error_description": f"{grant!r}"},
                                status_code=400)
        expires_in = (issued.expires_at - cloud.clock.now()).total_seconds()
        return JSONResponse({"access_token": issued.access_token, "token_type": "Bearer",
                             "expires_in": expires_in, "refresh_token": issued.refresh_token})

    return app


def _basic_ok(header: str, client_id: str, client_secret: str) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user, client_id) and hmac.compare_digest(password, client_secret)
