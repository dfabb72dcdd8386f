"""The SimPy driver: hosts the controller in the twin.

A short loop, the same one the live server runs with asyncio: take the events that arrived,
``controller.step(now, events)``, execute each action against the car's OEM adapter, and turn
each outcome into an event for the next step. It sleeps until new events arrive (webhooks,
finished calls) or until the controller's ``wake_at``.
"""

from __future__ import annotations

import simpy

from twin.controller import Action, Controller
from twin.host import Host
from twin.oem import OEMAdapter, OEMError
from twin.sim.clock import SimClock, drive

__all__ = ["SimDriver"]


class SimDriver(Host):
    """Runs ``controller`` against ``adapters`` (vehicle id -> its OEM head) in SimPy time."""

    def __init__(self, env: simpy.Environment, clock: SimClock, controller: Controller,
                 adapters: dict[str, OEMAdapter], log: list[tuple[float, str, str, str]]) -> None:
        self.env = env
        self.clock = clock
        self._wake: simpy.Event | None = None
        self._timer_at: float | None = None
        super().__init__(controller, adapters, log)
        self.process = env.process(self._run())

    def _seconds(self) -> float:
        return self.env.now

    def _now(self):
        return self.clock.now()

    def _wake_up(self) -> None:
        wake = self._wake
        if wake is not None and not wake.triggered:
            wake.succeed()

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
        self._wake_up()

    def _start_call(self, action: Action) -> None:
        coro = self._call(action)
        try:
            first = coro.send(None)  # calls without latency complete here, at this instant
        except StopIteration as stop:
            self._done(action, stop.value, None)
            return
        except OEMError as exc:
            self._done(action, None, exc)
            return
        self.env.process(drive(coro, first, lambda value, exc: self._done(action, value, exc)))
