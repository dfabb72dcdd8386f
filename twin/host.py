"""What every host of the controller does, whatever its event loop.

A host takes the events that arrived, calls ``controller.step(now, events)``, performs each
action (an OEM call through the car's adapter, or a notification), turns each outcome into an
event, and logs all of it as ``(seconds, vehicle_id, kind, detail)`` rows. :class:`Host` holds
that shared part; :class:`twin.sim.driver.SimDriver` (SimPy) and :class:`twin.aio.AsyncDriver`
(asyncio, the live loop) add only how to wait and how to run a call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twin.controller import Action, CallFailed, CallSucceeded, Controller, Event, Telemetry
from twin.oem import OEMAdapter, OEMError, VehicleReading

__all__ = ["Host"]


class Host:
    """Shared part of the controller's hosts (see module docstring)."""

    def __init__(self, controller: Controller, adapters: dict[str, OEMAdapter],
                 log: list[tuple[float, str, str, str]] | None,
                 on_notify: Callable[[Action], None] | None = None) -> None:
        self.controller = controller
        self.adapters = adapters
        self.log = log if log is not None else []
        self.on_notify = on_notify
        self.inbox: list[Event] = []
        self.steps = 0
        for adapter in {id(a): a for a in adapters.values()}.values():
            adapter.subscribe(self._on_push)

    # -- what a host provides -----------------------------------------------------------------

    def _seconds(self) -> float:
        raise NotImplementedError

    def _now(self):
        raise NotImplementedError

    def _wake_up(self) -> None:
        """New events are waiting: make the loop run a step."""
        raise NotImplementedError

    def _start_call(self, action: Action) -> None:
        """Run ``self._call(action)`` and hand its outcome to :meth:`_done`."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Hand an event to the controller (webhooks, the driver's app, forecast feeds)."""
        self.inbox.append(event)
        self._wake_up()

    def _on_push(self, reading: VehicleReading) -> None:
        self.log.append((self._seconds(), reading.vehicle_id, "telemetry", reading.describe()))
        self.deliver(Telemetry(reading))

    def _step(self) -> None:
        events, self.inbox = self.inbox, []
        self.steps += 1
        for action in self.controller.step(self._now(), events):
            if action.method is None:
                self.log.append((self._seconds(), action.vehicle_id, "notification", action.describe()))
                if self.on_notify is not None:
                    self.on_notify(action)
                continue
            self.log.append((self._seconds(), action.vehicle_id, "command", action.kind))
            self._start_call(action)

    def _call(self, action: Action):
        """The adapter coroutine that performs ``action``."""
        return getattr(self.adapters[action.vehicle_id], action.method)(action.vehicle_id)

    def _done(self, action: Action, value: Any, error: BaseException | None) -> None:
        if error is None:
            self.log.append((self._seconds(), action.vehicle_id, "result", f"{action.kind} ok"))
            self.deliver(CallSucceeded(action, value if isinstance(value, VehicleReading) else None))
        elif isinstance(error, OEMError):
            self.log.append((self._seconds(), action.vehicle_id, "result",
                             f"{action.kind} failed: {type(error).__name__}: {error}"))
            self.deliver(CallFailed(action, error))
        else:
            raise error
