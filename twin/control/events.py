"""What flows between the controller and its host: actions out, events in.

Actions are small frozen dataclasses. Each carries the ``id`` its host supplied (seeded in the
twin, a UUID live); the id ties the outcome back to the action, survives a snapshot and restart,
and is handed to the OEM head as the command's idempotency key. An action that is an OEM call
knows which adapter coroutine performs it (:meth:`Action.invoke`); a :class:`Notify` is for the
driver, and a :class:`PlanRequest` asks the host to run a planning job (inline, or off the event
loop) and answer with :class:`PlansReady`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pandas as pd

from twin.domain import Preferences
from twin.oem import OEMAdapter, OEMError, VehicleReading

if TYPE_CHECKING:
    from twin.control.track import SessionPlan

__all__ = [
    "Action", "Read", "StartCharging", "StopCharging", "SetChargingCurrent", "SetChargeLimit", "Wake",
    "Notify", "COMMANDS", "PlanRequest", "PlanJob",
    "Event", "Telemetry", "CallSucceeded", "CallFailed", "PreferencesChanged", "ForecastUpdated",
    "PlansReady", "AuthorizationRestored",
    "action_from_json",
]


# --------------------------------------------------------------------------------------------
# Actions (controller -> host)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the host must do for ``vehicle_id``; ``id`` ties the outcome event back to it."""

    vehicle_id: str
    id: str

    kind: ClassVar[str] = "action"
    #: an OEM call (performed through the car's adapter) rather than a message to the driver
    is_call: ClassVar[bool] = True

    def invoke(self, adapter: OEMAdapter) -> Coroutine[Any, Any, Any]:
        """The adapter coroutine that performs this action."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for event logs."""
        return self.kind

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class Read(Action):
    """Read the car's state through its OEM cloud."""

    kind: ClassVar[str] = "read"

    def invoke(self, adapter):
        return adapter.read(self.vehicle_id)


@dataclass(frozen=True, slots=True)
class StartCharging(Action):
    kind: ClassVar[str] = "start"

    def invoke(self, adapter):
        return adapter.start_charging(self.vehicle_id, key=self.id)


@dataclass(frozen=True, slots=True)
class StopCharging(Action):
    kind: ClassVar[str] = "stop"

    def invoke(self, adapter):
        return adapter.stop_charging(self.vehicle_id, key=self.id)


@dataclass(frozen=True, slots=True)
class SetChargingCurrent(Action):
    """Limit the car's charging current to ``amps`` (modulated control)."""

    amps: float = 0.0
    kind: ClassVar[str] = "set_current"

    def invoke(self, adapter):
        return adapter.set_charging_current(self.vehicle_id, self.amps, key=self.id)

    def describe(self) -> str:
        return f"set_current {self.amps:g} A"


@dataclass(frozen=True, slots=True)
class SetChargeLimit(Action):
    """Set the car's own charge limit to ``soc`` (fraction)."""

    soc: float = 1.0
    kind: ClassVar[str] = "set_limit"

    def invoke(self, adapter):
        return adapter.set_charge_limit(self.vehicle_id, self.soc, key=self.id)

    def describe(self) -> str:
        return f"set_limit {self.soc:.2f}"


@dataclass(frozen=True, slots=True)
class Wake(Action):
    kind: ClassVar[str] = "wake"

    def invoke(self, adapter):
        return adapter.wake(self.vehicle_id)


