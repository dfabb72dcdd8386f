"""The SimPy driver: hosts the controller in the twin.

A short loop, the same one the live server runs with asyncio: take the events that arrived,
``controller.step(now, events)``, execute each action against the car's OEM adapter, and turn
each outcome into an event for the next step. It sleeps until new events arrive (webhooks,
finished calls) or until the controller's ``wake_at``.
"""

from __future__ import annotations

from typing import Any

import simpy

from twin.controller import Action, CallFailed, CallSucceeded, Controller, Event, Telemetry
from twin.oem import OEMAdapter, OEMError, VehicleReading
from twin.sim.clock import SimClock, drive

__all__ = ["SimDriver"]


class SimDriver:
    """Runs ``controller`` against ``adapters`` (vehicle id -> its OEM head) in SimPy time."""

    def __init__(self, env: simpy.Environment, clock: SimClock, controller: Controller,
                 adapters: dict[str, OEMAdapter], log: list[tuple[float, str, str, str]]) -> None:
        self.env = env
        self.clock = clock
        self.controller = controller
        self.adapters = adapters
        self.log = log
        self.inbox: list[Event] = []
        self.steps = 0
        self._wake: simpy.Event | None = None
        self._timer_at: float | None = None
        for adapter in {id(a): a for a in adapters.values()}.values():
            adapter.subscribe(self._on_push)
        self.process = env.process(self._run())

    # -- inputs -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Hand an event to the controller at the current simulated time."""
        self.inbox.append(event)
        wake = self._wake
        if wake is not None and not wake.triggered:
            wake.succeed()

    def _on_push(self, reading: VehicleReading) -> None:
        self.log.append((self.env.now, reading.vehicle_id, "telemetry", reading.describe()))
        self.deliver(Telemetry(reading))

    # -- the loop -----------------------------------------------------------------------------

    def _run(self):
        env, controller = self.env, self.controller
        while True:
            self._step()
            while self.inbox:  # outcomes of calls that completed at once
                self._step()
            self._wake = env.event()
            wake_at = controller.wake_at
            if wake_at is not None:
                self._arm((wake_at - self.clock.start).total_seconds())
            yield self._wake
            self._wake = None

    def _step(self) -> None:
        events, self.inbox = self.inbox, []
        self.steps += 1
        for action in self.controller.step(self.clock.now(), events):
            self._execute(action)

    def _arm(self, at: float) -> None:
        """Make sure a timer fires at ``at`` (seconds); one timer per distinct time."""
        if self._timer_at is not None and self._timer_at <= at and self._timer_at > self.env.now:
            return
        self._timer_at = at
        timer = self.env.timeout(max(0.0, at - self.env.now))
        timer.callbacks.append(self._on_timer)

    def _on_timer(self, _event: simpy.Event) -> None:
        if self._timer_at is not None and self._timer_at <= self.env.now:
            self._timer_at = None
        wake = self._wake
        if wake is not None and not wake.triggered:
            wake.succeed()

    # -- actions ------------------------------------------------------------------------------

    def _execute(self, action: Action) -> None:
        if action.method is None:
            self.log.append((self.env.now, action.vehicle_id, "notification", action.describe()))
            return
        self.log.append((self.env.now, action.vehicle_id, "command", action.kind))
        coro = getattr(self.adapters[action.vehicle_id], action.method)(action.vehicle_id)
        try:
            first = coro.send(None)
        except StopIteration as stop:
            self._done(action, stop.value, None)
            return
        except OEMError as exc:
            self._done(action, None, exc)
            return
        self.env.process(drive(coro, first, lambda value, exc: self._done(action, value, exc)))

    def _done(self, action: Action, value: Any, error: BaseException | None) -> None:
        if error is None:
            self.log.append((self.env.now, action.vehicle_id, "result", f"{action.kind} ok"))
            self.deliver(CallSucceeded(action, value if isinstance(value, VehicleReading) else None))
        elif isinstance(error, OEMError):
            self.log.append((self.env.now, action.vehicle_id, "result",
                             f"{action.kind} failed: {type(error).__name__}: {error}"))
            self.deliver(CallFailed(action, error))
        else:
            raise error
