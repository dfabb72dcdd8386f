"""The OEM adapter protocol (v2): how the platform reaches a car through its maker's cloud.

Every head (an HTTP client under ``adapters/<oem>/`` or :class:`twin.sim.oem.SimulatedOEM`)
implements :class:`OEMAdapter`. Calls are ``async`` because real clouds are slow (commands can
take minutes); failures are raised as the typed errors below, and only those, so the
controller can decide what to do (retry, back off, wake the car, stop calling, escalate)
without knowing which OEM it talks to.

What the protocol asks of a head, and why (the shapes follow the Smartcar v2/v3 and Tesla Fleet
APIs):

* **Authorisation is per account**, not per vehicle: one OAuth grant covers every car of a
  driver or fleet. A head keeps its tokens in a :class:`twin.auth.AccountTokens`, which
  refreshes ahead of expiry, once for all the account's cars, and stores rotated refresh tokens
  atomically. The controller never sees token refreshes; it sees
  :class:`ReauthorizationRequired` when the refresh token itself was revoked.
* **Capabilities per vehicle** (:class:`Capabilities`): whether the cloud pushes telemetry,
  whether the car must be woken, whether its charge limit and charging current can be set.
* **Rate limits have a scope** (vehicle, account, application). :class:`RateLimited` says which
  scope was throttled, and :attr:`OEMAdapter.rate_limits` declares the budget the head knows
  of, so the controller can stay inside it instead of learning it from 429s.
* **Commands carry an idempotency key** (the action id the host supplied): a head that is asked
  twice with the same key performs the command once.
* **Webhooks**: :meth:`OEMAdapter.parse_webhook` verifies a delivery's signature, drops
  deliveries it has already seen and returns the readings, so a web route can feed the
  controller; :meth:`OEMAdapter.subscribe` is the in-process equivalent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "VehicleReading",
    "Capabilities",
    "DiscoveredVehicle",
    "RateBudget",
    "RateScope",
    "OEMAdapter",
    "OEMError",
    "VehicleAsleep",
    "RateLimited",
    "AuthExpired",
    "ReauthorizationRequired",
    "TransientUpstream",
    "CallTimeout",
    "CommandRejected",
    "UnknownVehicle",
    "WebhookRejected",
    "REJECTION_REASONS",
]


@dataclass(frozen=True, slots=True)
class VehicleReading:
    """One telemetry reading as the OEM cloud reports it.

    ``taken_at`` is when the car measured it (UTC), which may be well before the platform
    receives it. ``soc`` is a fraction 0..1 (``None`` if the cloud did not report it), possibly
    rounded to the OEM's reporting step.
    """

    vehicle_id: str
    taken_at: datetime
    soc: float | None
    plugged_in: bool
    charging: bool

    def describe(self) -> str:
        """One line for event logs."""
        soc = "?" if self.soc is None else f"{self.soc:.4f}"
        return f"soc={soc} plugged={int(self.plugged_in)} charging={int(self.charging)}"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the platform can do with one car through its cloud.

    ``pushes_telemetry``: the cloud sends webhooks on plug-in, unplug and charging changes (else
    the car is polled). ``needs_wake``: the car sleeps and must be woken before it answers.
    ``can_set_charge_limit``: the car's own charge limit can be set remotely.
    ``min_amps`` .. ``max_amps`` in steps of ``amps_step``: the charging current can be set
    (``None`` when it cannot); ``volts`` × ``phases`` converts amps to kW.
    """

    pushes_telemetry: bool = True
    needs_wake: bool = False
    can_set_charge_limit: bool = False
    min_amps: float | None = None
    max_amps: float | None = None
    amps_step: float = 1.0
    volts: float = 230.0
    phases: int = 1
    #: the charging current can be set (``min_amps`` and ``max_amps`` are given)
    can_set_current: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.min_amps is None) != (self.max_amps is None):
            raise ValueError("give both min_amps and max_amps, or neither")
        if self.min_amps is not None and not 0 < self.min_amps <= self.max_amps:
            raise ValueError(f"need 0 < min_amps <= max_amps, got {self.min_amps} and {self.max_amps}")
        if self.amps_step <= 0 or self.volts <= 0 or self.phases not in (1, 2, 3):
            raise ValueError("amps_step and volts must be positive and phases 1, 2 or 3")
        object.__setattr__(self, "can_set_current", self.min_amps is not None)

    def without_current(self) -> Capabilities:
        """The same car, its current no longer settable (the API refused to set it)."""
        return Capabilities(self.pushes_telemetry, self.needs_wake, self.can_set_charge_limit)

    def kw_per_amp(self) -> float:
        return self.volts * self.phases / 1000.0

    def amps_for(self, kw: float, rounding: Literal["down", "nearest", "up"] = "down") -> float:
        """The settable current for drawing ``kw``, or 0 (stop) when it would be below the
        lowest settable current. ``down`` never draws more than asked (a plan made under a
        feeder limit stays under it); ``nearest`` errs both ways; ``up`` draws at least ``kw``
        where the car can. Needs :attr:`can_set_current`."""
        assert self.min_amps is not None and self.max_amps is not None
        steps = kw / self.kw_per_amp() / self.amps_step
        # the epsilon keeps an exact multiple (16 A for 11.04 kW) from moving a step
        n = {"down": math.floor(steps + 1e-9), "nearest": round(steps), "up": math.ceil(steps - 1e-9)}[rounding]
        amps = n * self.amps_step
        if amps < self.min_amps:
            return 0.0 if rounding == "down" or amps < self.min_amps / 2 else float(self.min_amps)
        return float(min(self.max_amps, amps))


