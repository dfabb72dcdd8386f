"""The event bus, in process and on NATS JetStream: the same behaviour from both.

Every behaviour test runs on ``memory://`` and on ``nats://127.0.0.1:4222``. The NATS runs use a
stream and subject prefix of their own, deleted afterwards, so a rerun never sees old messages.
Without NATS they are skipped, unless ``CI`` is set: there NATS is part of the job and its
absence is a failure.
"""

import asyncio
import os
import time
import uuid

import pytest

from server.bus import InProcessBus, NatsBus, connect_bus, dead_letter_topic

NATS_URL = "nats://127.0.0.1:4222"
NO_NATS = ("NATS with JetStream not reachable on 127.0.0.1:4222; start it (nats-server -js) "
           "or set CI=1 to require it")

_reachable: dict[str, str | None] = {}


def _nats_problem() -> str | None:
    """Why NATS with JetStream cannot be used here (None when it can); asked once per run."""
    if "problem" not in _reachable:
        async def probe() -> None:
            tag = uuid.uuid4().hex[:12]
            bus = NatsBus(NATS_URL, stream=f"PROBE_{tag}", prefix=f"probe{tag}")
            await bus.start()
            try:
                await bus._js.delete_stream(bus.stream)
            finally:
                await bus.close()
        try:
            asyncio.run(asyncio.wait_for(probe(), 10))
            _reachable["problem"] = None
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            _reachable["problem"] = f"{type(exc).__name__}: {exc}"
    return _reachable["problem"]


