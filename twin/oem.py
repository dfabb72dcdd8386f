"""The OEM adapter protocol: how the platform reaches a car through its maker's cloud.

Every head (a real API client under ``adapters/<oem>/`` or :class:`twin.sim.oem.SimulatedOEM`)
implements :class:`OEMAdapter`. Calls are ``async`` because real clouds are slow (commands can
take minutes); failures are raised as the typed errors below so the controller can decide what
to do (retry, back off, wake the car, escalate) without knowing which OEM it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol, runtime_checkable

__all__ = [
    "VehicleReading",
    "OEMAdapter",
    "OEMError",
    "VehicleAsleep",
    "RateLimited",
    "AuthExpired",
    "TransientUpstream",
    "CommandRejected",
    "UnknownVehicle",
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


class OEMError(Exception):
    """An OEM call failed. ``vehicle_id`` says for which car."""

    def __init__(self, vehicle_id: str, message: str = "") -> None:
        self.vehicle_id = vehicle_id
        super().__init__(f"{vehicle_id}: {message or self.__class__.__name__}")


class VehicleAsleep(OEMError):
    """The car is asleep or offline; it must be woken before it answers."""


class RateLimited(OEMError):
    """The cloud throttled us; retry no earlier than ``retry_after_s`` seconds from now."""

    def __init__(self, vehicle_id: str, retry_after_s: float, message: str = "") -> None:
        self.retry_after_s = float(retry_after_s)
        super().__init__(vehicle_id, message or f"rate limited, retry after {retry_after_s:g} s")


class AuthExpired(OEMError):
    """The access token expired or was revoked; refresh it before the next call."""


class TransientUpstream(OEMError):
    """The OEM cloud or the car did not answer properly (5xx, timeout); safe to retry."""


class CommandRejected(OEMError):
    """The car refused the command for a stated ``reason`` (e.g. ``not_plugged_in``)."""

    def __init__(self, vehicle_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(vehicle_id, f"command rejected: {reason}")


class UnknownVehicle(OEMError):
    """The cloud does not know this vehicle id (or we lost access to it)."""


@runtime_checkable
class OEMAdapter(Protocol):
    """What the platform needs from an OEM cloud.

    ``subscribe`` registers a sink for readings the cloud pushes (webhooks); heads without push
    accept the call and never invoke the sink, and the controller polls them instead.
    """

    name: str
    pushes_telemetry: bool

    async def read(self, vehicle_id: str) -> VehicleReading: ...

    async def start_charging(self, vehicle_id: str) -> None: ...

    async def stop_charging(self, vehicle_id: str) -> None: ...

    async def wake(self, vehicle_id: str) -> None: ...

    async def refresh_auth(self, vehicle_id: str) -> None: ...

    def subscribe(self, sink: Callable[[VehicleReading], None]) -> None: ...
