"""The event bus the server's pipeline stages talk through.

Registration, telemetry, planning, dispatch and driver information are stages that consume
events and publish new ones (``vehicle.registered``, ``telemetry.received``, ``plan.updated``,
``command.sent``, ``notification.created``, ...). They see one interface, :class:`Bus`, with
two implementations chosen by URL with :func:`connect_bus`:

``memory://``
    :class:`InProcessBus`, asyncio only: the embedded default, so ``twin serve`` needs no other
    service. Events live as long as the process.
``nats://HOST:PORT``
    :class:`NatsBus`, NATS JetStream: events survive restarts of the server and stages can run
    in several processes.

Both give the same guarantees, and the stages rely on nothing else:

* **Events are JSON objects.** :meth:`Bus.publish` rejects anything ``json.dumps`` cannot
  write, at the publisher, where the mistake is. Every event carries an ``id`` (set by publish
  when missing) so a consumer can drop the duplicate an at-least-once bus may hand it, and a
  ``topic`` (always set by publish to the topic it was published on) so a handler subscribed to
  a wildcard knows what it got.
* **Topics are dot-separated tokens**, as NATS subjects are. A subscription's topic may use
  ``*`` for exactly one token and a trailing ``>`` for one or more (``telemetry.>``).
* **Groups share work, groups are independent.** Subscribers with the same ``group`` on the
  same topic form one durable consumer: each event goes to one of them. Every group gets every
  event. The consumer is identified by (group, topic), so one stage may use one group name for
  all the topics it consumes.
* **Durable.** Events published while no subscriber of a group runs are delivered when one
  subscribes. A group seeing its topic for the first time starts at the oldest retained event:
  everything since the bus started (memory) or everything the stream holds (NATS).
* **At least once, with redelivery and a dead letter.** The handler returning acknowledges
  the event. A handler raising makes the event come back after a back-off
  (``retry_delay * 2 ** (delivery - 1)``, at most ``max_retry_delay``) until it has been
  delivered ``max_deliveries`` times; then it is published to ``deadletter.<topic>`` with the
  error text and the delivery count, and acknowledged, so one poison event cannot stall a
  stage.
* **One event at a time per subscriber.** A subscriber's handler is never run concurrently
  with itself; to handle events in parallel, subscribe more members of the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable
from urllib.parse import urlsplit

__all__ = [
    "Bus",
    "Handler",
    "InProcessBus",
    "NatsBus",
    "Subscription",
    "connect_bus",
    "dead_letter_topic",
]

log = logging.getLogger("server.bus")

Handler = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_RETRY_DELAY = 0.5
DEFAULT_MAX_RETRY_DELAY = 30.0
DEFAULT_MAX_DELIVERIES = 5

_TOKEN = re.compile(r"^[^\s.*>]+$")


@runtime_checkable
class Subscription(Protocol):
    """One member of a consumer group; :meth:`stop` leaves the group.

    Stopping lets an event being handled finish (and be acknowledged) first; the group's
    durable position stays, so the group picks up where it left off when a member subscribes
    again.
    """

    topic: str
    group: str

    async def stop(self) -> None: ...


@runtime_checkable
class Bus(Protocol):
    """What a pipeline stage sees of the bus (see the module docstring for the guarantees)."""

    async def start(self) -> None:
        """Connect; publish and subscribe need it."""

    async def close(self) -> None:
        """Stop every subscription and disconnect."""

    async def publish(self, topic: str, event: dict[str, Any]) -> str:
        """Publish a JSON-serialisable event on ``topic``; returns the event's id."""

    async def subscribe(self, topic: str, group: str, handler: Handler, *,
                        max_deliveries: int = DEFAULT_MAX_DELIVERIES) -> Subscription:
        """Join the durable consumer ``group`` on ``topic``; ``handler`` gets each event."""

    async def idle(self) -> None:
        """Return once every event this process's subscriptions are due has been handled."""