@pytest.fixture(params=["memory", "nats"])
def run(request):
    """``run(scenario)`` runs ``await scenario(bus)`` on a fresh, started bus of each kind."""
    kind = request.param
    if kind == "nats" and (problem := _nats_problem()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so NATS is required, but: {problem}")
        pytest.skip(NO_NATS)
    tag = uuid.uuid4().hex[:12]

    def go(scenario, timeout: float = 10.0):
        async def main():
            if kind == "memory":
                bus = connect_bus("memory://", retry_delay=0.05)
            else:
                bus = connect_bus(NATS_URL, stream=f"TEST_{tag}", prefix=f"test{tag}", retry_delay=0.05)
            await bus.start()
            try:
                return await asyncio.wait_for(scenario(bus), timeout)
            finally:
                if kind == "nats":
                    js = bus._js
                    await asyncio.gather(*(s.stop() for s in list(bus._subscriptions)))
                    await js.delete_stream(bus.stream)
                await bus.close()
        return asyncio.run(main())

    go.kind = kind
    return go


class Inbox:
    """Collects what a handler is given and lets a test wait for a number of events."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._grown = asyncio.Event()

    async def __call__(self, event: dict) -> None:
        self.events.append(event)
        self._grown.set()

    async def wait_for(self, n: int) -> list[dict]:
        while len(self.events) < n:
            self._grown.clear()
            await self._grown.wait()
        return self.events

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]


def test_delivers_every_event_once_with_its_id(run):
    async def scenario(bus):
        inbox = Inbox()
        await bus.subscribe("vehicle.registered", "recorder", inbox)
        ids = [await bus.publish("vehicle.registered", {"n": n}) for n in range(5)]
        given = await bus.publish("vehicle.registered", {"n": 5, "id": "mine-5"})
        await bus.publish("vehicle.unregistered", {"n": 99})
        await inbox.wait_for(6)
        await bus.idle()
        assert given == "mine-5"
        assert sorted(inbox.ids) == sorted(ids + ["mine-5"])
        assert sorted(e["n"] for e in inbox.events) == list(range(6))
        assert all(e["topic"] == "vehicle.registered" for e in inbox.events)
        assert len(set(ids)) == 5 and all(isinstance(i, str) and i for i in ids)
    run(scenario)


def test_trailing_wildcard_gets_every_topic_under_it(run):
    async def scenario(bus):
        inbox = Inbox()
        await bus.subscribe("telemetry.>", "recorder", inbox)
        await bus.publish("telemetry.received", {"n": 1})
        await bus.publish("telemetry.smartcar.raw", {"n": 2})
        await bus.publish("telemetry", {"n": 3})           # not under 'telemetry.>'
        await bus.publish("plan.updated", {"n": 4})
        await inbox.wait_for(2)
        await bus.idle()
        assert sorted((e["topic"], e["n"]) for e in inbox.events) == [
            ("telemetry.received", 1), ("telemetry.smartcar.raw", 2)]
    run(scenario)


def test_members_of_a_group_share_the_events(run):
    async def scenario(bus):
        a, b = Inbox(), Inbox()

        def slow(inbox):
            async def handler(event):
                await asyncio.sleep(0.01)
                await inbox(event)
            return handler

        await bus.subscribe("telemetry.received", "planner", slow(a))
        await bus.subscribe("telemetry.received", "planner", slow(b))
        ids = [await bus.publish("telemetry.received", {"n": n}) for n in range(20)]
        while len(a.events) + len(b.events) < 20:
            await asyncio.sleep(0.01)
        await bus.idle()
        assert a.events and b.events
        together = a.ids + b.ids
        assert sorted(together) == sorted(ids)          # all of them, none twice
    run(scenario)


def test_every_group_gets_every_event(run):
    async def scenario(bus):
        planner, recorder = Inbox(), Inbox()
        await bus.subscribe("command.sent", "planner", planner)
        await bus.subscribe("command.sent", "recorder", recorder)
        ids = [await bus.publish("command.sent", {"n": n}) for n in range(5)]
        await planner.wait_for(5)
        await recorder.wait_for(5)
        await bus.idle()
        assert sorted(planner.ids) == sorted(ids)
        assert sorted(recorder.ids) == sorted(ids)
    run(scenario)


def test_a_failing_handler_gets_the_event_again(run):
    async def scenario(bus):
        attempts: dict[str, int] = {}
        done, dead = Inbox(), Inbox()

        async def flaky(event):
            attempts[event["id"]] = attempts.get(event["id"], 0) + 1
            if attempts[event["id"]] == 1:
                raise RuntimeError("database is locked")
            await done(event)

        await bus.subscribe("plan.updated", "dispatch", flaky)
        await bus.subscribe(dead_letter_topic("plan.updated"), "alerts", dead)
        ids = [await bus.publish("plan.updated", {"n": n}) for n in range(3)]
        await done.wait_for(3)
        await bus.idle()
        assert sorted(done.ids) == sorted(ids)
        assert attempts == {i: 2 for i in ids}
        assert dead.events == []
    run(scenario)


def test_an_event_that_always_fails_is_dead_lettered(run):
    async def scenario(bus):
        attempts = []
        dead = Inbox()

        async def broken(event):
            attempts.append(event["id"])
            raise ValueError(f"no vehicle {event['vehicle']}")

        await bus.subscribe("notification.created", "push", broken, max_deliveries=3)
        await bus.subscribe("deadletter.>", "alerts", dead)
        event_id = await bus.publish("notification.created", {"vehicle": "v1"})
        [letter] = await dead.wait_for(1)
        await bus.idle()
        assert attempts == [event_id] * 3
        assert letter["topic"] == "deadletter.notification.created"
        assert letter["original_topic"] == "notification.created"
        assert letter["group"] == "push"
        assert letter["deliveries"] == 3
        assert "ValueError" in letter["error"] and "no vehicle v1" in letter["error"]
        assert letter["event"]["id"] == event_id and letter["event"]["vehicle"] == "v1"
        assert len(dead.events) == 1
    run(scenario)


def test_events_wait_for_a_group_that_is_not_running(run):
    async def scenario(bus):
        early = [await bus.publish("vehicle.registered", {"n": n}) for n in range(3)]
        first = Inbox()
        subscription = await bus.subscribe("vehicle.registered", "control", first)
        await first.wait_for(3)
        await bus.idle()
        assert sorted(first.ids) == sorted(early)
        await subscription.stop()
        # The group keeps its place while no member runs: the next one gets only what is new.
        late = [await bus.publish("vehicle.registered", {"n": n}) for n in range(3, 5)]
        second = Inbox()
        await bus.subscribe("vehicle.registered", "control", second)
        await second.wait_for(2)
        await bus.idle()
        assert sorted(second.ids) == sorted(late)
    run(scenario)


def test_publish_rejects_what_json_cannot_carry(run):
    async def scenario(bus):
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await bus.publish("telemetry.received", {"at": object()})
        with pytest.raises(TypeError, match="JSON object"):
            await bus.publish("telemetry.received", ["not", "a", "dict"])
        with pytest.raises(ValueError, match="wildcards are for subscribing"):
            await bus.publish("telemetry.>", {})
    run(scenario)


@pytest.mark.parametrize("url", ["", "memory", "redis://127.0.0.1:6379", "nats://", "nats://host:port"])
def test_an_unknown_url_names_the_accepted_forms(url):
    with pytest.raises(ValueError, match=r"memory://.*nats://HOST:PORT"):
        connect_bus(url)


def test_urls_choose_the_bus():
    assert isinstance(connect_bus("memory://"), InProcessBus)
    bus = connect_bus("nats://127.0.0.1:4222", stream="S", prefix="p")
    assert isinstance(bus, NatsBus) and bus.stream == "S" and bus.subject("a.b") == "p.a.b"


def test_unreachable_nats_says_what_to_do():
    bus = connect_bus("nats://127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        asyncio.run(bus.start())
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "nats://127.0.0.1:1" in message
    assert "nats-server -js" in message and "CHARGETWIN_BUS_URL=memory://" in message
