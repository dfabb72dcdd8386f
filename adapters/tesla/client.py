"""The Tesla Fleet API head: :class:`twin.oem.OEMAdapter` over HTTP with ``httpx``.

Vehicles are addressed by VIN (the Fleet API accepts the VIN wherever it takes a vehicle id,
and the command-signing proxy requires it). What the head does with each call:

* ``discover``: ``GET /api/1/vehicles`` (paged), which does not wake the cars.
* ``read``: ``GET /api/1/vehicles/{vin}/vehicle_data?endpoints=charge_state``; ``battery_level``
  (%) becomes the SoC fraction, ``charging_state`` the plug and charging flags (only
  ``Disconnected`` means unplugged; an unknown or empty state is an error, never "unplugged"),
  ``timestamp`` (ms) the reading's UTC time. The charge limit, requested current and its
  maximum, phases and voltage update the car's :class:`~twin.oem.Capabilities`.
* ``wake``: ``POST .../wake_up``, then the summary ``GET /api/1/vehicles/{vin}`` is polled
  (2 s, ×1.15 back-off, 60 s by default) until the car is ``online``.
* commands: ``POST .../command/charge_start|charge_stop|set_charging_amps|set_charge_limit``.
  ``{"result": false, "reason": ...}`` becomes :class:`~twin.oem.CommandRejected` (``already_set``
  is success). A command is sent once per idempotency key.

HTTP failures become the protocol's typed errors: 408 (and the signing proxy's 500 with the
same text) :class:`~twin.oem.VehicleAsleep`; 429 :class:`~twin.oem.RateLimited` with
``Retry-After``; 401 refreshes the account's token once and retries, then
:class:`~twin.oem.AuthExpired` (a refused refresh is
:class:`~twin.oem.ReauthorizationRequired`); 404 :class:`~twin.oem.UnknownVehicle`; 5xx and 540
:class:`~twin.oem.TransientUpstream`; timeouts :class:`~twin.oem.CallTimeout`. A body the head
cannot read (not JSON, truncated, missing or mistyped fields, a battery level outside 0..100)
is a :class:`~twin.oem.TransientUpstream`: a wrong reading is never returned.

The Fleet API has no webhooks (Fleet Telemetry streams to a server of one's own, which this
head does not receive): cars are polled, ``subscribe`` never calls its sink and
``parse_webhook`` rejects every delivery.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from twin.auth import AccountTokens
from twin.clock import Clock
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

__all__ = [
    "CHARGING_STATES",
    "DEFAULT_RATE_LIMITS",
    "REASONS",
    "REGIONS",
    "ChargeState",
    "TeslaFleetClient",
    "parse_charge_state",
]

#: Fleet API base URL per region (NA also serves APAC); a wrong region answers 421
REGIONS = {
    "na": "https://fleet-api.prd.na.vn.cloud.tesla.com",
    "eu": "https://fleet-api.prd.eu.vn.cloud.tesla.com",
    "cn": "https://fleet-api.prd.cn.vn.cloud.tesla.cn",
}

#: ``charging_state`` -> (plugged_in, charging); only ``Disconnected`` is unplugged
CHARGING_STATES: dict[str, tuple[bool, bool]] = {
    "Disconnected": (False, False),
    "Starting": (True, False),
    "Charging": (True, True),
    "Stopped": (True, False),
    "Complete": (True, False),
    "NoPower": (True, False),
}

#: a command's ``reason`` -> the protocol's rejection reason (``None``: already done, success)
REASONS: dict[str, str | None] = {
    "is_charging": "already_charging",
    "not_charging": "not_charging",
    "complete": "fully_charged",
    "disconnected": "not_plugged_in",
    "already_set": None,
    "unsigned_cmds_hardlocked": "not_capable",
}

#: the Discovery plan's device-data allowance (200 requests per vehicle per day). Tesla also
#: counts commands (50/day) and wakes (15/day) separately, which one budget cannot express.
DEFAULT_RATE_LIMITS = (RateBudget("vehicle", 200, 86_400.0),)

# Default charge-limit bounds (charge_limit_soc_min..max) until a reading reports the car's own.
_LIMIT_MIN_PCT, _LIMIT_MAX_PCT = 50, 100
# Below this the car reports idle voltage (~2 V), not the supply's.
_MIN_SUPPLY_VOLTS = 100.0
# Retry-After when a 429 carries neither Retry-After nor RateLimit-Reset.
_DEFAULT_RETRY_AFTER_S = 60.0
# Idempotency keys remembered (far more than a day of a large fleet's commands).
_REMEMBER = 200_000
_PAGE_SIZE = 100
_MAX_PAGES = 100


@dataclass(frozen=True, slots=True)
class ChargeState:
    """The parts of a ``charge_state`` the head uses. Percentages are kept as the API gives
    them except ``soc`` and ``charge_limit`` (fractions 0..1); currents in A, voltage in V."""

    vehicle_id: str
    taken_at: datetime
    soc: float
    charging_state: str
    plugged_in: bool
    charging: bool
    charge_limit: float | None = None
    charge_limit_soc_min: int | None = None
    charge_limit_soc_max: int | None = None
    charge_current_request: int | None = None
    charge_current_request_max: int | None = None
    charger_actual_current: int | None = None
    charger_voltage: int | None = None
    charger_phases: int | None = None

    def reading(self) -> VehicleReading:
        return VehicleReading(self.vehicle_id, self.taken_at, self.soc, self.plugged_in, self.charging)


def _bad(vehicle_id: str, what: str) -> TransientUpstream:
    return TransientUpstream(vehicle_id, f"unreadable Tesla response: {what}")


def _number(cs: Mapping[str, Any], name: str, vehicle_id: str, *, required: bool = False,
            integer: bool = False) -> float | None:
    """``cs[name]`` as a finite number (``None`` if absent or null, unless ``required``)."""
    value = cs.get(name)
    if value is None:
        if required:
            raise _bad(vehicle_id, f"charge_state.{name} missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(vehicle_id, f"charge_state.{name} is not a number ({type(value).__name__})")
    if integer and value != int(value):
        raise _bad(vehicle_id, f"charge_state.{name} is not a whole number")
    return value


def _percent(cs: Mapping[str, Any], name: str, vehicle_id: str, *, required: bool = False) -> float | None:
    value = _number(cs, name, vehicle_id, required=required)
    if value is not None and not 0 <= value <= 100:
        raise _bad(vehicle_id, f"charge_state.{name} = {value} is outside 0..100 %")
    return value


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def parse_charge_state(vehicle_id: str, response: Any) -> ChargeState:
    """The :class:`ChargeState` in a ``vehicle_data`` ``response`` object. Raises
    :class:`~twin.oem.TransientUpstream` for anything missing, mistyped or out of range."""
    if not isinstance(response, dict):
        raise _bad(vehicle_id, "vehicle_data response is not an object")
    cs = response.get("charge_state")
    if not isinstance(cs, dict):
        raise _bad(vehicle_id, "vehicle_data without charge_state")
    level = _percent(cs, "battery_level", vehicle_id, required=True)
    state = cs.get("charging_state")
    if not isinstance(state, str) or state not in CHARGING_STATES:
        raise _bad(vehicle_id, f"unknown charging_state {state!r}")
    plugged_in, charging = CHARGING_STATES[state]
    stamp = _number(cs, "timestamp", vehicle_id, required=True, integer=True)
    try:
        if stamp <= 0:
            raise ValueError
        taken_at = datetime.fromtimestamp(stamp / 1000.0, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise _bad(vehicle_id, f"charge_state.timestamp {stamp!r} is not a time in ms") from None
    limit = _percent(cs, "charge_limit_soc", vehicle_id)
    phases = _number(cs, "charger_phases", vehicle_id, integer=True)
    return ChargeState(
        vehicle_id=vehicle_id,
        taken_at=taken_at,
        soc=level / 100.0,
        charging_state=state,
        plugged_in=plugged_in,
        charging=charging,
        charge_limit=None if limit is None else limit / 100.0,
        charge_limit_soc_min=_int(_percent(cs, "charge_limit_soc_min", vehicle_id)),
        charge_limit_soc_max=_int(_percent(cs, "charge_limit_soc_max", vehicle_id)),
        charge_current_request=_int(_number(cs, "charge_current_request", vehicle_id, integer=True)),
        charge_current_request_max=_int(_number(cs, "charge_current_request_max", vehicle_id, integer=True)),
        charger_actual_current=_int(_number(cs, "charger_actual_current", vehicle_id, integer=True)),
        charger_voltage=_int(_number(cs, "charger_voltage", vehicle_id)),
        charger_phases=_int(phases),
    )


class _Vehicle:
    """What the head knows of one car."""

    __slots__ = ("account", "charge", "phases", "state", "volts")

    def __init__(self, account: str) -> None:
        self.account = account
        self.state: str | None = None          # online / asleep / offline, as last reported
        self.charge: ChargeState | None = None  # the last reading
        self.volts = 230.0
        self.phases = 1


class TeslaFleetClient:
    """The Tesla Fleet API as an :class:`twin.oem.OEMAdapter`.

    ``tokens`` holds each account's OAuth tokens (refreshed through
    :meth:`adapters.tesla.oauth.TeslaOAuth.refresh`); ``clock`` is the host's clock (wake
    polling). ``region`` picks the base URL (``na``, ``eu``, ``cn``) unless ``base_url`` is
    given; ``transport`` replaces the network (``httpx.MockTransport`` in tests). ``accounts``
    maps VINs to accounts for cars known before :meth:`discover`. The API does not report the
    lowest settable current: ``min_amps`` supplies it. Until a reading reports the car's own
    (``charge_current_request_max``, the supply's voltage and phases while charging),
    ``max_amps`` (the charger's rating; ``None``: the current is not settable yet), ``volts`` and
    ``phases`` stand in.
    """

    def __init__(self, tokens: AccountTokens, clock: Clock, *, region: str = "na", base_url: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 30.0,
                 accounts: Mapping[str, str] | None = None, min_amps: float = 5.0,
                 rate_limits: tuple[RateBudget, ...] = DEFAULT_RATE_LIMITS, wake_timeout_s: float = 60.0,
                 wake_interval_s: float = 2.0, wake_backoff: float = 1.15, name: str = "tesla",
                 max_amps: float | None = None, volts: float = 230.0, phases: int = 1) -> None:
        if base_url is None:
            if region not in REGIONS:
                raise ValueError(f"unknown Tesla region {region!r}; use one of {sorted(REGIONS)}")
            base_url = REGIONS[region]
        self.name = name
        self.rate_limits = rate_limits
        self.base_url = base_url
        self.min_amps = float(min_amps)
        self.max_amps = None if max_amps is None else float(max_amps)
        self._volts, self._phases = float(volts), int(phases)
        self.wake_timeout_s = wake_timeout_s
        self.wake_interval_s = wake_interval_s
        self.wake_backoff = wake_backoff
        self._tokens = tokens
        self._clock = clock
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout_s,
                                       headers={"Content-Type": "application/json", "Accept": "application/json"})
        self._vehicles: dict[str, _Vehicle] = {}
        for vin, acct in (accounts or {}).items():
            self._add(vin, acct)
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: HTTP requests sent and commands de-duplicated (for KPIs and tests)
        self.stats = {"requests": 0, "duplicates": 0, "token_retries": 0}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> TeslaFleetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- what the head declares -------------------------------------------------------------

    def capabilities(self, vehicle_id: str) -> Capabilities:
        """Polled, sleeps, charge limit settable; the current is settable once a reading
        reported ``charge_current_request_max``."""
        car = self._car(vehicle_id)
        top = self.max_amps if car.charge is None else car.charge.charge_current_request_max
        current: dict[str, Any] = {}
        if top is not None and top >= self.min_amps:
            current = {"min_amps": self.min_amps, "max_amps": float(top), "amps_step": 1.0}
        return Capabilities(pushes_telemetry=False, needs_wake=True, can_set_charge_limit=True,
                            volts=car.volts, phases=car.phases, **current)

    def account_of(self, vehicle_id: str) -> str:
        return self._car(vehicle_id).account

    # -- OEMAdapter calls -------------------------------------------------------------------

    async def discover(self, account_id: str) -> list[DiscoveredVehicle]:
        """The account's cars (by VIN), from ``GET /api/1/vehicles``."""
        found: list[tuple[str, str | None]] = []
        for page in range(1, _MAX_PAGES + 1):
            body = await self._call("GET", "/api/1/vehicles", account_id, account_id, scope="account",
                                    params={"page": page, "per_page": _PAGE_SIZE}, envelope=True)
            items = body.get("response")
            if not isinstance(items, list):
                raise _bad(account_id, "vehicles response is not a list")
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("vin"), str) or not item["vin"]:
                    raise _bad(account_id, "vehicle without a VIN")
                state = item.get("state")
                found.append((item["vin"], state if isinstance(state, str) else None))
            count = body.get("count")
            if (not items or len(items) < _PAGE_SIZE or isinstance(count, bool) or not isinstance(count, int)
                    or len(found) >= count):
                break
        out = []
        for vin, state in found:
            car = self._vehicles.get(vin)
            if car is None or car.account != account_id:
                car = self._add(vin, account_id)
            car.state = state
            out.append(DiscoveredVehicle(vin, account_id, self.capabilities(vin)))
        return out

    async def charge_state(self, vehicle_id: str) -> ChargeState:
        """The car's live ``charge_state`` (a 408 if it sleeps: wake it first)."""
        car = self._car(vehicle_id)
        response = await self._call("GET", f"/api/1/vehicles/{vehicle_id}/vehicle_data", vehicle_id, car.account,
                                    params={"endpoints": "charge_state"})
        state = parse_charge_state(vehicle_id, response)
        car.state = "online"
        car.charge = state
        if state.charger_phases in (1, 2, 3):
            car.phases = state.charger_phases
        if state.charging and state.charger_voltage is not None and state.charger_voltage >= _MIN_SUPPLY_VOLTS:
            car.volts = float(state.charger_voltage)
        return state

    async def read(self, vehicle_id: str) -> VehicleReading:
        return (await self.charge_state(vehicle_id)).reading()

    async def start_charging(self, vehicle_id: str, *, key: str) -> None:
        await self._command(vehicle_id, key, "charge_start", {})

    async def stop_charging(self, vehicle_id: str, *, key: str) -> None:
        await self._command(vehicle_id, key, "charge_stop", {})

    async def set_charging_current(self, vehicle_id: str, amps: float, *, key: str) -> None:
        """``set_charging_amps`` with a whole number of amps within the car's range."""
        caps = self.capabilities(vehicle_id)
        if not caps.can_set_current:
            raise CommandRejected(vehicle_id, "not_capable")
        if not (math.isfinite(amps) and caps.min_amps <= amps <= caps.max_amps and amps == int(amps)):
            raise CommandRejected(vehicle_id, "out_of_range")
        await self._command(vehicle_id, key, "set_charging_amps", {"charging_amps": int(amps)})

    async def set_charge_limit(self, vehicle_id: str, soc: float, *, key: str) -> None:
        """``set_charge_limit`` to ``soc`` (a fraction) in whole percent, within the car's
        ``charge_limit_soc_min``..``max`` (50..100 until a reading reported them)."""
        car = self._car(vehicle_id)
        low = _LIMIT_MIN_PCT if car.charge is None or car.charge.charge_limit_soc_min is None \
            else car.charge.charge_limit_soc_min
        high = _LIMIT_MAX_PCT if car.charge is None or car.charge.charge_limit_soc_max is None \
            else car.charge.charge_limit_soc_max
        percent = round(soc * 100) if math.isfinite(soc) else -1
        if not low <= percent <= high:
            raise CommandRejected(vehicle_id, "out_of_range")
        await self._command(vehicle_id, key, "set_charge_limit", {"percent": percent})

    async def wake(self, vehicle_id: str) -> None:
        """Wake the car and wait until it reports ``online``; :class:`~twin.oem.VehicleAsleep`
        if it does not within ``wake_timeout_s``."""
        car = self._car(vehicle_id)
        start = self._clock.seconds
        state = self._vehicle_state(vehicle_id, await self._call(
            "POST", f"/api/1/vehicles/{vehicle_id}/wake_up", vehicle_id, car.account))
        interval = self.wake_interval_s
        while state != "online":
            left = self.wake_timeout_s - (self._clock.seconds - start)
            if left <= 0:
                car.state = state
                raise VehicleAsleep(vehicle_id, f"did not wake within {self.wake_timeout_s:g} s (state {state})")
            await self._clock.sleep(min(interval, left))
            interval *= self.wake_backoff
            state = self._vehicle_state(vehicle_id, await self._call(
                "GET", f"/api/1/vehicles/{vehicle_id}", vehicle_id, car.account))
        car.state = state

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[VehicleReading]:
        raise WebhookRejected(f"{self.name}: the Tesla Fleet API sends no webhooks to this head")

    def subscribe(self, sink: Callable[[VehicleReading], None]) -> None:
        """Accepted; the Fleet API pushes nothing here, so ``sink`` is never called."""

    # -- commands -----------------------------------------------------------------------------

    async def _command(self, vehicle_id: str, key: str, command: str, body: dict[str, Any]) -> None:
        """Send ``command`` once per ``key``: a key already acknowledged returns at once, and a
        call arriving while the same key is in flight shares its outcome. A caller that stops
        waiting (a call timeout) does not cancel a command already on its way."""
        car = self._car(vehicle_id)
        if key in self._acked:
            self.stats["duplicates"] += 1
            return
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._send_command(vehicle_id, car.account, key, command, body))
            self._inflight[key] = task
            task.add_done_callback(lambda done, k=key: self._settled(k, done))
        else:
            self.stats["duplicates"] += 1
        await asyncio.shield(task)

    async def _send_command(self, vehicle_id: str, account: str, key: str, command: str, body: dict[str, Any]) -> None:
        response = await self._call("POST", f"/api/1/vehicles/{vehicle_id}/command/{command}", vehicle_id,
                                    account, json=body, command=True)
        self._result(vehicle_id, response)
        self._acked[key] = None
        if len(self._acked) > _REMEMBER:
            self._acked.popitem(last=False)

    def _settled(self, key: str, task: asyncio.Task[None]) -> None:
        """A command finished: no longer in flight (its outcome is read here too, so one no
        caller waited for is not reported as unretrieved)."""
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()

    @staticmethod
    def _result(vehicle_id: str, response: Any) -> None:
        """Raise for a command result that is not a success."""
        if not isinstance(response, dict) or not isinstance(response.get("result"), bool):
            raise _bad(vehicle_id, "command response without a boolean result")
        if response["result"]:
            return
        reason = response.get("reason")
        reason = reason if isinstance(reason, str) else ""
        if reason in REASONS and REASONS[reason] is None:
            return  # already so: what was asked is the car's state
        # an unknown reason is kept in the message and classed "other"
        raise CommandRejected(vehicle_id, REASONS.get(reason) or reason or "other")

    @staticmethod
    def _vehicle_state(vehicle_id: str, response: Any) -> str:
        if not isinstance(response, dict) or not isinstance(response.get("state"), str):
            raise _bad(vehicle_id, "vehicle object without a state")
        return response["state"]

    # -- the wire -----------------------------------------------------------------------------

    def register(self, vehicle_id: str, account_id: str) -> None:
        """Tell the head which account a car belongs to (e.g. restored from storage)."""
        car = self._vehicles.get(vehicle_id)
        if car is None or car.account != account_id:
            self._add(vehicle_id, account_id)

    def _add(self, vin: str, account: str) -> _Vehicle:
        car = self._vehicles[vin] = _Vehicle(account)
        car.volts, car.phases = self._volts, self._phases
        return car

    def _car(self, vehicle_id: str) -> _Vehicle:
        car = self._vehicles.get(vehicle_id)
        if car is None:
            raise UnknownVehicle(vehicle_id, f"not a vehicle of a linked {self.name} account")
        return car

    async def _call(self, method: str, path: str, vehicle_id: str, account: str, *, params: dict | None = None,
                    json: dict | None = None, command: bool = False, scope: RateScope = "vehicle",
                    envelope: bool = False) -> Any:
        """One API call with the account's token (refreshed and retried once on a 401). Returns
        the envelope's ``response`` (the whole envelope with ``envelope=True``)."""
        token = await self._tokens.access_token(account, vehicle_id)
        response = await self._send(method, path, vehicle_id, token, params, json)
        if response.status_code == 401 and _error_of(response) not in _ACCOUNT_401:
            self.stats["token_retries"] += 1
            token = await self._tokens.after_rejection(account, vehicle_id, token)
            response = await self._send(method, path, vehicle_id, token, params, json)
        if not response.is_success:
            raise _error_for(response, vehicle_id, account, command=command, scope=scope)
        try:
            body = json_loads(response.content)
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            raise _bad(vehicle_id, f"HTTP {response.status_code} body is not JSON ({kind})") from None
        if not isinstance(body, dict) or "response" not in body:
            raise _bad(vehicle_id, "body is not a response envelope")
        if body.get("error"):
            raise TransientUpstream(vehicle_id, f"HTTP {response.status_code} with error {_short(body['error'])}")
        return body if envelope else body["response"]

    async def _send(self, method: str, path: str, vehicle_id: str, token: str, params: dict | None,
                    json: dict | None) -> httpx.Response:
        self.stats["requests"] += 1
        try:
            return await self._http.request(method, path, params=params, json=json,
                                            headers={"Authorization": f"Bearer {token}"})
        except httpx.TimeoutException:
            raise CallTimeout(vehicle_id, f"{method} {path} timed out") from None
        except httpx.HTTPError as exc:
            raise TransientUpstream(vehicle_id, f"{method} {path} failed: {type(exc).__name__}") from None


