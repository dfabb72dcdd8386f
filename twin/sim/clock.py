"""Simulated time for code that is written against ``async``/``await``.

OEM adapters are coroutines because real clouds are slow. Inside the twin they must wait in
*simulated* time. :class:`SimClock` (a :class:`twin.clock.Clock`) gives them ``await
clock.sleep(seconds)``, which suspends the coroutine on a SimPy timeout, and futures other
coroutines can await; :func:`drive` is the SimPy process that runs such a coroutine, forwarding
each SimPy event it awaits (and each failure, as an exception inside the coroutine).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from datetime import datetime, timedelta
from typing import Any

import simpy

__all__ = ["SimClock", "SimFuture", "drive"]


class _Wait:
    """Awaitable that hands a SimPy event to the process driving the coroutine."""

    __slots__ = ("event",)

    def __init__(self, event: simpy.Event) -> None:
        self.event = event

    def __await__(self) -> Generator[simpy.Event, Any, Any]:
        return (yield self.event)


class SimFuture:
    """A :class:`twin.clock.Future` on a SimPy event."""

    __slots__ = ("event",)

    def __init__(self, env: simpy.Environment) -> None:
        self.event = env.event()

    def set_result(self, value: Any) -> None:
        self.event.succeed((value, None))

    def set_exception(self, error: BaseException) -> None:
        # carried as a value: SimPy would raise a copy made from the exception's args, losing
        # its attributes (a RateLimited's retry_after_s, a CommandRejected's reason)
        self.event.succeed((None, error))

    def __await__(self) -> Generator[simpy.Event, Any, Any]:
        value, error = yield self.event
        if error is not None:
            raise error
        return value


class SimClock:
    """UTC wall time and timers in a SimPy environment (SimPy time unit: seconds)."""

    def __init__(self, env: simpy.Environment, start: datetime) -> None:
        self.env = env
        self.start = start

    @property
    def seconds(self) -> float:
        """Simulated seconds since ``start``."""
        return self.env.now

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.env.now)

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> _Wait:
        return _Wait(self.env.timeout(seconds))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        if seconds <= 0:
            callback()
            return
        self.env.timeout(seconds).callbacks.append(lambda _event: callback())

    def create_future(self) -> SimFuture:
        return SimFuture(self.env)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> SimFuture:
        """Run ``coro`` as its own SimPy process, started after what runs now (as asyncio starts
        a task); interrupting the awaiting process leaves it running."""
        future = self.create_future()

        def done(value: Any, error: BaseException | None) -> None:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

        def start() -> Generator[simpy.Event, Any, None]:
            # started by the environment, as asyncio starts a task: after what runs now
            try:
                first = coro.send(None)
            except StopIteration as stop:
                done(stop.value, None)
                return
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                done(None, exc)
                return
            yield from drive(coro, first, done)

        self.env.process(start())
        return future


def drive(coro: Coroutine[Any, Any, Any], first: simpy.Event,
          done: Callable[[Any, BaseException | None], None]) -> Generator[simpy.Event, Any, None]:
    """SimPy process running ``coro`` after it first suspended on ``first``.

    ``done(result, error)`` is called when the coroutine returns or raises; interrupting the
    process cancels the coroutine (``close()``, like asyncio's cancellation) without a call.
    """
    event = first
    while True:
        error: BaseException | None = None
        try:
            value = yield event
        except simpy.Interrupt:  # the host gave up on the call (timeout): cancel it where it waits
            coro.close()
            return
        except Exception as failure:  # noqa: BLE001 - the awaited event failed: raise it inside
            error = failure
        try:
            event = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            done(stop.value, None)
            return
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which types it
            done(None, exc)
            return