@dataclass(frozen=True, slots=True)
class DiscoveredVehicle:
    """A car found on an account (``OEMAdapter.discover``)."""

    vehicle_id: str
    account_id: str
    capabilities: Capabilities
    model: str = ""


RateScope = Literal["vehicle", "account", "application"]


@dataclass(frozen=True, slots=True)
class RateBudget:
    """At most ``calls`` calls per ``period_s`` seconds in one ``scope``: per vehicle, per
    account, or for the whole application (every car of this OEM)."""

    scope: RateScope
    calls: int
    period_s: float


class OEMError(Exception):
    """An OEM call failed. ``vehicle_id`` says for which car."""

    def __init__(self, vehicle_id: str, message: str = "") -> None:
        self.vehicle_id = vehicle_id
        super().__init__(f"{vehicle_id}: {message or self.__class__.__name__}")


class VehicleAsleep(OEMError):
    """The car is asleep or offline; it must be woken before it answers."""


class RateLimited(OEMError):
    """The cloud throttled ``scope`` (``vehicle``, ``account`` or ``application``); retry no
    earlier than ``retry_after_s`` seconds from now."""

    def __init__(self, vehicle_id: str, retry_after_s: float, message: str = "",
                 scope: RateScope = "vehicle") -> None:
        self.retry_after_s = float(retry_after_s)
        self.scope = scope
        super().__init__(vehicle_id, message or f"rate limited ({scope}), retry after {retry_after_s:g} s")


class AuthExpired(OEMError):
    """The cloud rejected the access token although the head believed it valid. Transient: the
    head refreshes it before its next call."""


class ReauthorizationRequired(OEMError):
    """The account's refresh token was revoked or has expired: nothing more can be done for
    ``account_id``'s cars until the driver links the account again."""

    def __init__(self, vehicle_id: str, account_id: str, message: str = "") -> None:
        self.account_id = account_id
        super().__init__(vehicle_id, message or f"account {account_id} must be authorised again")


class TransientUpstream(OEMError):
    """The OEM cloud or the car did not answer properly (5xx, timeout); safe to retry."""


class CallTimeout(TransientUpstream):
    """The call did not complete within the host's timeout; its outcome is unknown."""


#: reasons a car gives for refusing a command (:class:`CommandRejected`), mapped by each head
#: from its API's own codes (Smartcar ``VEHICLE_STATE/*``, Tesla ``result: false`` reasons)
REJECTION_REASONS = (
    "not_plugged_in",     # Smartcar CHARGING_PLUG_NOT_CONNECTED, Tesla "disconnected"
    "fully_charged",      # Smartcar FULLY_CHARGED, Tesla "complete"
    "already_charging",   # Smartcar CHARGING_IN_PROGRESS, Tesla "is_charging"
    "not_charging",       # Smartcar NOT_CHARGING, Tesla "not_charging"
    "not_capable",        # the car or API cannot do this (Smartcar COMPATIBILITY/*)
    "out_of_range",       # a value outside what the car accepts (limit, amps)
    "other",              # anything else the car refused
)


class CommandRejected(OEMError):
    """The car refused the command for a stated ``reason`` (one of :data:`REJECTION_REASONS`).

    Not transient: repeating the same command will not help until the car's state changes.
    """

    def __init__(self, vehicle_id: str, reason: str) -> None:
        self.reason = reason if reason in REJECTION_REASONS else "other"
        super().__init__(vehicle_id, f"command rejected: {reason}")


class UnknownVehicle(OEMError):
    """The cloud does not know this vehicle id (or we lost access to it)."""


class WebhookRejected(ValueError):
    """A webhook delivery failed verification (bad or missing signature, unreadable body)."""


@runtime_checkable
class OEMAdapter(Protocol):
    """What the platform needs from an OEM cloud.

    Every coroutine raises only :class:`OEMError` subclasses. Commands take the host's action id
    as ``key`` and are idempotent per key. ``subscribe`` registers a sink for readings the cloud
    pushes in-process; heads whose cloud cannot push accept the call and never invoke the sink,
    and the controller polls their cars instead.
    """

    name: str
    #: budgets the OEM publishes or the account is held to
    rate_limits: tuple[RateBudget, ...]

    def capabilities(self, vehicle_id: str) -> Capabilities: ...

    async def discover(self, account_id: str) -> list[DiscoveredVehicle]: ...

    async def read(self, vehicle_id: str) -> VehicleReading: ...

    async def start_charging(self, vehicle_id: str, *, key: str) -> None: ...

    async def stop_charging(self, vehicle_id: str, *, key: str) -> None: ...

    async def set_charging_current(self, vehicle_id: str, amps: float, *, key: str) -> None: ...

    async def set_charge_limit(self, vehicle_id: str, soc: float, *, key: str) -> None: ...

    async def wake(self, vehicle_id: str) -> None: ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[VehicleReading]: ...

    def subscribe(self, sink: Callable[[VehicleReading], None]) -> None: ...
