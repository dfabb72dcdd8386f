"""The SimPy driver: hosts the controller in the twin.

A short loop, the same one the live server runs with asyncio (:mod:`twin.host`): take the
events that arrived, ``controller.step(now, events)``, execute each action against the car's OEM
adapter, and turn each outcome into an event for the next step. It sleeps until new events
arrive (webhooks, finished calls) or until the controller's ``wake_at``. Calls time out after
``config.call_timeout_s`` of simulated time, exactly as on the asyncio host; planning runs
inline, in zero simulated time.
"""

from __future__ import annotations

import simpy

from twin.control.controller import Controller
from twin.control.events import Action
from twin.host import Host, LogRow
from twin.oem import CallTimeout, OEMAdapter
from twin.sim.clock import SimClock, drive

__all__ = ["SimDriver"]


class SimDriver(Host):
    """Runs ``controller`` against ``adapters`` (vehicle id -> its OEM head) in SimPy time."""

    def __init__(self, env: simpy.Environment, clock: SimClock, controller: Controller,
                 adapters: dict[str, OEMAdapter], log: list[LogRow]) -> None:
        self.env = env
        self.clock = clock
        self._wake: simpy.Event | None = None
        self._timer_at: float | None = None
        controller.inline_planning = True
        super().__init__(controller, adapters, log.append)
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
        env = self.env
        while True:
            self._step()
            while self.inbox:  # outcomes of calls that completed at once
                self._step()
            self._wake = env.event()
            wake_at = self.controller.wake_at
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
        try:
            coro = self._invoke(action)
            first = coro.send(None)  # calls without latency complete here, at this instant
        except StopIteration as stop:
            self._done(action, stop.value, None)
            return
        except Exception as exc:  # noqa: BLE001 - typed (or converted) by Host._done
            self._done(action, None, exc)
            return
        _Call(self, action, coro, first)


class _Call:
    """A call that waits in simulated time, with the host's timeout."""

    __slots__ = ("host", "action", "finished", "process")

    def __init__(self, host: SimDriver, action: Action, coro, first: simpy.Event) -> None:
        self.host, self.action, self.finished = host, action, False
        env = host.env
        self.process = env.process(drive(coro, first, self._complete))
        env.timeout(host.controller.config.call_timeout_s).callbacks.append(self._expire)

    def _complete(self, value, error) -> None:
        if not self.finished:
            self.finished = True
            self.host._done(self.action, value, error)

    def _expire(self, _event: simpy.Event) -> None:
        if self.finished:
            return
        self.finished = True
        if self.process.is_alive:
            self.process.interrupt()  # cancels the coroutine where it waits, as asyncio does
        timeout = self.host.controller.config.call_timeout_s
        self.host._done(self.action, None,
                        CallTimeout(self.action.vehicle_id, f"{self.action.kind}: no answer within {timeout:g} s"))
