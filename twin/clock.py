"""What code written against ``async``/``await`` needs from the host's clock.

OEM heads and token refreshes run as coroutines in two worlds: on an asyncio loop live (and in
virtual time in tests), and inside the SimPy twin. Neither world's primitives work in the other,
so heads take a :class:`Clock` and use only what it offers: the time, ``sleep``, timers, and a
:meth:`Clock.create_future` that one coroutine resolves and others await, and
:meth:`Clock.spawn`, which runs a coroutine on its own so that it completes even when the
caller that started it stops waiting (a request that reached a cloud is carried out there).
:class:`twin.sim.clock.SimClock` and :class:`twin.host.aio.AsyncClock` implement it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, Protocol

__all__ = ["Clock", "Future"]


class Future(Protocol):
    """A result one coroutine provides and others ``await``."""

    def set_result(self, value: Any) -> None: ...

    def set_exception(self, error: BaseException) -> None: ...

    def __await__(self): ...


class Clock(Protocol):
    """UTC time and timers of a host (seconds since ``start``)."""

    start: datetime

    @property
    def seconds(self) -> float: ...

    def now(self) -> datetime: ...

    def at(self, seconds: float) -> datetime: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None: ...

    def create_future(self) -> Future: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Future:
        """Run ``coro`` independently; the future gets its result or exception. Cancelling
        whoever awaits the future does not cancel ``coro``."""