def connect_bus(url: str, **options: Any) -> InProcessBus | NatsBus:
    """The bus ``url`` names, not yet started.

    ``memory://`` gives an :class:`InProcessBus`, ``nats://HOST:PORT`` a :class:`NatsBus`;
    ``options`` go to its constructor (``retry_delay``, and for NATS ``stream`` and
    ``prefix``). Anything else is a :class:`ValueError` naming the accepted forms, so a typo in
    ``CHARGETWIN_BUS_URL`` fails at start rather than silently falling back to memory.
    """
    text = (url or "").strip()
    if text == "memory://":
        return InProcessBus(**options)
    parts = urlsplit(text)
    if parts.scheme == "nats" and parts.hostname:
        try:
            _ = parts.port                         # a port that is not a number
        except ValueError:
            pass
        else:
            return NatsBus(text, **options)
    raise ValueError(f"unsupported bus URL {url!r}: use 'memory://' (in-process) or "
                     f"'nats://HOST:PORT' (NATS with JetStream)")


def dead_letter_topic(topic: str) -> str:
    """Where events of ``topic`` go once their deliveries are used up."""
    return f"deadletter.{topic}"


# -- shared rules ---------------------------------------------------------------------------------


def _check_topic(topic: str, *, pattern: bool) -> None:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    tokens = topic.split(".")
    for i, token in enumerate(tokens):
        if pattern and token == "*":
            continue
        if pattern and token == ">" and i == len(tokens) - 1:
            continue
        if not _TOKEN.match(token):
            what = "subscription topic" if pattern else "topic to publish on"
            extra = " ('*' stands for one token, a trailing '>' for the rest)" if pattern else \
                " (wildcards are for subscribing)"
            raise ValueError(f"invalid {what} {topic!r}: tokens are separated by '.', are not "
                             f"empty and contain no whitespace, '*' or '>'{extra}")


