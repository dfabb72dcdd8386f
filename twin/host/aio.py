"""The asyncio host of the controller: the loop the live server runs.

:class:`AsyncDriver` is the same short loop as the SimPy driver — take the events that arrived,
``controller.step(now, events)``, start each action as a task against the car's OEM adapter,
turn each outcome into an event — written for asyncio, and hardened for live use:

* every adapter call runs under ``config.call_timeout_s``; a call that does not finish in time
  is cancelled and reported as :class:`~twin.oem.CallTimeout` (transient: retried with back-off);
* an adapter that raises anything but a typed OEM error is logged and its call retried
  (:class:`twin.host.Host`);
* with ``planning="thread"`` planning jobs run on a worker thread, so a burst of plug-ins does
  not stall the other cars' commands and webhooks while their plans are computed;
* log rows stream to a sink (Python logging by default) instead of accumulating.

Time comes from an injectable clock: :class:`AsyncClock` reads the event loop's clock, so on an
ordinary loop it is wall time, and on a :class:`VirtualTimeLoop` it is simulated time that jumps
straight to the next timer. The latter lets a whole scenario run through the live loop in
seconds (:func:`twin.sim.run.simulate_async`), which is how the tests prove the twin and the
server share one control path.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Literal

from twin.control.controller import Controller
from twin.control.events import Action, PlanRequest
from twin.host import Host, LogRow
from twin.oem import CallTimeout, OEMAdapter

__all__ = ["AsyncClock", "AsyncDriver", "VirtualTimeLoop"]


class AsyncClock:
    """UTC time and timers on an asyncio loop (a :class:`twin.clock.Clock`).

    ``start`` is the UTC instant at which the clock was made (with ``loop`` given) or first
    read (without: the running loop is used).
    """

    def __init__(self, start: datetime, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.start = start
        self._loop = loop
        self._t0: float | None = loop.time() if loop is not None else None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def seconds(self) -> float:
        """Seconds since ``start``."""
        if self._t0 is None:
            self._t0 = self.loop.time()
        return self.loop.time() - self._t0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        if seconds <= 0:
            callback()
        else:
            self.loop.call_later(seconds, callback)

    def create_future(self) -> asyncio.Future:
        return self.loop.create_future()

    def spawn(self, coro) -> asyncio.Future:
        """Run ``coro`` as its own task; cancelling the awaiting one leaves it running."""
        return _spawn(self.loop, coro)


def _spawn(loop: asyncio.AbstractEventLoop, coro) -> asyncio.Future:
    future = loop.create_future()

    def settle(task: asyncio.Task) -> None:
        if future.done():  # the awaiting coroutine was cancelled: nobody reads the outcome
            if not task.cancelled():
                task.exception()
        elif task.cancelled():
            future.cancel()
        elif task.exception() is not None:
            future.set_exception(task.exception())
        else:
            future.set_result(task.result())

    task = loop.create_task(coro)
    _SPAWNED.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_SPAWNED.discard)
    task.add_done_callback(settle)
    return future


_SPAWNED: set[asyncio.Task] = set()


class _InstantSelector(selectors.DefaultSelector):
    """A selector that never waits: it moves the loop's virtual clock forward instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._virtual_loop = loop

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._virtual_loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock is simulated: when nothing is ready, time jumps to the next
    timer instead of sleeping. Plain ``asyncio.sleep``/``call_later``/``wait_for`` all work."""

    def __init__(self) -> None:
        self._virtual = 0.0
        super().__init__(_InstantSelector(self))

    def time(self) -> float:
        return self._virtual

    def advance(self, seconds: float) -> None:
        target = self._virtual + seconds
        scheduled = getattr(self, "_scheduled", None)  # asyncio's timer heap
        if scheduled:
            # land exactly on the next timer: summing timeouts would drift by float rounding
            target = max(self._virtual, scheduled[0].when())
        self._virtual = target


class AsyncDriver(Host):
    """Runs ``controller`` against ``adapters`` (vehicle id -> its OEM head) on asyncio.

    ``planning``: ``"inline"`` runs planning jobs inside the step (deterministic; what the
    virtual-time runs use), ``"thread"`` on one worker thread off the event loop (live).
    """

    def __init__(self, controller: Controller, adapters: dict[str, OEMAdapter], clock: AsyncClock,
                 sink: Callable[[LogRow], None] | None = None,
                 on_notify: Callable[[Action], None] | None = None,
                 planning: Literal["inline", "thread"] = "inline") -> None:
        self.clock = clock
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.planning = planning
        self._planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner") if planning == "thread" else None
        controller.inline_planning = planning == "inline"
        super().__init__(controller, adapters, sink, on_notify)

    def _seconds(self) -> float:
        return self.clock.seconds

    def _now(self) -> datetime:
        return self.clock.now()

    def _wake_up(self) -> None:
        self._ready.set()

    async def run(self, until_s: float | None = None) -> None:
        """Run the loop until ``until_s`` seconds after the clock's start (forever if None)."""
        try:
            while until_s is None or self.clock.seconds < until_s:
                self._step()
                while self.inbox:
                    self._step()
                self._ready.clear()
                timeout = None
                wake_at = self.controller.wake_at
                if wake_at is not None:
                    # in seconds since the clock's start, as the SimPy driver counts: the
                    # difference of two rounded datetimes would land up to a microsecond off
                    timeout = max(0.0, (wake_at - self.clock.start).total_seconds() - self.clock.seconds)
                if until_s is not None:
                    left = until_s - self.clock.seconds
                    timeout = left if timeout is None else min(timeout, left)
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._planner is not None:
                self._planner.shutdown(wait=False, cancel_futures=True)

    def _start_call(self, action: Action) -> None:
        task = asyncio.get_running_loop().create_task(self._perform(action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _perform(self, action: Action) -> None:
        timeout = self.controller.config.call_timeout_s
        try:
            value = await asyncio.wait_for(self._invoke(action), timeout)
        except TimeoutError:
            self._done(action, None, CallTimeout(action.vehicle_id, f"{action.kind}: no answer within {timeout:g} s"))
        except Exception as exc:  # noqa: BLE001 - typed (or converted) by Host._done
            self._done(action, None, exc)
        else:
            self._done(action, value, None)

    def _start_plan(self, request: PlanRequest) -> None:
        if self._planner is None:
            super()._start_plan(request)
            return
        self.sink((self._seconds(), "", "plan", request.describe()))
        future = asyncio.get_running_loop().run_in_executor(self._planner, request.run)
        future.add_done_callback(lambda f: None if f.cancelled() else self.deliver(f.result()))