def json_loads(content: bytes) -> Any:
    """``json.loads`` raising only ``ValueError`` (also for bytes that are not UTF-8)."""
    try:
        return json.loads(content)
    except UnicodeDecodeError as exc:
        raise ValueError(str(exc)) from None


# 401 errors that a new access token does not cure
_ACCOUNT_401 = frozenset({"mobile_access_disabled", "login_required"})


def _error_of(response: httpx.Response) -> str:
    """The envelope's ``error`` text, or "" (no body, not JSON)."""
    try:
        body = json_loads(response.content)
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else ""


def _short(text: Any, limit: int = 160) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _seconds_header(response: httpx.Response, name: str) -> float | None:
    value = response.headers.get(name)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _error_for(response: httpx.Response, vehicle_id: str, account: str, *, command: bool,
               scope: RateScope) -> OEMError:
    """The typed error for a failed HTTP response."""
    status = response.status_code
    error = _error_of(response)
    text = error.lower()
    what = f"HTTP {status}" + (f": {_short(error)}" if error else "")
    if status == 408 or (status == 500 and "vehicle unavailable" in text):
        return VehicleAsleep(vehicle_id, what)
    if status == 429:
        after = _seconds_header(response, "Retry-After")
        if after is None:
            after = _seconds_header(response, "RateLimit-Reset")
        return RateLimited(vehicle_id, _DEFAULT_RETRY_AFTER_S if after is None else after, what, scope=scope)
    if status == 401:
        if error == "mobile_access_disabled":
            return UnknownVehicle(vehicle_id, f"{what} (remote access is disabled in the car)")
        if error == "login_required":
            return ReauthorizationRequired(vehicle_id, account, what)
        return AuthExpired(vehicle_id, what)
    if status == 403 and "missing scopes" in text:
        return ReauthorizationRequired(vehicle_id, account, f"{what} (the grant lacks a scope)")
    if status == 423:
        return ReauthorizationRequired(vehicle_id, account, f"{what} (account locked)")
    if status == 404:
        return UnknownVehicle(vehicle_id, what)
    if status == 500 and "public key has not been paired" in text:
        return CommandRejected(vehicle_id, "not_capable")
    if status >= 500:
        return TransientUpstream(vehicle_id, what)
    if command:
        if status == 400 and error == "invalid_field":
            return CommandRejected(vehicle_id, "out_of_range")
        if status in (400, 403, 412, 422):
            return CommandRejected(vehicle_id, "not_capable")
        return CommandRejected(vehicle_id, "other")
    # a read the API refuses for a reason a new token or a wake cannot fix (400, 403, 406, 412,
    # 421 wrong region, 451): surfaced for back-off, with the status in the message
    return TransientUpstream(vehicle_id, what)
