"""The hosted controller: the twin's control path, live.

:class:`ControlService` builds the controller with :func:`twin.control.build_controller` (the
composition the twin uses) and runs it on :class:`twin.host.aio.AsyncDriver` with planning on a
worker thread, reaching cars through the OEM heads (``adapters/<oem>/``). It is a pipeline
stage: it consumes ``vehicle.registered``, ``vehicle.unregistered``, ``preferences.changed``,
``telemetry.received`` and ``forecast.updated`` events from the bus, and publishes
``command.sent``, ``command.finished`` and ``notification.created`` for the recording and
driver-information stages.

Vehicle ids in the controller are ``"<oem>:<the OEM's id>"`` (``tesla:5YJ3...``): two OEMs may
use the same id, and the controller keys everything by vehicle id. Each head is reached through
a thin wrapper that strips the prefix on the way out and adds it to readings on the way in; the
server's database keeps its own row ids beside them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, time
from typing import Any

import pandas as pd

from twin.battery import ChargeCurve
from twin.control import ControlSettings, ForecastUpdated, ManagedVehicle, build_controller
from twin.control.events import Action, Notify, PreferencesChanged, Telemetry
from twin.domain import Preferences
from twin.host.aio import AsyncDriver
from twin.oem import VehicleReading

__all__ = ["ControlService", "VehicleSpec", "key_of", "preferences_from_event", "reading_from_event",
           "reading_to_event", "split_key"]

log = logging.getLogger("server.control")

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class VehicleSpec:
    """What the controller needs to manage a car."""

    vehicle_id: str  # the OEM's id
    oem: str
    account_id: str
    battery_kwh: float = 60.0
    max_kw: float = 7.4
    preferences: Preferences = Preferences()

    @property
    def key(self) -> str:
        """The controller's id of the car."""
        return key_of(self.oem, self.vehicle_id)

    def curve(self) -> ChargeCurve:
        return ChargeCurve(battery_kwh=self.battery_kwh, charger_kw=self.max_kw, vehicle_kw=self.max_kw,
                           efficiency=0.9, knee_soc=0.8, floor_kw=min(2.0, self.max_kw))


def key_of(oem: str, vehicle_id: str) -> str:
    return f"{oem}:{vehicle_id}"


def split_key(key: str) -> tuple[str, str]:
    oem, _, vehicle_id = key.partition(":")
    return oem, vehicle_id


class _Namespaced:
    """A head as the controller sees it: vehicle ids carry the OEM's name (see module docstring)."""

    def __init__(self, head: Any, oem: str) -> None:
        self.head, self.oem = head, oem
        self.name = getattr(head, "name", oem)
        self.rate_limits = tuple(head.rate_limits)

    def _id(self, key: str) -> str:
        return split_key(key)[1]

    def _reading(self, r: VehicleReading) -> VehicleReading:
        return replace(r, vehicle_id=key_of(self.oem, r.vehicle_id))

    def capabilities(self, key: str):
        return self.head.capabilities(self._id(key))

    async def read(self, key: str) -> VehicleReading:
        return self._reading(await self.head.read(self._id(key)))

    async def start_charging(self, vehicle: str, **kw: Any) -> None:
        await self.head.start_charging(self._id(vehicle), **kw)

    async def stop_charging(self, vehicle: str, **kw: Any) -> None:
        await self.head.stop_charging(self._id(vehicle), **kw)

    async def set_charging_current(self, vehicle: str, amps: float, **kw: Any) -> None:
        await self.head.set_charging_current(self._id(vehicle), amps, **kw)

    async def set_charge_limit(self, vehicle: str, soc: float, **kw: Any) -> None:
        await self.head.set_charge_limit(self._id(vehicle), soc, **kw)

    async def wake(self, key: str) -> None:
        await self.head.wake(self._id(key))

    def subscribe(self, sink) -> None:
        self.head.subscribe(lambda r: sink(self._reading(r)))


def reading_to_event(r: VehicleReading) -> dict[str, Any]:
    return {"vehicle_id": r.vehicle_id, "taken_at": r.taken_at.isoformat(), "soc": r.soc,
            "plugged_in": r.plugged_in, "charging": r.charging}


def reading_from_event(e: dict[str, Any]) -> VehicleReading:
    return VehicleReading(str(e["vehicle_id"]), datetime.fromisoformat(e["taken_at"]),
                          None if e["soc"] is None else float(e["soc"]), bool(e["plugged_in"]), bool(e["charging"]))


