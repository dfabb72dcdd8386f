"""The controller: decides when each car charges. Sans-I/O.

The controller consumes *events* (telemetry readings, results of calls it asked for, driver
preference changes) and produces *actions* (read a car, start or stop charging, wake a car,
notify the driver). It never performs I/O and never reads a clock: ``now`` is passed to
:meth:`Controller.step`. A host (the SimPy driver in the twin, an asyncio task in the live
server) runs the loop::

    actions = controller.step(now, events)
    ... execute each action against an OEM adapter, turn each outcome into an event ...
    sleep until controller.wake_at or until new events arrive

Decision-making that must behave the same in the twin and live lives here: when to poll,
whether a car should be charging, retries with back-off after a failed call, honouring a
rate limit's Retry-After.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Protocol

from twin.battery import ChargeCurve
from twin.domain import Preferences
from twin.oem import OEMError, RateLimited, VehicleReading

__all__ = [
    "Controller",
    "ControllerConfig",
    "Policy",
    "Uncontrolled",
    "VehicleTrack",
    # events
    "Telemetry",
    "CallSucceeded",
    "CallFailed",
    "PreferencesChanged",
    # actions
    "Action",
    "Read",
    "StartCharging",
    "StopCharging",
    "Wake",
]

# SoC differences below this are treated as "at target". OEMs report SoC in 1 % steps at best,
# so anything finer than a tenth of that is noise, not unmet demand.
SOC_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Actions (controller -> host)


_action_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the host must do. ``id`` ties the outcome event back to it."""

    vehicle_id: str
    id: int = field(default_factory=lambda: next(_action_ids), compare=False)

    kind = "action"


@dataclass(frozen=True, slots=True)
class Read(Action):
    """Read the car's state through its OEM cloud."""

    kind = "read"


@dataclass(frozen=True, slots=True)
class StartCharging(Action):
    kind = "start"


@dataclass(frozen=True, slots=True)
class StopCharging(Action):
    kind = "stop"


@dataclass(frozen=True, slots=True)
class Wake(Action):
    kind = "wake"


# --------------------------------------------------------------------------------------------
# Events (host -> controller)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A reading pushed by the OEM cloud (webhook) or returned by a :class:`Read`."""

    reading: VehicleReading


@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """``action`` completed. For a :class:`Read`, ``reading`` is what came back."""

    action: Action
    reading: VehicleReading | None = None


@dataclass(frozen=True, slots=True)
class CallFailed:
    """``action`` raised ``error`` (one of the typed OEM errors)."""

    action: Action
    error: OEMError


@dataclass(frozen=True, slots=True)
class PreferencesChanged:
    vehicle_id: str
    preferences: Preferences


Event = Telemetry | CallSucceeded | CallFailed | PreferencesChanged


# --------------------------------------------------------------------------------------------
# Per-vehicle state


class VehicleTrack:
    """What the controller believes about one car."""

    __slots__ = (
        "vehicle_id",
        "curve",
        "preferences",
        "pushes",
        "plugged_in",
        "charging",
        "soc",
        "soc_at",
        "session_started",
        "deadline",
        "pending",
        "attempts",
        "not_before",
        "next_poll",
    )

    def __init__(self, vehicle_id: str, curve: ChargeCurve, preferences: Preferences, pushes: bool):
        self.vehicle_id = vehicle_id
        self.curve = curve
        self.preferences = preferences
        self.pushes = pushes
        self.plugged_in = False
        self.charging = False
        self.soc: float | None = None
        self.soc_at: datetime | None = None
        self.session_started: datetime | None = None
        self.deadline: datetime | None = None
        #: the action in flight for this car (one at a time: OEM clouds serialise per car)
        self.pending: Action | None = None
        #: consecutive failed attempts of the current command, for back-off
        self.attempts = 0
        #: no call to this car before this time (back-off / Retry-After)
        self.not_before: datetime | None = None
        self.next_poll: datetime | None = None

    def needs_charge(self) -> bool:
        return self.soc is not None and self.soc < self.preferences.target_soc - SOC_TOLERANCE


class Policy(Protocol):
    """Decides whether a plugged-in car should be charging."""

    name: str

    def wants_charging(self, now: datetime, track: VehicleTrack) -> bool: ...


class Uncontrolled:
    """Charge on plug-in until the target, as a car does without smart charging."""

    name = "uncontrolled"

    def wants_charging(self, now: datetime, track: VehicleTrack) -> bool:
        return track.plugged_in and track.needs_charge()


@dataclass(frozen=True)
class ControllerConfig:
    """Tunables of the control loop.

    ``poll_interval_s``: how often to read a car whose OEM does not push telemetry.
    ``retry_base_s``/``retry_max_s``: exponential back-off after a failed call.
    """

    # A D2V platform that polls has to notice a plug-in within a settlement slot to plan it;
    # 15 min is the usual compromise between that and per-vehicle data-call quotas (Tesla's
    # historical limit was one data request per car per 5 min).
    poll_interval_s: float = 900.0
    retry_base_s: float = 30.0
    # Beyond ~30 min a retry no longer helps within a typical overnight window; the car is
    # re-read on the next poll anyway.
    retry_max_s: float = 1800.0
    max_attempts: int = 6