@dataclass(frozen=True, slots=True)
class Notify(Action):
    """Tell the driver (and operations) something. Not an OEM call.

    ``topic``: ``plan`` (at plug-in), ``plan_changed``, ``escalated``, ``reauthorize`` (the
    account must be linked again) or ``unregistered`` (the OEM no longer knows the car).
    """

    topic: str = "plan"
    charge_start_at: datetime | None = None
    expected_soc: float | None = None
    ready_by: datetime | None = None
    message: str = ""
    #: the SoC the plan gives an hour before ready-by, in case the driver leaves early
    soc_hour_early: float | None = None

    kind: ClassVar[str] = "notify"
    is_call: ClassVar[bool] = False

    def describe(self) -> str:
        parts = [self.topic]
        if self.charge_start_at is not None:
            parts.append(f"start={self.charge_start_at.isoformat()}")
        if self.expected_soc is not None:
            parts.append(f"expected_soc={self.expected_soc:.4f}")
        if self.ready_by is not None:
            parts.append(f"ready_by={self.ready_by.isoformat()}")
        if self.soc_hour_early is not None:
            parts.append(f"soc_hour_early={self.soc_hour_early:.4f}")
        if self.message:
            parts.append(self.message)
        return " ".join(parts)


#: commands whose effect the controller verifies in later telemetry
COMMANDS = (StartCharging, StopCharging)

_ACTIONS = {cls.kind: cls for cls in (Read, StartCharging, StopCharging, SetChargingCurrent, SetChargeLimit, Wake)}


def action_from_json(data: Mapping[str, Any]) -> Action:
    """Rebuild an OEM-call action from :meth:`Action.to_json` output."""
    data = dict(data)
    cls = _ACTIONS[data.pop("kind")]
    return cls(**data)


class PlanJob(Protocol):
    """A planning computation captured from the controller's state: pure, safe to run on another
    thread. ``run()`` returns a plan per vehicle id."""

    def run(self) -> Mapping[str, SessionPlan]: ...


@dataclass(frozen=True)
class PlanRequest:
    """Run ``job`` and deliver :class:`PlansReady` with this ``id``. Not an OEM call; the host
    may run it inline (the twin) or off the event loop (live)."""

    id: str
    vehicle_ids: tuple[str, ...]
    job: PlanJob
    #: for each vehicle, the session the plan is for (its plug-in time), so a plan that lands
    #: after the car left is dropped
    sessions: Mapping[str, datetime | None]

    kind: ClassVar[str] = "plan"
    is_call: ClassVar[bool] = False

    def describe(self) -> str:
        return f"plan {len(self.vehicle_ids)} cars"

    def run(self) -> PlansReady:
        """Run the job and wrap its outcome: a failure becomes an error message, never an
        exception, because a solver failure must not stop the loop (the controller falls back)."""
        try:
            return PlansReady(self.id, self.job.run())
        except Exception as exc:  # noqa: BLE001 - reported to the controller
            return PlansReady(self.id, {}, error=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------
# Events (host -> controller)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A reading pushed by the OEM cloud (webhook)."""

    reading: VehicleReading


@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """``action`` completed. For a :class:`Read`, ``reading`` is what came back."""

    action: Action
    reading: VehicleReading | None = None


@dataclass(frozen=True, slots=True)
class CallFailed:
    """``action`` raised ``error`` (one of the typed OEM errors)."""

    action: Action
    error: OEMError


@dataclass(frozen=True, slots=True)
class PreferencesChanged:
    vehicle_id: str
    preferences: Preferences


@dataclass(frozen=True, slots=True)
class ForecastUpdated:
    """New price/carbon forecasts: ``frame`` indexed by UTC slot start with columns
    ``price_gbp_per_kwh`` and ``carbon_g_per_kwh`` (what is now expected for those slots)."""

    frame: pd.DataFrame
    slot_minutes: int


@dataclass(frozen=True)
class PlansReady:
    """The outcome of :class:`PlanRequest` ``request_id``: ``plans`` per vehicle, or ``error``
    (a message) when the job failed."""

    request_id: str
    plans: Mapping[str, SessionPlan]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorizationRestored:
    """The driver linked ``account_id`` again: its cars can be reached."""

    account_id: str


Event = (Telemetry | CallSucceeded | CallFailed | PreferencesChanged | ForecastUpdated | PlansReady
         | AuthorizationRestored)