class _Driver(AsyncDriver):
    """The asyncio host, telling the service of each call it starts and finishes (with the
    action id: the command's idempotency key, which the commands table is keyed by)."""

    def __init__(self, service: ControlService, *args: Any, **kwargs: Any) -> None:
        self.service = service
        super().__init__(*args, **kwargs)

    def _start_call(self, action: Action) -> None:
        self.service._sent(action)
        super()._start_call(action)

    def _done(self, action: Action, value: Any, error: BaseException | None) -> None:
        super()._done(action, value, error)
        self.service._finished(action, error)


class ControlService:
    """The controller on the asyncio host, fed by events and talking to cars through ``heads``
    (OEM name -> adapter). ``clock`` is the host's clock (wall time live; the emulators' clock
    in the demo). ``publish(topic, event)`` takes what this stage emits."""

    def __init__(self, heads: dict[str, Any], clock, publish: Publish, *, policy: str = "smart",
                 slot_minutes: int = 30, vehicles: list[tuple[str, VehicleSpec]] = (),
                 snapshot: dict[str, Any] | None = None) -> None:
        self.heads = heads
        self.clock = clock
        self._publish = publish
        self.settings = ControlSettings(slot_minutes=slot_minutes)
        self.oem_of: dict[str, str] = {}
        #: OEM vehicle id -> the server's vehicle row id
        self.row_of: dict[str, str] = {}
        self.wrapped = {oem: _Namespaced(head, oem) for oem, head in heads.items()}
        managed, adapters = [], {}
        for row_id, spec in vehicles:  # the cars the database knows (a restart)
            head = heads.get(spec.oem)
            if head is None:
                log.error("vehicle %s: OEM %s is not configured; it is not controlled", spec.vehicle_id, spec.oem)
                continue
            if hasattr(head, "register"):
                head.register(spec.vehicle_id, spec.account_id)
            managed.append(ManagedVehicle(spec.key, spec.curve(), account_id=spec.account_id))
            adapters[spec.key] = self.wrapped[spec.oem]
            self.oem_of[spec.key] = spec.oem
            self.row_of[spec.key] = row_id
        preferences = {spec.key: spec.preferences for _, spec in vehicles}
        try:
            self.controller = build_controller(managed, preferences, self.settings, policy, adapters, snapshot=snapshot)
        except Exception as exc:  # noqa: BLE001 - a snapshot that does not fit: start afresh, say so
            if snapshot is None:
                raise
            log.error("the saved controller state could not be restored (%s); starting from the database", exc)
            self.controller = build_controller(managed, preferences, self.settings, policy, adapters)
        for head in heads.values():
            self.controller.set_rate_limits(getattr(head, "name", "oem"), tuple(head.rate_limits))
        self.driver = _Driver(self, self.controller, dict(adapters), clock, sink=self._row, on_notify=self._notify,
                              planning="thread")
        for wrapper in self.wrapped.values():
            if wrapper not in adapters.values():  # the host subscribed the heads it was given
                wrapper.subscribe(self.driver._on_push)
        self.last_command: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()

    # -- the stage's inputs -------------------------------------------------------------------

    def register(self, spec: VehicleSpec) -> None:
        """Start managing a car (idempotent: a car already managed keeps its state)."""
        if spec.key in self.controller.tracks:
            return
        head = self.heads[spec.oem]
        if hasattr(head, "register"):
            head.register(spec.vehicle_id, spec.account_id)
        caps = head.capabilities(spec.vehicle_id)
        self.controller.register(ManagedVehicle(spec.key, spec.curve(), caps, spec.account_id,
                                                getattr(head, "name", spec.oem)), spec.preferences)
        self.driver.adapters[spec.key] = self.wrapped[spec.oem]
        self.oem_of[spec.key] = spec.oem
        self.driver._wake_up()

    def unregister(self, key: str) -> None:
        self.controller.unregister(key)
        self.driver.adapters.pop(key, None)
        self.oem_of.pop(key, None)

    def preferences(self, key: str, preferences: Preferences) -> None:
        self.driver.deliver(PreferencesChanged(key, preferences))

    def telemetry(self, reading: VehicleReading) -> None:
        self.driver.deliver(Telemetry(reading))

    def forecast(self, frame: pd.DataFrame) -> None:
        self.driver.deliver(ForecastUpdated(frame, self.settings.slot_minutes))

    async def on_event(self, topic: str, event: dict[str, Any]) -> None:
        """One bus event for this stage."""
        if topic == "vehicle.registered":
            self.row_of[key_of(event["oem"], event["oem_vehicle_id"])] = event.get("vehicle", event["oem_vehicle_id"])
            self.register(VehicleSpec(event["oem_vehicle_id"], event["oem"], event["account_id"],
                                      float(event.get("battery_kwh", 60.0)), float(event.get("max_kw", 7.4)),
                                      preferences_from_event(event.get("preferences"))))
        elif topic == "vehicle.unregistered":
            self.unregister(key_of(event["oem"], event["oem_vehicle_id"]))
        elif topic == "preferences.changed":
            self.preferences(key_of(event["oem"], event["oem_vehicle_id"]), preferences_from_event(event["preferences"]))
        elif topic == "telemetry.received":
            self.telemetry(reading_from_event(event))

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.driver.run(), name="controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._pending:  # the events emitted so far reach the bus (bounded: never hang a shutdown)
            await asyncio.wait(list(self._pending), timeout=10.0)

    def snapshot(self) -> dict[str, Any]:
        return self.controller.snapshot()

    # -- what the driver sees -----------------------------------------------------------------

    def status(self, oem: str, vehicle_id: str) -> dict[str, Any] | None:
        """The car as the controller knows it now (None when it is not managed)."""
        key = key_of(oem, vehicle_id)
        track = self.controller.tracks.get(key)
        if track is None:
            return None
        now = self.clock.now()
        plan = track.plan
        next_start = None
        if plan is not None:
            for i, kw in enumerate(plan.levels_kw):
                at = plan.first + i * plan.slot
                if kw > 0 and at + plan.slot > now:
                    next_start = max(at, now)
                    break
        escalated = track.vehicle_id in self.controller._escalations
        return {
            "soc": track.soc,
            "soc_measured_at": _iso(track.soc_at),
            "soc_age_s": None if track.soc_at is None else round((now - track.soc_at).total_seconds(), 1),
            "soc_estimate": None if track.est_at is None else track.soc_estimate(now),
            "plugged_in": track.plugged_in,
            "charging": track.charging,
            "session": track.session.name.lower(),
            "ready_by": _iso(track.deadline),
            "target_soc": track.preferences.target_soc,
            "next_charge_start": _iso(next_start),
            "expected_soc_at_ready_by": None if plan is None else plan.expected_soc,
            "last_command": self.last_command.get(key),
            "escalated": escalated,
            "disobeyed_stops": track.disobeyed,
        }

    def plan(self, oem: str, vehicle_id: str) -> list[dict[str, Any]] | None:
        track = self.controller.tracks.get(key_of(oem, vehicle_id))
        if track is None:
            return None
        plan = track.plan
        if plan is None:
            return []
        return [{"slot_start": (plan.first + i * plan.slot).isoformat(), "kw": kw}
                for i, kw in enumerate(plan.levels_kw)]

    # -- the stage's outputs ------------------------------------------------------------------

    def _emit(self, topic: str, event: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(topic, event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _sent(self, action: Action) -> None:
        when = self.clock.now().isoformat()
        vid = action.vehicle_id
        self.last_command[vid] = {"id": action.id, "command": action.describe(), "sent_at": when, "outcome": None}
        self._emit("command.sent", {"command_id": action.id, "vehicle": self.row_of.get(vid, vid),
                                    "oem_vehicle_id": split_key(vid)[1],
                                    "kind": action.kind, "detail": action.describe(), "at": when})

    def _finished(self, action: Action, error: BaseException | None) -> None:
        when = self.clock.now().isoformat()
        outcome = "ok" if error is None else type(error).__name__
        last = self.last_command.get(action.vehicle_id)
        if last is not None and last.get("id") == action.id:
            last.update(outcome=outcome, finished_at=when, error=None if error is None else str(error))
        self._emit("command.finished", {"command_id": action.id, "outcome": outcome,
                                        "error": None if error is None else str(error), "at": when})

    def _row(self, row) -> None:
        seconds, vehicle_id, kind, detail = row
        when = self.clock.at(seconds).isoformat()
        if kind in ("verify", "escalation"):
            last = self.last_command.get(vehicle_id)
            if last is not None and kind == "verify":
                last["verified"] = detail
            self._emit(f"vehicle.{kind}", {"vehicle_id": vehicle_id, "detail": detail, "at": when})
        log.debug("%.3f %s %s %s", *row)

    def _notify(self, action: Action) -> None:
        assert isinstance(action, Notify)
        body = action.to_json()
        body["notice"] = body.pop("topic")  # plan, plan_changed, escalated, reauthorize, unregistered
        body["oem"], body["vehicle_id"] = split_key(action.vehicle_id)
        self._emit("notification.created", body)


def preferences_from_event(data: dict[str, Any] | None) -> Preferences:
    """The controller's preferences from a registration or preferences event."""
    if not data:
        return Preferences()
    ready = data.get("ready_by_at")
    return Preferences(time.fromisoformat(data.get("ready_by", "07:00")), float(data.get("target_soc", 0.8)),
                       float(data.get("min_soc", 0.0)), None if not ready else datetime.fromisoformat(ready))


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()