def _matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` falls under ``pattern``, by NATS subject rules."""
    p, t = pattern.split("."), topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)


def _encode(topic: str, event: dict[str, Any]) -> tuple[str, bytes]:
    """The event as published: a copy with ``id`` and ``topic`` set, as UTF-8 JSON."""
    if not isinstance(event, dict):
        raise TypeError(f"an event is a JSON object (dict), got {type(event).__name__}")
    event = dict(event)
    event_id = event.setdefault("id", uuid.uuid4().hex)
    if not isinstance(event_id, str) or not event_id:
        raise TypeError(f"an event's 'id' must be a non-empty string, got {event_id!r}")
    event["topic"] = topic
    try:
        data = json.dumps(event, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"event for {topic!r} is not JSON-serialisable: {exc}") from exc
    return event_id, data


def _retry_delay(delivery: int, base: float, cap: float) -> float:
    return min(base * 2 ** max(delivery - 1, 0), cap)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _dead_letter(topic: str, group: str, event: Any, error: str, deliveries: int) -> dict[str, Any]:
    return {"group": group, "original_topic": topic, "event": event, "error": error,
            "deliveries": deliveries}


def _check_subscription(topic: str, group: str, max_deliveries: int) -> None:
    _check_topic(topic, pattern=True)
    if not isinstance(group, str) or not group.strip():
        raise ValueError(f"group must be a non-empty string, got {group!r}")
    if not isinstance(max_deliveries, int) or max_deliveries < 1:
        raise ValueError(f"max_deliveries must be a positive int, got {max_deliveries!r}")


# -- in process ---------------------------------------------------------------------------------


@dataclass
class _Delivery:
    seq: int
    topic: str
    data: bytes
    deliveries: int = 0


class _Group:
    """One durable consumer of the in-process bus: a position in the log and its members."""

    def __init__(self, topic: str, name: str, offset: int) -> None:
        self.topic, self.name = topic, name
        self.offset = offset                     # next log position to look at
        self.ready: deque[_Delivery] = deque()    # redeliveries that are due
        self.timers: set[asyncio.TimerHandle] = set()
        self.inflight = 0
        self.members = 0
        self.waiters: deque[asyncio.Future[_Delivery]] = deque()  # idle members, in turn


class InProcessBus:
    """The bus inside one asyncio loop, for the embedded server and the tests.

    Every published event goes into one append-only log; each group keeps its own position in
    it, so a group subscribing late is handed every event since the bus started. The log is
    trimmed only of events every existing group has passed, and only once it holds more than
    ``max_retained`` of them; past that, a group new to its topic starts at the oldest event
    still held. Members of a group take events in turn (the one idle longest gets the next),
    so they share the work round-robin when they keep up and by load when they do not.

    :meth:`idle` returns once every group with a running member has handled everything due to
    it, redeliveries waiting out their back-off included; the server's shutdown and the tests
    wait on it.
    """

    def __init__(self, *, retry_delay: float = DEFAULT_RETRY_DELAY,
                 max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
                 max_retained: int = 100_000) -> None:
        self.retry_delay, self.max_retry_delay = retry_delay, max_retry_delay
        self.max_retained = max_retained
        self._log: list[tuple[str, bytes]] = []
        self._base = 0                            # log position of self._log[0]
        self._groups: dict[tuple[str, str], _Group] = {}
        self._subscriptions: set[_MemorySubscription] = set()
        self._changed = asyncio.Event()
        self._started = False
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("this bus has been closed; make a new one")
        self._started = True

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*(s._cancel() for s in list(self._subscriptions)))
        for group in self._groups.values():
            for timer in group.timers:
                timer.cancel()
            group.timers.clear()
        self._poke()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the bus is closed")
        if not self._started:
            raise RuntimeError("the bus is not started; await bus.start() first")

    async def publish(self, topic: str, event: dict[str, Any]) -> str:
        self._check_open()
        _check_topic(topic, pattern=False)
        event_id, data = _encode(topic, event)
        self._log.append((topic, data))
        self._trim()
        for group in self._groups.values():
            if group.waiters and _matches(group.topic, topic):
                self._pump(group)
        return event_id

    async def subscribe(self, topic: str, group: str, handler: Handler, *,
                        max_deliveries: int = DEFAULT_MAX_DELIVERIES) -> _MemorySubscription:
        self._check_open()
        _check_subscription(topic, group, max_deliveries)
        state = self._groups.get((topic, group))
        if state is None:
            state = self._groups[(topic, group)] = _Group(topic, group, self._base)
        subscription = _MemorySubscription(self, state, handler, max_deliveries)
        self._subscriptions.add(subscription)
        state.members += 1
        subscription._task = asyncio.get_running_loop().create_task(
            subscription._run(), name=f"bus:{group}:{topic}")
        return subscription

    async def idle(self) -> None:
        while not self._is_idle():
            self._changed.clear()
            await self._changed.wait()

    # -- inside ---------------------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()

    def _is_idle(self) -> bool:
        for group in self._groups.values():
            if group.members == 0:
                continue
            if group.inflight or group.timers or group.ready or self._has_new(group):
                return False
        return True

    def _has_new(self, group: _Group) -> bool:
        """Whether the log holds an event for ``group`` past its position (skipping others)."""
        end = self._base + len(self._log)
        while group.offset < end:
            if _matches(group.topic, self._log[group.offset - self._base][0]):
                return True
            group.offset += 1
        return False

    def _next(self, group: _Group) -> _Delivery | None:
        if group.ready:
            return group.ready.popleft()
        if self._has_new(group):
            topic, data = self._log[group.offset - self._base]
            delivery = _Delivery(group.offset, topic, data)
            group.offset += 1
            return delivery
        return None

    def _pump(self, group: _Group) -> None:
        """Hand due events to the group's idle members, longest idle first."""
        while group.waiters:
            waiter = group.waiters[0]
            if waiter.done():                     # its member was stopped while waiting
                group.waiters.popleft()
                continue
            delivery = self._next(group)
            if delivery is None:
                break
            group.waiters.popleft()
            group.inflight += 1
            waiter.set_result(delivery)
        self._poke()

    def _retry_later(self, group: _Group, delivery: _Delivery) -> None:
        delay = _retry_delay(delivery.deliveries, self.retry_delay, self.max_retry_delay)
        timer: asyncio.TimerHandle

        def due() -> None:
            group.timers.discard(timer)
            group.ready.append(delivery)
            self._pump(group)

        timer = asyncio.get_running_loop().call_later(delay, due)
        group.timers.add(timer)

    def _trim(self) -> None:
        if len(self._log) <= self.max_retained + self.max_retained // 4:
            return
        end = self._base + len(self._log)
        cut = end - self.max_retained
        for group in self._groups.values():
            cut = min(cut, group.offset)
        if cut > self._base:
            del self._log[:cut - self._base]
            self._base = cut


class _MemorySubscription:
    """A member of an :class:`InProcessBus` group: one task taking the group's events in turn."""

    def __init__(self, bus: InProcessBus, group: _Group, handler: Handler, max_deliveries: int) -> None:
        self._bus, self._group, self._handler = bus, group, handler
        self.topic, self.group = group.topic, group.name
        self.max_deliveries = max_deliveries
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._stopping = False
        self._left = False

    async def _run(self) -> None:
        bus, group = self._bus, self._group
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                waiter: asyncio.Future[_Delivery] = loop.create_future()
                group.waiters.append(waiter)
                bus._pump(group)
                try:
                    delivery = await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled():
                        # Stopped just as an event was handed over: give it back to the group.
                        group.ready.appendleft(waiter.result())
                        group.inflight -= 1
                        bus._pump(group)
                    raise
                self._busy = True
                try:
                    await self._handle(delivery)
                finally:
                    self._busy = False
                    group.inflight -= 1
                    bus._poke()
        finally:
            self._leave()

    async def _handle(self, delivery: _Delivery) -> None:
        delivery.deliveries += 1
        event = json.loads(delivery.data)
        try:
            await self._handler(event)
        except Exception as exc:  # noqa: BLE001 - whatever a handler raises is a failed delivery
            if delivery.deliveries >= self.max_deliveries:
                log.error("bus: %s on %s failed %d times, dead-lettering event %s: %s", self.group,
                          delivery.topic, delivery.deliveries, event.get("id"), _error_text(exc))
                with contextlib.suppress(RuntimeError):   # the bus closed meanwhile
                    await self._bus.publish(dead_letter_topic(delivery.topic), _dead_letter(
                        delivery.topic, self.group, event, _error_text(exc), delivery.deliveries))
            else:
                log.warning("bus: %s on %s failed on delivery %d of event %s, retrying: %s",
                            self.group, delivery.topic, delivery.deliveries, event.get("id"),
                            _error_text(exc))
                self._bus._retry_later(self._group, delivery)

    def _leave(self) -> None:
        if not self._left:
            self._left = True
            self._group.members -= 1
            self._bus._subscriptions.discard(self)
            self._bus._poke()

    async def _cancel(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._leave()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is None:
            return
        if not self._busy:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._leave()


# -- NATS JetStream -----------------------------------------------------------------------------


def _durable_name(group: str, topic: str) -> str:
    """A JetStream consumer name for (group, topic): readable, and distinct per pair."""
    def safe(text: str) -> str:
        text = text.replace(">", "all").replace("*", "any")
        return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:40] or "x"
    digest = hashlib.sha1(f"{group}\0{topic}".encode()).hexdigest()[:8]
    return f"{safe(group)}__{safe(topic)}__{digest}"


class NatsBus:
    """The bus on NATS JetStream, for events that outlive the process and stages in several.

    Topics are subjects under ``prefix`` (``telemetry.received`` is
    ``chargetwin.telemetry.received``) in one stream, ``stream``, which :meth:`start` creates
    when missing and extends with ``<prefix>.>`` when it exists without it. Each (group,
    topic) is a durable pull consumer with explicit acks, delivering from the start of the
    stream; every subscriber of the group pulls from it, one event at a time. A failing
    handler's event is nak'ed with the back-off as delay; on its ``max_deliveries``-th delivery
    it is dead-lettered instead and acknowledged. The event id is also the JetStream message id,
    so a publish retried within the stream's duplicate window is stored once.

    Messages whose deliveries all end without an answer (a handler still running after
    ``ack_wait``, which is extended while it runs, or the process dying) are dropped by the
    server after ``max_deliveries`` like any JetStream consumer's, with an advisory rather than a
    dead letter. A consumer's settings are fixed when it is first created; later subscriptions
    to the same (group, topic) use it as it is.
    """

    def __init__(self, url: str, *, stream: str = "CHARGETWIN", prefix: str = "chargetwin",
                 retry_delay: float = DEFAULT_RETRY_DELAY,
                 max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
                 ack_wait: float = 30.0, connect_timeout: float = 3.0,
                 fetch_timeout: float = 2.0) -> None:
        _check_topic(prefix, pattern=False)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stream):
            raise ValueError(f"invalid stream name {stream!r}: letters, digits, '_' and '-' only")
        self.url, self.stream, self.prefix = url, stream, prefix
        self.retry_delay, self.max_retry_delay = retry_delay, max_retry_delay
        self.ack_wait, self.connect_timeout, self.fetch_timeout = ack_wait, connect_timeout, fetch_timeout
        self._nc: Any = None
        self._js: Any = None
        self._subscriptions: set[_NatsSubscription] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def subject(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    def _how_to(self) -> str:
        return ("start NATS with JetStream (nats-server -js) or set CHARGETWIN_BUS_URL=memory:// "
                "to use the in-process bus")

    async def start(self) -> None:
        import nats
        from nats.aio.client import Client

        if self._nc is not None:
            return
        last_error: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            last_error.append(exc)
            log.debug("bus: NATS error: %s", exc)

        async def on_disconnect() -> None:
            if self._nc is None:                  # closing (or never connected): expected
                return
            log.warning("bus: disconnected from NATS at %s", self.url)

        async def on_reconnect() -> None:
            log.info("bus: reconnected to NATS at %s", self.url)

        parts = urlsplit(self.url)
        try:
            # A refused or unroutable address is reported at once instead of after the timeout.
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, parts.port or 4222), self.connect_timeout)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to the NATS event bus at {self.url} "
                                  f"({_error_text(exc) if str(exc) else type(exc).__name__}); "
                                  f"{self._how_to()}") from exc
        nc = Client()
        try:
            # The client retries a dead server for minutes by default; bound the first connect
            # so a missing NATS is reported at start, and keep reconnecting once connected.
            await asyncio.wait_for(
                nc.connect(self.url, connect_timeout=self.connect_timeout, error_cb=on_error,
                           disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
                           max_reconnect_attempts=-1),
                timeout=self.connect_timeout + 0.5)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = last_error[-1] if last_error else exc
            raise ConnectionError(f"cannot connect to the NATS event bus at {self.url} "
                                  f"({_error_text(cause)}); {self._how_to()}") from exc
        js = nc.jetstream()
        try:
            await self._ensure_stream(js)
        except Exception as exc:
            await nc.close()
            if isinstance(exc, nats.errors.TimeoutError | nats.errors.NoRespondersError):
                raise ConnectionError(f"NATS at {self.url} does not answer JetStream requests, so "
                                      f"JetStream is not enabled; {self._how_to()}") from exc
            raise
        self._nc, self._js = nc, js

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.errors import NotFoundError

        wanted = f"{self.prefix}.>"
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(name=self.stream, subjects=[wanted])
            return
        subjects = list(info.config.subjects or [])
        if wanted not in subjects:
            info.config.subjects = subjects + [wanted]
            await js.update_stream(info.config)

    async def close(self) -> None:
        await asyncio.gather(*(s._cancel() for s in list(self._subscriptions)))
        if self._nc is not None:
            nc, self._nc, self._js = self._nc, None, None
            with contextlib.suppress(Exception):
                await nc.close()

    def _check_open(self) -> None:
        if self._js is None:
            raise RuntimeError("the bus is not started (or closed); await bus.start() first")

    async def publish(self, topic: str, event: dict[str, Any]) -> str:
        self._check_open()
        _check_topic(topic, pattern=False)
        event_id, data = _encode(topic, event)
        await self._js.publish(self.subject(topic), data, stream=self.stream,
                               headers={"Nats-Msg-Id": event_id})
        return event_id

    async def subscribe(self, topic: str, group: str, handler: Handler, *,
                        max_deliveries: int = DEFAULT_MAX_DELIVERIES) -> _NatsSubscription:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        self._check_open()
        _check_subscription(topic, group, max_deliveries)
        durable = _durable_name(group, topic)
        config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, max_deliver=max_deliveries,
                                ack_wait=self.ack_wait, filter_subject=self.subject(topic))
        pull = await self._js.pull_subscribe(self.subject(topic), durable=durable,
                                             stream=self.stream, config=config)
        subscription = _NatsSubscription(self, topic, group, durable, pull, handler, max_deliveries)
        self._subscriptions.add(subscription)
        subscription._task = asyncio.get_running_loop().create_task(
            subscription._run(), name=f"bus:{group}:{topic}")
        return subscription

    async def idle(self) -> None:
        """Return once this process's consumers have nothing pending, unacknowledged or
        waiting out a back-off, and nothing was published to the stream while checking."""
        self._check_open()
        while True:
            before = (await self._js.stream_info(self.stream)).state.last_seq
            quiet = all(not s._busy for s in self._subscriptions)
            for durable in {s.durable for s in self._subscriptions}:
                info = await self._js.consumer_info(self.stream, durable)
                if info.num_pending or info.num_ack_pending:
                    quiet = False
                    break
            if quiet and all(not s._busy for s in self._subscriptions):
                after = (await self._js.stream_info(self.stream)).state.last_seq
                if after == before:
                    return
            await asyncio.sleep(0.05)


class _NatsSubscription:
    """A member of a JetStream consumer: one task fetching and handling one message at a time."""

    def __init__(self, bus: NatsBus, topic: str, group: str, durable: str, pull: Any,
                 handler: Handler, max_deliveries: int) -> None:
        self._bus, self.topic, self.group, self.durable = bus, topic, group, durable
        self._pull, self._handler, self.max_deliveries = pull, handler, max_deliveries
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._stopping = False

    async def _run(self) -> None:
        import nats

        while not self._stopping:
            try:
                messages = await self._pull.fetch(batch=1, timeout=self._bus.fetch_timeout)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:        # disconnected: the client reconnects
                log.warning("bus: %s on %s cannot fetch (%s); retrying", self.group, self.topic,
                            _error_text(exc))
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                self._busy = True
                try:
                    await self._handle(message)
                except Exception as exc:  # noqa: BLE001 - unanswered: the server redelivers it
                    log.warning("bus: %s on %s could not settle a message (%s); it comes back "
                                "after ack_wait", self.group, self.topic, _error_text(exc))
                finally:
                    self._busy = False

    async def _handle(self, message: Any) -> None:
        deliveries = message.metadata.num_delivered
        topic = message.subject[len(self._bus.prefix) + 1:]
        try:
            event = json.loads(message.data)
        except ValueError as exc:
            await self._dead_letter(message, topic, message.data.decode("utf-8", "replace"),
                                    f"undecodable event: {exc}", deliveries)
            return
        keepalive = asyncio.get_running_loop().create_task(self._keep_alive(message))
        try:
            await self._handler(event)
        except Exception as exc:  # noqa: BLE001 - whatever a handler raises is a failed delivery
            keepalive.cancel()
            if deliveries >= self.max_deliveries:
                log.error("bus: %s on %s failed %d times, dead-lettering event %s: %s", self.group,
                          topic, deliveries, event.get("id"), _error_text(exc))
                await self._dead_letter(message, topic, event, _error_text(exc), deliveries)
            else:
                log.warning("bus: %s on %s failed on delivery %d of event %s, retrying: %s",
                            self.group, topic, deliveries, event.get("id"), _error_text(exc))
                await message.nak(delay=_retry_delay(deliveries, self._bus.retry_delay,
                                                     self._bus.max_retry_delay))
        else:
            keepalive.cancel()
            await message.ack()

    async def _dead_letter(self, message: Any, topic: str, event: Any, error: str, deliveries: int) -> None:
        await self._bus.publish(dead_letter_topic(topic),
                                _dead_letter(topic, self.group, event, error, deliveries))
        await message.ack()

    async def _keep_alive(self, message: Any) -> None:
        """Tell the server a long handler is still working, so it does not redeliver meanwhile."""
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(max(self._bus.ack_wait / 3, 0.1))
                await message.in_progress()

    async def _cancel(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._leave()

    async def _leave(self) -> None:
        if self in self._bus._subscriptions:
            self._bus._subscriptions.discard(self)
            with contextlib.suppress(Exception):
                await self._pull.unsubscribe()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            if not self._busy:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._leave()