class Controller:
    """Fleet controller. See the module docstring for the loop it expects to be hosted in."""

    def __init__(self, policy: Policy, config: ControllerConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ControllerConfig()
        self.tracks: dict[str, VehicleTrack] = {}
        # (time, seq, vehicle_id): cars to look at again at a given time (polls, retries)
        self._timers: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()
        self._dirty: set[str] = set()

    # -- registration -------------------------------------------------------------------------

    def register(
        self, vehicle_id: str, curve: ChargeCurve, preferences: Preferences, *, pushes: bool = True
    ) -> None:
        """Start managing a car. ``pushes``: its OEM pushes telemetry (otherwise we poll)."""
        if vehicle_id in self.tracks:
            raise ValueError(f"vehicle {vehicle_id} is already registered")
        self.tracks[vehicle_id] = VehicleTrack(vehicle_id, curve, preferences, pushes)
        self._dirty.add(vehicle_id)

    # -- the loop -----------------------------------------------------------------------------

    @property
    def wake_at(self) -> datetime | None:
        """When the host must call :meth:`step` again even if no event arrives."""
        return self._timers[0][0] if self._timers else None

    def step(self, now: datetime, events: Iterable[Event] = ()) -> list[Action]:
        """Consume ``events`` observed up to ``now`` and return the actions to execute now."""
        for event in events:
            self._apply(now, event)
        timers = self._timers
        while timers and timers[0][0] <= now:
            self._dirty.add(heapq.heappop(timers)[2])
        actions: list[Action] = []
        dirty, self._dirty = self._dirty, set()
        for vid in sorted(dirty):
            action = self._decide(now, self.tracks[vid])
            if action is not None:
                actions.append(action)
        return actions

    # -- events -------------------------------------------------------------------------------

    def _apply(self, now: datetime, event: Event) -> None:
        if isinstance(event, Telemetry):
            self._observe(now, event.reading)
        elif isinstance(event, CallSucceeded):
            track = self._track(event.action.vehicle_id)
            if track.pending is not None and track.pending.id == event.action.id:
                track.pending = None
            track.attempts = 0
            if isinstance(event.action, StartCharging):
                track.charging = True
            elif isinstance(event.action, StopCharging):
                track.charging = False
            if event.reading is not None:
                self._observe(now, event.reading)
            self._dirty.add(track.vehicle_id)
        elif isinstance(event, CallFailed):
            track = self._track(event.action.vehicle_id)
            if track.pending is not None and track.pending.id == event.action.id:
                track.pending = None
            track.attempts += 1
            delay = self._backoff(track.attempts, event.error)
            track.not_before = now + timedelta(seconds=delay)
            self._at(track.not_before, track.vehicle_id)
        elif isinstance(event, PreferencesChanged):
            track = self._track(event.vehicle_id)
            track.preferences = event.preferences
            self._dirty.add(track.vehicle_id)
        else:
            raise TypeError(f"controller cannot handle event {event!r}")

    def _observe(self, now: datetime, reading: VehicleReading) -> None:
        track = self._track(reading.vehicle_id)
        if track.soc_at is not None and reading.taken_at < track.soc_at:
            return  # older than what we already know (out-of-order delivery)
        if reading.plugged_in and not track.plugged_in:
            track.session_started = reading.taken_at
            track.deadline = track.preferences.deadline(reading.taken_at)
        elif not reading.plugged_in and track.plugged_in:
            track.session_started = None
            track.deadline = None
            # the one-off ready-by applied to the session that just ended
            if track.preferences.ready_by_at is not None:
                track.preferences = Preferences(
                    track.preferences.ready_by, track.preferences.target_soc, track.preferences.min_soc
                )
        track.plugged_in = reading.plugged_in
        track.charging = reading.charging
        if reading.soc is not None:
            track.soc = reading.soc
        track.soc_at = reading.taken_at
        if not track.pushes:
            track.next_poll = now + timedelta(seconds=self.config.poll_interval_s)
            self._at(track.next_poll, track.vehicle_id)
        self._dirty.add(track.vehicle_id)

    # -- decisions ----------------------------------------------------------------------------

    def _decide(self, now: datetime, track: VehicleTrack) -> Action | None:
        if track.pending is not None:
            return None
        if track.not_before is not None and now < track.not_before:
            return None
        if track.soc_at is None or (not track.pushes and track.next_poll is not None and now >= track.next_poll):
            return self._issue(track, Read(track.vehicle_id))
        if not track.plugged_in:
            return None
        if track.attempts >= self.config.max_attempts:
            # our picture of the car is probably wrong: re-read it before commanding again
            track.attempts = 0
            return self._issue(track, Read(track.vehicle_id))
        want = self.policy.wants_charging(now, track)
        if want and not track.charging:
            return self._issue(track, StartCharging(track.vehicle_id))
        if not want and track.charging:
            return self._issue(track, StopCharging(track.vehicle_id))
        return None

    def _issue(self, track: VehicleTrack, action: Action) -> Action:
        track.pending = action
        return action

    def _backoff(self, attempts: int, error: OEMError) -> float:
        delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** (attempts - 1))
        if isinstance(error, RateLimited):
            delay = max(delay, error.retry_after_s)
        return delay

    # -- helpers ------------------------------------------------------------------------------

    def _track(self, vehicle_id: str) -> VehicleTrack:
        try:
            return self.tracks[vehicle_id]
        except KeyError:
            raise KeyError(f"vehicle {vehicle_id} is not registered with the controller") from None

    def _at(self, when: datetime, vehicle_id: str) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), vehicle_id))
