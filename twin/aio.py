"""The asyncio host of the controller: the loop the live server runs.

:class:`AsyncDriver` is the same short loop as the SimPy driver — take the events that arrived,
``controller.step(now, events)``, start each action as a task against the car's OEM adapter,
turn each outcome into an event — written for asyncio. Time comes from an injectable clock:
:class:`AsyncClock` reads the event loop's clock, so on an ordinary loop it is wall time, and on
a :class:`VirtualTimeLoop` it is simulated time that jumps straight to the next timer. The
latter lets a whole scenario run through the live loop in seconds (:func:`simulate_async`),
which is how the tests prove the twin and the server share one control path.
"""

from __future__ import annotations

import asyncio
import selectors
import time as wallclock
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from twin.controller import Action, Controller
from twin.host import Host
from twin.oem import OEMAdapter, OEMError
from twin.results import SimulationResult
from twin.scenario import Scenario

__all__ = ["AsyncClock", "AsyncDriver", "VirtualTimeLoop", "simulate_async"]


class AsyncClock:
    """UTC time and timers on an asyncio loop.

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

    ``log`` (optional) receives ``(seconds, vehicle_id, kind, detail)`` rows like the twin's
    event log; ``on_notify`` receives notification actions (the server sends them to drivers).
    """

    def __init__(self, controller: Controller, adapters: dict[str, OEMAdapter], clock: AsyncClock,
                 log: list[tuple[float, str, str, str]] | None = None,
                 on_notify: Callable[[Action], None] | None = None) -> None:
        self.clock = clock
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        super().__init__(controller, adapters, log, on_notify)

    def _seconds(self) -> float:
        return self.clock.seconds

    def _now(self) -> datetime:
        return self.clock.now()

    def _wake_up(self) -> None:
        self._ready.set()

    async def run(self, until_s: float | None = None) -> None:
        """Run the loop until ``until_s`` seconds after the clock's start (forever if None)."""
        controller = self.controller
        while until_s is None or self.clock.seconds < until_s:
            self._step()
            while self.inbox:
                self._step()
            self._ready.clear()
            timeout = None
            if controller.wake_at is not None:
                timeout = max(0.0, (controller.wake_at - self.clock.now()).total_seconds())
            if until_s is not None:
                left = until_s - self.clock.seconds
                timeout = left if timeout is None else min(timeout, left)
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                pass
        for task in list(self._tasks):
            task.cancel()

    def _start_call(self, action: Action) -> None:
        task = asyncio.get_running_loop().create_task(self._perform(action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _perform(self, action: Action) -> None:
        try:
            value = await self._call(action)
        except OEMError as exc:
            self._done(action, None, exc)
            return
        self._done(action, value, None)


def simulate_async(scenario: Scenario | str | Path | dict[str, Any], policy: str | None = None, *,
                   seed: int | None = None) -> SimulationResult:
    """Run a scenario through :class:`AsyncDriver` on a :class:`VirtualTimeLoop`.

    Same twin (cars, OEM clouds, timeline) as :func:`twin.simulate`, hosted by the live loop
    instead of SimPy. Slower, but it exercises exactly what the server runs.
    """
    from twin.sim.run import build, finish

    t_wall = wallclock.perf_counter()
    loop = VirtualTimeLoop()
    try:
        twin = build(scenario, policy, seed, lambda origin: AsyncClock(origin, loop))
        clock = twin.clock
        driver = AsyncDriver(twin.controller, twin.adapters, clock, twin.world.log)
        twin.player.deliver = driver.deliver

        async def play() -> None:
            for i, t in enumerate(twin.player.times):
                wait = t - clock.seconds
                if wait > 0:
                    await asyncio.sleep(wait)
                twin.player.apply(i)

        async def main() -> None:
            runner = asyncio.ensure_future(driver.run(twin.until))
            await play()
            await runner

        loop.run_until_complete(main())
    finally:
        loop.close()
    return finish(twin, wallclock.perf_counter() - t_wall)
