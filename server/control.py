"""The hosted controller: the twin's control path, live.

:class:`ControlService` builds the controller with :func:`twin.control.build_controller` (the
composition the twin uses) and runs it on :class:`twin.host.aio.AsyncDriver` with planning on a
worker thread, reaching cars through the OEM heads (``adapters/<oem>/``). It is a pipeline
stage: it consumes ``vehicle.registered``, ``vehicle.unregistered``, ``preferences.changed``,
``telemetry.received`` and ``forecast.updated`` events from the bus, and publishes
``command.sent``, ``command.finished`` and ``notification.created`` for the recording and
driver-information stages.

Vehicle ids in the controller are the OEM's own (a Smartcar vehicle id, a Tesla VIN): they are
what the heads address; the server's database keeps its own row ids beside them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import pandas as pd

from twin.battery import ChargeCurve
from twin.control import ControlSettings, ForecastUpdated, ManagedVehicle, build_controller
from twin.control.events import Action, Notify, PreferencesChanged, Telemetry
from twin.domain import Preferences
from twin.host.aio import AsyncDriver
from twin.oem import VehicleReading

__all__ = ["ControlService", "VehicleSpec", "reading_from_event", "reading_to_event"]

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

    def curve(self) -> ChargeCurve:
        return ChargeCurve(battery_kwh=self.battery_kwh, charger_kw=self.max_kw, vehicle_kw=self.max_kw,
                           efficiency=0.9, knee_soc=0.8, floor_kw=min(2.0, self.max_kw))


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
                 slot_minutes: int = 30, snapshot: dict[str, Any] | None = None) -> None:
        self.heads = heads
        self.clock = clock
        self._publish = publish
        self.settings = ControlSettings(slot_minutes=slot_minutes)
        self.controller = build_controller([], {}, self.settings, policy, {}, snapshot=snapshot)
        for head in heads.values():
            self.controller.set_rate_limits(getattr(head, "name", "oem"), tuple(head.rate_limits))
        self.oem_of: dict[str, str] = {}
        #: OEM vehicle id -> the server's vehicle row id
        self.row_of: dict[str, str] = {}
        self.driver = _Driver(self, self.controller, {}, clock, sink=self._row, on_notify=self._notify,
                              planning="thread")
        for head in heads.values():
            head.subscribe(self.driver._on_push)
        self.last_command: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()

    # -- the stage's inputs -------------------------------------------------------------------

    def register(self, spec: VehicleSpec) -> None:
        """Start managing a car (idempotent: a car already managed keeps its state)."""
        if spec.vehicle_id in self.controller.tracks:
            return
        head = self.heads[spec.oem]
        if hasattr(head, "register"):
            head.register(spec.vehicle_id, spec.account_id)
        caps = head.capabilities(spec.vehicle_id)
        self.controller.register(ManagedVehicle(spec.vehicle_id, spec.curve(), caps, spec.account_id,
                                                getattr(head, "name", spec.oem)), spec.preferences)
        self.driver.adapters[spec.vehicle_id] = head
        self.oem_of[spec.vehicle_id] = spec.oem
        self.driver._wake_up()

    def unregister(self, vehicle_id: str) -> None:
        self.controller.unregister(vehicle_id)
        self.driver.adapters.pop(vehicle_id, None)
        self.oem_of.pop(vehicle_id, None)

    def preferences(self, vehicle_id: str, preferences: Preferences) -> None:
        self.driver.deliver(PreferencesChanged(vehicle_id, preferences))

    def telemetry(self, reading: VehicleReading) -> None:
        self.driver.deliver(Telemetry(reading))

    def forecast(self, frame: pd.DataFrame) -> None:
        self.driver.deliver(ForecastUpdated(frame, self.settings.slot_minutes))

    async def on_event(self, topic: str, event: dict[str, Any]) -> None:
        """One bus event for this stage."""
        if topic == "vehicle.registered":
            self.row_of[event["oem_vehicle_id"]] = event.get("vehicle", event["oem_vehicle_id"])
            self.register(VehicleSpec(event["oem_vehicle_id"], event["oem"], event["account_id"],
                                      float(event.get("battery_kwh", 60.0)), float(event.get("max_kw", 7.4)),
                                      _preferences(event.get("preferences"))))
        elif topic == "vehicle.unregistered":
            self.unregister(event["oem_vehicle_id"])
        elif topic == "preferences.changed":
            self.preferences(event["oem_vehicle_id"], _preferences(event["preferences"]))
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
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        return self.controller.snapshot()

    # -- what the driver sees -----------------------------------------------------------------

    def status(self, vehicle_id: str) -> dict[str, Any] | None:
        """The car as the controller knows it now (None when it is not managed)."""
        track = self.controller.tracks.get(vehicle_id)
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
            "last_command": self.last_command.get(vehicle_id),
            "escalated": escalated,
            "disobeyed_stops": track.disobeyed,
        }

    def plan(self, vehicle_id: str) -> list[dict[str, Any]] | None:
        track = self.controller.tracks.get(vehicle_id)
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
        self._emit("command.sent", {"command_id": action.id, "vehicle": self.row_of.get(vid, vid), "oem_vehicle_id": vid,
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
        body["oem"] = self.oem_of.get(action.vehicle_id)
        self._emit("notification.created", body)


def _preferences(data: dict[str, Any] | None) -> Preferences:
    if not data:
        return Preferences()
    ready = data.get("ready_by_at")
    return Preferences(time.fromisoformat(data.get("ready_by", "07:00")), float(data.get("target_soc", 0.8)),
                       float(data.get("min_soc", 0.0)), None if not ready else datetime.fromisoformat(ready))


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


#: how far ahead the built-in forecast reaches
FORECAST_HORIZON = timedelta(hours=48)
