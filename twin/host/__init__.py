"""Hosts of the controller: what every host does, whatever its event loop.

A host takes the events that arrived, calls ``controller.step(now, events)``, performs each
action (an OEM call through the car's adapter, a notification, a planning job), turns each
outcome into an event, and streams a log row ``(seconds, vehicle_id, kind, detail)`` for each
to a sink. :class:`Host` holds that shared part; :class:`twin.sim.driver.SimDriver` (SimPy) and
:class:`twin.host.aio.AsyncDriver` (asyncio, the live loop) add only how to wait, how to run a
call (with its timeout) and where planning runs.

Plugging in a new host means subclassing :class:`Host` and providing ``_seconds``, ``_now``,
``_wake_up``, ``_start_call`` and, if it plans off its loop, ``_start_plan``.

Whatever an adapter raises becomes an event: a typed :class:`~twin.oem.OEMError` as it is, any
other exception (a bug in a head, a library error) as a logged
:class:`~twin.oem.TransientUpstream`, so the controller retries instead of waiting forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twin.control.controller import Controller
from twin.control.events import Action, CallFailed, CallSucceeded, Event, PlanRequest, Telemetry
from twin.oem import OEMAdapter, OEMError, TransientUpstream, VehicleReading

__all__ = ["Host", "LogRow", "logging_sink"]

log = logging.getLogger("chargetwin.host")

#: (seconds since the host's start, vehicle id, kind, detail)
LogRow = tuple[float, str, str, str]


def logging_sink(logger: logging.Logger = log, level: int = logging.DEBUG) -> Callable[[LogRow], None]:
    """A sink that writes each row to ``logger`` (the live default: nothing accumulates)."""

    def sink(row: LogRow) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, "%.3f %s %s %s", *row)

    return sink


class Host:
    """Shared part of the controller's hosts (see module docstring).

    ``sink`` receives every log row (the twin keeps them for its results; live they go to
    logging); ``on_notify`` receives notification actions (the server sends them to drivers).
    """

    def __init__(self, controller: Controller, adapters: dict[str, OEMAdapter],
                 sink: Callable[[LogRow], None] | None = None,
                 on_notify: Callable[[Action], None] | None = None) -> None:
        self.controller = controller
        self.adapters = adapters
        self.sink = sink if sink is not None else logging_sink()
        self.on_notify = on_notify
        self.inbox: list[Event] = []
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
        """Run ``action`` against its car's adapter and hand the outcome to :meth:`_done`."""
        raise NotImplementedError

    def _start_plan(self, request: PlanRequest) -> None:
        """Run a planning job and deliver its :class:`PlansReady` (inline by default)."""
        self.deliver(request.run())

    # -- shared -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Hand an event to the controller (webhooks, the driver's app, forecast feeds)."""
        self.inbox.append(event)
        self._wake_up()

    def _on_push(self, reading: VehicleReading) -> None:
        self.sink((self._seconds(), reading.vehicle_id, "telemetry", reading.describe()))
        self.deliver(Telemetry(reading))

    def _step(self) -> None:
        events, self.inbox = self.inbox, []
        for action in self.controller.step(self._now(), events):
            if action.is_call:
                self.sink((self._seconds(), action.vehicle_id, "command", action.describe()))
                self._start_call(action)
            elif isinstance(action, PlanRequest):
                self._start_plan(action)
            else:
                self.sink((self._seconds(), action.vehicle_id, "notification", action.describe()))
                if self.on_notify is not None:
                    self.on_notify(action)

    def _invoke(self, action: Action):
        """The adapter coroutine that performs ``action`` (raises what creating it raises)."""
        return action.invoke(self.adapters[action.vehicle_id])

    def _done(self, action: Action, value: Any, error: BaseException | None) -> None:
        if error is None:
            self.sink((self._seconds(), action.vehicle_id, "result", f"{action.kind} ok"))
            self.deliver(CallSucceeded(action, value if isinstance(value, VehicleReading) else None))
            return
        if not isinstance(error, OEMError):
            # not a typed OEM error: a bug or a library failure in the head. Log it in full and
            # treat it as transient, so the car is retried rather than stuck with a pending call.
            log.warning("%s %s for %s raised %s: %s", action.kind, action.id, action.vehicle_id,
                        type(error).__name__, error, exc_info=error)
            error = TransientUpstream(action.vehicle_id, f"unexpected {type(error).__name__}: {error}")
        self.sink((self._seconds(), action.vehicle_id, "result",
                   f"{action.kind} failed: {type(error).__name__}: {error}"))
        self.deliver(CallFailed(action, error))
