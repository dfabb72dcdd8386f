"""A Tesla Fleet API emulator: the same ``/api/1`` paths, response envelope, status codes,
error strings and headers as ``fleet-api.prd.*.vn.cloud.tesla.com``, and its token endpoint,
served by FastAPI over a simulated cloud (:class:`twin.sim.oem.SimulatedOEM`).

The cars are the twin's car physics and the cloud's behaviour is the scenario's OEM profile
(latency, 5xx failures, outages, 429 quotas, sleep and wake, stale and coarse SoC, token expiry,
cars that ignore "stop", charging current), so a head under test meets the cloud the twin's
direct head meets. Time is the cloud's clock: wall time when served on a socket (``twin emulate
tesla``), virtual time in the API-in-the-loop twin (``oem_transport: http``).

What is served:

* ``GET /api/1/vehicles`` (``page``/``per_page``), ``GET /api/1/vehicles/{vin}`` (the summary:
  ``online`` or ``asleep``, never a call to the car);
* ``GET /api/1/vehicles/{vin}/vehicle_data`` (``charge_state``: ``battery_level`` in whole
  percent, ``charging_state``, limits, currents, ``timestamp`` in ms), **408** while the car
  sleeps;
* ``POST .../wake_up`` (answers once the car is awake, with ``"state": "online"``);
* ``POST .../command/charge_start|charge_stop|set_charging_amps|set_charge_limit``: ``{"result":
  true}``, or ``{"result": false, "reason": "is_charging" | "not_charging" | "complete" |
  "disconnected"}``;
* ``POST /oauth2/v3/token`` (``authorization_code`` with PKCE, single-use rotating
  ``refresh_token``), ``GET /oauth2/v3/authorize`` (approving at once), ``GET /status``.

Errors: 401 without a body (expired token), 404 unknown vehicle, 408 asleep, 429 with
``Retry-After`` and ``RateLimit-*`` headers, 500 ``upstream internal error``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from twin.auth import RefreshFailed, RefreshRefused
from twin.oem import (
    AuthExpired,
    CommandRejected,
    OEMError,
    RateLimited,
    UnknownVehicle,
    VehicleAsleep,
)
from twin.sim.oem import SimulatedOEM

__all__ = ["create_app"]

#: a refused command's reason as the Fleet API words it
_REASONS = {
    "already_charging": "is_charging",
    "not_charging": "not_charging",
    "fully_charged": "complete",
    "not_plugged_in": "disconnected",
}
_ASLEEP = "vehicle unavailable: vehicle is offline or asleep"


def _envelope(response: Any, status: int = 200, error: str | None = None, headers: dict[str, str] | None = None,
              ) -> JSONResponse:
    body = {"response": response, "error": error, "error_description": ""} if error else {"response": response}
    return JSONResponse(body, status_code=status, headers=headers)


def _error_of(exc: OEMError, quota: int | None) -> Response:
    """The Fleet API's answer for a typed error of the simulated cloud."""
    if isinstance(exc, VehicleAsleep):
        return _envelope(None, 408, _ASLEEP)
    if isinstance(exc, RateLimited):
        after = str(math.ceil(exc.retry_after_s))
        headers = {"Retry-After": after, "RateLimit-Remaining": "0", "RateLimit-Reset": after}
        if quota is not None:
            headers["RateLimit-Limit"] = str(quota)
        return _envelope(None, 429, "Too Many Requests", headers)
    if isinstance(exc, AuthExpired):
        return Response(status_code=401)  # Tesla answers an expired token without a body
    if isinstance(exc, UnknownVehicle):
        return _envelope(None, 404, "not_found")
    if isinstance(exc, CommandRejected):
        if exc.reason in _REASONS:
            return _envelope({"result": False, "reason": _REASONS[exc.reason]})
        if exc.reason == "out_of_range":
            return _envelope(None, 400, "invalid_field")
        if exc.reason == "not_capable":
            return _envelope(None, 422, "invalid_resource")
        return _envelope({"result": False, "reason": exc.reason})
    return _envelope(None, 500, "upstream internal error")


def _vin_number(vin: str) -> int:
    """A stable numeric id for a VIN (the Fleet API's ``id``)."""
    return int.from_bytes(hashlib.sha256(vin.encode()).digest()[:6], "big")


