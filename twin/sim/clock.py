"""Simulated time for code that is written against ``async``/``await``.

OEM adapters are coroutines because real clouds are slow. Inside the twin they must wait in
*simulated* time. :class:`SimClock` gives them ``await clock.sleep(seconds)``, which suspends
the coroutine on a SimPy timeout; :func:`drive` is the SimPy process that runs such a
coroutine, forwarding each SimPy event it awaits.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from datetime import datetime, timedelta
from typing import Any

import simpy

__all__ = ["SimClock", "drive"]


class _Wait:
    """Awaitable that hands a SimPy event to the process driving the coroutine."""

    __slots__ = ("event",)

    def __init__(self, event: simpy.Event) -> None:
        self.event = event

    def __await__(self) -> Generator[simpy.Event, Any, Any]:
        return (yield self.event)


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


def drive(coro: Coroutine[Any, Any, Any], first: simpy.Event,
          done: Callable[[Any, BaseException | None], None]) -> Generator[simpy.Event, Any, None]:
    """SimPy process running ``coro`` after it first suspended on ``first``.

    ``done(result, error)`` is called when the coroutine returns or raises.
    """
    event = first
    while True:
        value = yield event
        try:
            event = coro.send(value)
        except StopIteration as stop:
            done(stop.value, None)
            return
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which types it
            done(None, exc)
            return
