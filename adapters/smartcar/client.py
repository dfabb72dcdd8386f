"""The Smartcar head: :class:`twin.oem.OEMAdapter` over the Smartcar v2.0 Vehicles API.

A read is one ``POST /v2.0/vehicles/{id}/batch`` of ``/battery`` (``percentRemaining``, a
fraction 0..1) and ``/charge`` (``isPluggedIn``, ``state``), each answer with its own code; a
reading is dated by the answers' ``sc-data-age`` headers (when the car recorded the data), the
older of the two.
Commands are ``POST .../charge`` (``{"action": "START"|"STOP"}``) and ``POST .../charge/limit``
(``{"limit": 0.5..1}``). Smartcar's v2 API has no wake and no charging-current endpoint, so
:meth:`SmartcarClient.wake` and :meth:`SmartcarClient.set_charging_current` are refused as
``not_capable`` without a call.

Failures become the protocol's typed errors (:func:`error_for`), and so does anything the cloud
answers that is not what Smartcar documents (a body that is not JSON, a missing or mistyped
field, a SoC outside 0..1): :class:`~twin.oem.TransientUpstream`, never a made-up value.

Tokens are per account (:class:`twin.auth.AccountTokens`); a 401 is answered by one refresh
and one retry. Vehicles are mapped to their account by :meth:`SmartcarClient.discover` (or
given up front).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Self

import httpx

from twin.auth import AccountTokens
from twin.oem import (
    AuthExpired,
    CallTimeout,
    Capabilities,
    CommandRejected,
    DiscoveredVehicle,
    OEMError,
    RateBudget,
    RateLimited,
    RateScope,
    ReauthorizationRequired,
    TransientUpstream,
    UnknownVehicle,
    VehicleAsleep,
    VehicleReading,
    WebhookRejected,
)

from .webhooks import SmartcarWebhooks

__all__ = ["API_ORIGIN", "SmartcarClient", "error_for"]

_log = logging.getLogger(__name__)

API_ORIGIN = "https://api.smartcar.com"
#: the Smartcar SDK's HTTP timeout: commands can legitimately take minutes
DEFAULT_TIMEOUT_S = 310.0
#: back-off when a 429/430 carries no Retry-After (Smartcar publishes no numbers)
DEFAULT_RETRY_AFTER_S = 60.0
#: back-off for an OEM-side throttle (502 UPSTREAM/RATE_LIMIT: "a longer lockout")
UPSTREAM_RATE_LIMIT_RETRY_S = 900.0
#: back-off for a billing limit of the application's plan (430)
BILLING_RETRY_S = 3600.0
_PAGE = 50
_MAX_PAGES = 200
_REMEMBER = 200_000
_CHARGE_STATES = ("CHARGING", "FULLY_CHARGED", "NOT_CHARGING")

Kind = Literal["read", "command", "limit", "discover"]

#: VEHICLE_STATE codes of a refused command -> the protocol's rejection reason
_REJECTIONS = {
    "CHARGING_PLUG_NOT_CONNECTED": "not_plugged_in",
    "FULLY_CHARGED": "fully_charged",
    "CHARGING_IN_PROGRESS": "already_charging",
    "NOT_CHARGING": "not_charging",
}


class SmartcarClient:
    """One Smartcar application's head (implements :class:`twin.oem.OEMAdapter`).

    ``tokens``: the accounts' OAuth tokens (refresher: :meth:`.oauth.SmartcarOAuth.refresh`).
    ``vehicles``: vehicle id -> account id already known (others are learnt by
    :meth:`discover`). ``webhooks``: the receiver of the application's deliveries; without it
    the cloud does not push and cars are polled. ``api_origin`` and ``transport`` let tests and
    emulators stand in for ``https://api.smartcar.com``.
    """

    name = "smartcar"
    #: Smartcar publishes no fixed quotas: throttling is learnt from 429s unless the
    #: application's plan is given (``rate_limits``)
    rate_limits: tuple[RateBudget, ...] = ()

    def __init__(self, tokens: AccountTokens, *, vehicles: Mapping[str, str] | None = None,
                 webhooks: SmartcarWebhooks | None = None, api_origin: str = API_ORIGIN,
                 transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 unit_system: Literal["metric", "imperial"] = "metric",
                 rate_limits: tuple[RateBudget, ...] = ()) -> None:
        self.tokens = tokens
        self.webhooks = webhooks
        self.rate_limits = tuple(rate_limits)
        self._accounts: dict[str, str] = dict(vehicles or {})
        self._unit_system = unit_system
        self._http = httpx.AsyncClient(base_url=api_origin.rstrip("/") + "/v2.0", transport=transport,
                                       timeout=timeout_s)
        self._caps = Capabilities(pushes_telemetry=webhooks is not None, needs_wake=False, can_set_charge_limit=True)
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._sinks: list[Callable[[VehicleReading], None]] = []
        #: HTTP requests sent, and commands answered from the idempotency record
        self.stats = {"requests": 0, "duplicates": 0, "token_retries": 0}

    def __repr__(self) -> str:
        return f"SmartcarClient(base_url={str(self._http.base_url)!r}, vehicles={len(self._accounts)})"

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- what the head declares ---------------------------------------------------------------

    def capabilities(self, vehicle_id: str) -> Capabilities:
        """Every Smartcar car alike: pushes when webhooks are set up, never needs a wake
        (Smartcar has none), charge limit settable, current not (no v2 endpoint)."""
        return self._caps

    def register(self, vehicle_id: str, account_id: str) -> None:
        """Tell the head which account a vehicle belongs to (e.g. restored from storage)."""
        self._accounts[vehicle_id] = account_id

    # -- discovery ----------------------------------------------------------------------------

    async def discover(self, account_id: str) -> list[DiscoveredVehicle]:
        """The account's vehicles (``GET /vehicles``, every page) with their attributes."""
        ids: list[str] = []
        offset = 0
        for _ in range(_MAX_PAGES):
            body, _ = await self._call(account_id, account_id, "GET", "/vehicles", "discover",
                                       params={"limit": _PAGE, "offset": offset})
            vehicles, paging = body.get("vehicles"), body.get("paging")
            count = paging.get("count") if isinstance(paging, dict) else None
            if not isinstance(vehicles, list) or not all(isinstance(v, str) and v for v in vehicles) \
                    or not _is_int(count):
                raise TransientUpstream(account_id, "Smartcar vehicle list is not a list of ids with paging.count")
            ids.extend(v for v in vehicles if v not in ids)
            offset += len(vehicles)
            if not vehicles or offset >= count:
                break
        else:
            raise TransientUpstream(account_id, f"Smartcar vehicle list did not end within {_MAX_PAGES} pages")
        found = []
        for vid in ids:
            self._accounts[vid] = account_id
            attrs, _ = await self._call(vid, account_id, "GET", f"/vehicles/{vid}", "read")
            model = " ".join(str(attrs[k]) for k in ("make", "model", "year")
                             if isinstance(attrs.get(k), (str, int)) and not isinstance(attrs.get(k), bool))
            found.append(DiscoveredVehicle(vid, account_id, self.capabilities(vid), model))
        return found

    # -- reads --------------------------------------------------------------------------------

    async def read(self, vehicle_id: str) -> VehicleReading:
        """SoC, plug and charging state, dated when the car recorded them: one batch request
        (``POST .../batch`` for ``/battery`` and ``/charge``), so a reading costs one call."""
        account = self._account(vehicle_id)
        body, _ = await self._call(vehicle_id, account, "POST", f"/vehicles/{vehicle_id}/batch", "read",
                                   json_body={"requests": [{"path": "/battery"}, {"path": "/charge"}]})
        items = body.get("responses")
        if not isinstance(items, list):
            raise TransientUpstream(vehicle_id, "Smartcar batch answer without a responses list")
        by_path = {item.get("path"): item for item in items if isinstance(item, dict)}
        battery, battery_headers = _batch_item(vehicle_id, account, by_path, "/battery")
        charge, charge_headers = _batch_item(vehicle_id, account, by_path, "/charge")
        soc = _fraction(vehicle_id, battery, "percentRemaining", 0.0, 1.0)
        plugged = charge.get("isPluggedIn")
        state = charge.get("state")
        if not isinstance(plugged, bool):
            raise TransientUpstream(vehicle_id, "Smartcar charge status without a boolean isPluggedIn")
        if state not in _CHARGE_STATES:
            raise TransientUpstream(vehicle_id, f"Smartcar charge status with unknown state {state!r}")
        taken_at = min(_data_age(vehicle_id, battery_headers), _data_age(vehicle_id, charge_headers))
        return VehicleReading(vehicle_id, taken_at, soc, plugged, state == "CHARGING")

    async def charge_limit(self, vehicle_id: str) -> float:
        """The car's charge limit as a fraction (``GET .../charge/limit``). Some makes report
        it only while plugged in: :class:`CommandRejected` ``not_plugged_in`` otherwise."""
        body, _ = await self._call(vehicle_id, self._account(vehicle_id), "GET",
                                   f"/vehicles/{vehicle_id}/charge/limit", "limit")
        return _fraction(vehicle_id, body, "limit", 0.0, 1.0)

    # -- commands -----------------------------------------------------------------------------

    async def start_charging(self, vehicle_id: str, *, key: str) -> None:
        await self._command(vehicle_id, key, f"/vehicles/{vehicle_id}/charge", {"action": "START"}, "command")

    async def stop_charging(self, vehicle_id: str, *, key: str) -> None:
        await self._command(vehicle_id, key, f"/vehicles/{vehicle_id}/charge", {"action": "STOP"}, "command")

    async def set_charge_limit(self, vehicle_id: str, soc: float, *, key: str) -> None:
        """Set the car's charge limit; Smartcar accepts 0.5 <= limit <= 1."""
        self._account(vehicle_id)
        if isinstance(soc, bool) or not isinstance(soc, (int, float)) or not 0.5 <= soc <= 1.0:
            raise CommandRejected(vehicle_id, "out_of_range")
        await self._command(vehicle_id, key, f"/vehicles/{vehicle_id}/charge/limit", {"limit": float(soc)}, "limit")

    async def set_charging_current(self, vehicle_id: str, amps: float, *, key: str) -> None:
        """Not offered by the Smartcar v2 API."""
        self._account(vehicle_id)
        raise CommandRejected(vehicle_id, "not_capable")

    async def wake(self, vehicle_id: str) -> None:
        """Not offered by the Smartcar v2 API (Smartcar reaches the car itself)."""
        self._account(vehicle_id)
        raise CommandRejected(vehicle_id, "not_capable")

    async def _command(self, vehicle_id: str, key: str, path: str, body: dict[str, Any], kind: Kind) -> None:
        """Send a command once per ``key``: a key already acknowledged returns at once, and a
        call with a key whose command is still in flight awaits that command's outcome."""
        account = self._account(vehicle_id)
        if key in self._acked:
            self.stats["duplicates"] += 1
            return
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._send_command(vehicle_id, account, key, path, body, kind))
            self._in_flight[key] = task
            task.add_done_callback(lambda done, k=key: self._settled(k, done))
        else:
            self.stats["duplicates"] += 1
        # shielded: a caller that times out does not cancel a command already on its way
        await asyncio.shield(task)

    def _settled(self, key: str, task: asyncio.Task[None]) -> None:
        """A command finished: forget it as in flight (its outcome is read here too, so an
        outcome no caller waited for is not reported as unretrieved)."""
        self._in_flight.pop(key, None)
        if not task.cancelled():
            task.exception()

    async def _send_command(self, vehicle_id: str, account: str, key: str, path: str, body: dict[str, Any],
                            kind: Kind) -> None:
        answer, _ = await self._call(vehicle_id, account, "POST", path, kind, json_body=body)
        if answer.get("status") != "success":
            raise TransientUpstream(vehicle_id, f"Smartcar command answered status {answer.get('status')!r}")
        self._acked[key] = None
        while len(self._acked) > _REMEMBER:
            self._acked.popitem(last=False)

    # -- webhooks -----------------------------------------------------------------------------

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[VehicleReading]:
        """Readings of a signed delivery (see :class:`.webhooks.SmartcarWebhooks`); ``[]`` for
        one already seen. Raises :class:`WebhookRejected`."""
        if self.webhooks is None:
            raise WebhookRejected("Smartcar webhooks are not set up for this head (no management token)")
        return self.webhooks.parse(headers, body)

    def subscribe(self, sink: Callable[[VehicleReading], None]) -> None:
        """``sink`` receives the readings of every delivery :meth:`receive` accepts (Smartcar
        pushes over HTTP only: the web route that takes deliveries calls :meth:`receive`)."""
        self._sinks.append(sink)

    def receive(self, headers: Mapping[str, str], body: bytes) -> list[VehicleReading]:
        """A webhook delivery as a route gets it: verified and de-duplicated
        (:meth:`parse_webhook`), its readings handed to the subscribed sinks and returned.
        Raises :class:`WebhookRejected` (answer 4xx; nothing reaches the sinks)."""
        try:
            readings = self.parse_webhook(headers, body)
        except WebhookRejected as exc:
            _log.warning("Smartcar webhook rejected (%d bytes): %s", len(body), exc)
            raise
        if not readings:
            _log.info("Smartcar webhook carried no reading (a redelivery, VERIFY or VEHICLE_ERROR)")
        for reading in readings:
            for sink in self._sinks:
                sink(reading)
        return readings

    # -- HTTP ---------------------------------------------------------------------------------

    def _account(self, vehicle_id: str) -> str:
        try:
            return self._accounts[vehicle_id]
        except KeyError:
            raise UnknownVehicle(vehicle_id, "not a vehicle of any linked Smartcar account") from None

    async def _call(self, vehicle_id: str, account: str, method: str, path: str, kind: Kind, *,
                    params: dict[str, Any] | None = None,
                    json_body: dict[str, Any] | None = None) -> tuple[dict[str, Any], httpx.Headers]:
        """One API call with the account's token, refreshed once after a 401. Returns the JSON
        object of a 200 and its headers; raises the typed error of anything else."""
        token = await self.tokens.access_token(account, vehicle_id)
        response = await self._send(vehicle_id, method, path, token, params, json_body)
        if response.status_code == 401:
            self.stats["token_retries"] += 1
            token = await self.tokens.after_rejection(account, vehicle_id, token)
            response = await self._send(vehicle_id, method, path, token, params, json_body)
        if response.status_code != 200:
            raise error_for(vehicle_id, account, response, kind)
        body = _json(response.content)
        if not isinstance(body, dict):
            raise TransientUpstream(vehicle_id, f"Smartcar answered {method} {path} with a body that is not a JSON object")
        return body, response.headers

    async def _send(self, vehicle_id: str, method: str, path: str, token: str, params: dict[str, Any] | None,
                    json_body: dict[str, Any] | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if method == "GET":
            headers["sc-unit-system"] = self._unit_system
        self.stats["requests"] += 1
        try:
            return await self._http.request(method, path, params=params, json=json_body, headers=headers)
        except httpx.TimeoutException:
            raise CallTimeout(vehicle_id, f"Smartcar {method} {path} timed out") from None
        except httpx.HTTPError as exc:
            raise TransientUpstream(vehicle_id, f"Smartcar {method} {path} failed: {type(exc).__name__}") from None


def error_for(vehicle_id: str, account_id: str, response: httpx.Response, kind: Kind) -> OEMError:
    """The typed error for a Smartcar error response (``type``/``code``/``statusCode`` body).

    ``kind`` is what was asked: a read, a start/stop command, the charge limit (read or set),
    or the account's vehicle list; the same code can mean different things for each.
    """
    status = response.status_code
    body = _json(response.content)
    etype = body.get("type") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    resolution = body.get("resolution") if isinstance(body, dict) else None
    resolution_type = resolution.get("type") if isinstance(resolution, dict) else None
    request_id = body.get("requestId") if isinstance(body, dict) else None
    what = f"Smartcar {status} {etype}:{code}" + (f" (request {request_id})" if isinstance(request_id, str) else "")
    if not isinstance(etype, str):
        # no Smartcar error body (a proxy's HTML page, a gateway timeout, a truncated body)
        if status == 401:
            return AuthExpired(vehicle_id, f"Smartcar {status}: access token rejected")
        if status == 429:
            return RateLimited(vehicle_id, _retry_after(response, DEFAULT_RETRY_AFTER_S), f"Smartcar {status}",
                               scope="vehicle")
        return TransientUpstream(vehicle_id, f"Smartcar answered {status} without an error body")
    command = kind in ("command", "limit")
    if etype == "AUTHENTICATION":
        return AuthExpired(vehicle_id, what)
    if etype == "PERMISSION":
        # a scope the driver did not grant: only a new consent adds it
        return ReauthorizationRequired(vehicle_id, account_id, what)
    if etype == "CONNECTED_SERVICES_ACCOUNT":
        if code == "VEHICLE_MISSING" and kind != "discover":
            return UnknownVehicle(vehicle_id, what)
        return ReauthorizationRequired(vehicle_id, account_id, what)
    if etype == "RESOURCE_NOT_FOUND":
        return TransientUpstream(vehicle_id, what) if kind == "discover" else UnknownVehicle(vehicle_id, what)
    if etype == "VEHICLE_STATE":
        if code in ("ASLEEP", "UNREACHABLE"):
            return VehicleAsleep(vehicle_id, what)
        if code in _REJECTIONS and command:
            return CommandRejected(vehicle_id, _REJECTIONS[code])
        if code == "CHARGING_PLUG_NOT_CONNECTED" and kind == "limit":
            return CommandRejected(vehicle_id, "not_plugged_in")
        return CommandRejected(vehicle_id, "other") if command else TransientUpstream(vehicle_id, what)
    if etype == "RATE_LIMIT":
        scope: RateScope = "application" if code == "SMARTCAR_API" else "vehicle"
        return RateLimited(vehicle_id, _retry_after(response, DEFAULT_RETRY_AFTER_S), what, scope=scope)
    if etype == "BILLING":
        scope = "vehicle" if code == "VEHICLE_REQUEST_LIMIT" else "application"
        return RateLimited(vehicle_id, _retry_after(response, BILLING_RETRY_S), what, scope=scope)
    if etype == "COMPATIBILITY":
        return CommandRejected(vehicle_id, "not_capable")
    if etype == "VALIDATION":
        return CommandRejected(vehicle_id, "out_of_range" if kind == "limit" else "other") if command \
            else TransientUpstream(vehicle_id, what)
    if etype == "UPSTREAM" and code == "RATE_LIMIT":
        return RateLimited(vehicle_id, _retry_after(response, UPSTREAM_RATE_LIMIT_RETRY_S), what, scope="account")
    if resolution_type == "REAUTHENTICATE":
        return ReauthorizationRequired(vehicle_id, account_id, what)
    # SERVER, UPSTREAM and anything undocumented
    return TransientUpstream(vehicle_id, what)


def _batch_item(vehicle_id: str, account: str, by_path: dict[Any, dict[str, Any]],
                path: str) -> tuple[dict[str, Any], httpx.Headers]:
    """One answer of a batch: its body and headers, or the typed error of its own code."""
    item = by_path.get(path)
    if item is None:
        raise TransientUpstream(vehicle_id, f"Smartcar batch answer without {path}")
    code, body, headers = item.get("code"), item.get("body"), item.get("headers", {})
    if not _is_int(code) or not isinstance(body, dict) or not isinstance(headers, dict) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise TransientUpstream(vehicle_id, f"Smartcar batch answer for {path} is not a code, headers and body")
    if code != 200:
        response = httpx.Response(code, headers=headers, content=json.dumps(body).encode())
        raise error_for(vehicle_id, account, response, "read")
    return body, httpx.Headers(headers)


def _json(content: bytes) -> object:
    try:
        return json.loads(content)
    except (ValueError, TypeError):
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fraction(vehicle_id: str, body: dict[str, Any], field: str, low: float, high: float) -> float:
    """``body[field]`` as a number within low..high, else :class:`TransientUpstream`."""
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TransientUpstream(vehicle_id, f"Smartcar answer without a numeric {field}")
    if not low <= value <= high:
        raise TransientUpstream(vehicle_id, f"Smartcar {field} {value!r} outside {low:g}..{high:g}")
    return float(value)


def _data_age(vehicle_id: str, headers: httpx.Headers) -> datetime:
    """When the car recorded the data: the ISO-8601 ``sc-data-age`` header (UTC)."""
    raw = headers.get("sc-data-age")
    if not raw:
        raise TransientUpstream(vehicle_id, "Smartcar answer without an sc-data-age header")
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise TransientUpstream(vehicle_id, f"Smartcar sc-data-age {raw!r} is not an ISO-8601 time") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _retry_after(response: httpx.Response, default: float) -> float:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), else ``default``."""
    raw = response.headers.get("retry-after")
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return seconds if math.isfinite(seconds) and seconds >= 0 else default