def create_app(cloud: SimulatedOEM, *, client_id: str = "emulator-client-id",
               client_secret: str = "emulator-client-secret", region: str = "na",
               soc_limit_min: int = 50, soc_limit_max: int = 100) -> FastAPI:
    """The emulator app over ``cloud`` (vehicle ids are served as VINs)."""
    app = FastAPI(title="Tesla Fleet API emulator (chargetwin)", docs_url="/docs", redoc_url=None)
    app.state.cloud = cloud
    app.state.codes = {}
    caps_of = cloud.capabilities
    quota = cloud.profile.calls_per_vehicle_per_hour

    def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def summary(vin: str) -> dict[str, Any]:
        return {"id": _vin_number(vin), "vehicle_id": _vin_number(vin) % 10**10, "vin": vin,
                "display_name": vin[-6:], "state": "online" if cloud.awake(vin) else "asleep",
                "access_type": "OWNER", "in_service": False, "api_version": 76}

    async def json_body(request: Request) -> dict[str, Any] | None:
        if "json" not in request.headers.get("content-type", ""):
            return None
        try:
            data = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def charge_state(vin: str, soc: float | None, plugged: bool, charging: bool, taken_ms: int) -> dict[str, Any]:
        car = cloud.car(vin)
        caps = caps_of(vin)
        level = None if soc is None else round(soc * 100.0)
        if not plugged:
            state = "Disconnected"
        elif charging:
            state = "Charging"
        elif soc is not None and soc >= car.limit - 1e-9:
            state = "Complete"
        else:
            state = "Stopped"
        amps_max = None if caps.max_amps is None else int(caps.max_amps)
        requested = amps_max
        if amps_max is not None and math.isfinite(car.cap_kw):
            requested = int(min(amps_max, round(car.cap_kw / caps.kw_per_amp())))
        actual = 0
        if charging and caps.max_amps is not None:
            actual = requested or 0
        return {
            "battery_level": level, "usable_battery_level": level,
            "battery_range": None if soc is None else round(soc * 300.0, 2),
            "charging_state": state,
            "charge_limit_soc": round(car.limit * 100.0),
            "charge_limit_soc_min": soc_limit_min, "charge_limit_soc_max": soc_limit_max,
            "charge_limit_soc_std": 80,
            "charge_current_request": requested, "charge_current_request_max": amps_max,
            "charge_amps": requested, "charger_actual_current": actual,
            "charger_voltage": int(caps.volts) if charging else 2,
            "charger_phases": caps.phases if charging else None,
            "charger_power": round(actual * caps.kw_per_amp()) if charging else 0,
            "charge_port_door_open": plugged, "conn_charge_cable": "IEC" if plugged else "<invalid>",
            "scheduled_charging_mode": "Off", "scheduled_charging_pending": False,
            "timestamp": taken_ms,
        }

    @app.get("/status")
    async def status():
        return PlainTextResponse("ok")

    @app.get("/api/1/vehicles")
    async def vehicles(request: Request, page: int = 1, per_page: int = 100):
        token = bearer(request)
        account = None if token is None else cloud.account_for_token(token)
        if account is None:
            return Response(status_code=401)
        if page < 1 or not 1 <= per_page <= 100:
            return _envelope(None, 400, "invalid_field")
        try:
            found = await cloud.serve_discover(account)
        except OEMError as exc:
            return _error_of(exc, quota)
        vins = [v.vehicle_id for v in found]
        chunk = vins[(page - 1) * per_page:page * per_page]
        return JSONResponse({"response": [summary(v) for v in chunk], "count": len(vins),
                             "pagination": {"previous": page - 1 or None, "next": page + 1
                                            if page * per_page < len(vins) else None,
                                            "current": page, "per_page": per_page, "count": len(vins),
                                            "pages": max(1, math.ceil(len(vins) / per_page))}})

    @app.get("/api/1/vehicles/{vin}")
    async def vehicle(vin: str, request: Request):
        if bearer(request) is None:
            return Response(status_code=401)
        try:
            return _envelope(summary(vin))
        except OEMError as exc:
            return _error_of(exc, quota)

    async def authorized(request: Request, serve) -> Response:
        """``serve(token)`` for a request with a bearer token (401 without a body otherwise),
        the cloud's typed errors answered as the Fleet API answers them."""
        token = bearer(request)
        if token is None:
            return Response(status_code=401)
        try:
            return await serve(token)
        except OEMError as exc:
            return _error_of(exc, quota)

    @app.get("/api/1/vehicles/{vin}/vehicle_data")
    async def vehicle_data(vin: str, request: Request):
        async def serve(token: str) -> Response:
            reading = await cloud.serve_read(vin, token)
            data = summary(vin)
            taken_ms = round(reading.taken_at.timestamp() * 1000)
            data["charge_state"] = charge_state(vin, reading.soc, reading.plugged_in, reading.charging, taken_ms)
            return _envelope(data)

        return await authorized(request, serve)

    @app.post("/api/1/vehicles/{vin}/wake_up")
    async def wake_up(vin: str, request: Request):
        async def serve(token: str) -> Response:
            await cloud.serve_wake(vin, token)
            return _envelope(summary(vin))

        return await authorized(request, serve)

    @app.post("/api/1/vehicles/{vin}/command/{name}")
    async def command(vin: str, name: str, request: Request):
        async def serve(token: str) -> Response:
            body = await json_body(request)
            if body is None:
                return _envelope(None, 406, "not_a_JSON_request")
            if name in ("charge_start", "charge_stop"):
                what, value = ("start" if name == "charge_start" else "stop"), None
            elif name == "set_charging_amps":
                amps = body.get("charging_amps")
                if isinstance(amps, bool) or not isinstance(amps, int):
                    return _envelope(None, 400, "invalid_field")
                what, value = "current", float(amps)
            elif name == "set_charge_limit":
                percent = body.get("percent")
                if isinstance(percent, bool) or not isinstance(percent, int) \
                        or not soc_limit_min <= percent <= soc_limit_max:
                    return _envelope(None, 400, "invalid_field")
                what, value = "limit", percent / 100.0
            else:
                return _envelope(None, 400, "invalid_command")
            await cloud.serve_command(vin, what, token, value)
            return _envelope({"result": True, "reason": ""})

        return await authorized(request, serve)

    # -- the auth server --------------------------------------------------------------------

    @app.get("/oauth2/v3/authorize")
    async def authorize(request: Request):
        """Approves at once: redirects with a code for the account named by ``login_hint``
        (default: the first account). PKCE (S256) is required."""
        q = request.query_params
        if q.get("response_type") != "code" or q.get("client_id") != client_id or not q.get("redirect_uri") \
                or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        accounts = sorted(set(cloud.accounts().values()))
        account = q.get("login_hint") or (accounts[0] if accounts else "")
        if account not in accounts:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        app.state.codes[code] = (account, q["redirect_uri"], q["code_challenge"])
        params = {"code": code, "issuer": "emulator", **({"state": q["state"]} if "state" in q else {})}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(params)}", status_code=302)

    @app.post("/oauth2/v3/token")
    async def token(request: Request):
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("client_id") != client_id:
            return JSONResponse({"error": "unauthorized_client"}, status_code=401)
        grant = form.get("grant_type")
        if grant == "authorization_code":
            if not hmac.compare_digest(form.get("client_secret", ""), client_secret):
                return JSONResponse({"error": "unauthorized_client"}, status_code=401)
            entry = app.state.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if entry is None or entry[1] != form.get("redirect_uri") or not hmac.compare_digest(challenge, entry[2]):
                return JSONResponse({"error": "invalid_auth_code"}, status_code=400)
            issued = cloud.link(entry[0])
        elif grant == "refresh_token":
            try:
                _, issued = await cloud.serve_refresh(form.get("refresh_token", ""))
            except RefreshRefused:
                return JSONResponse({"error": "login_required"}, status_code=401)
            except RefreshFailed:
                return JSONResponse({"error": "server_error"}, status_code=503)
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        expires_in = (issued.expires_at - cloud.clock.now()).total_seconds()
        return JSONResponse({"access_token": issued.access_token, "refresh_token": issued.refresh_token,
                             "id_token": secrets.token_urlsafe(16), "expires_in": expires_in,
                             "token_type": "Bearer"})

    return app
