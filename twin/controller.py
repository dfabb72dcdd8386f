"""The controller: decides when each car charges. Sans-I/O.

The controller consumes *events* (telemetry readings, outcomes of calls it asked for, driver
preference changes, new price/carbon forecasts) and produces *actions* (read a car, start or
stop charging, wake a car, refresh its token, notify the driver). It never performs I/O and
never reads a clock: ``now`` is passed to :meth:`Controller.step`. A host (the SimPy driver in
the twin, the asyncio driver live) runs the loop::

    actions = controller.step(now, events)
    ... execute each action, turn each outcome into an event ...
    sleep until controller.wake_at or until new events arrive

Everything that must behave the same in the twin and live is decided here:

* **sessions**: a reading that shows the car newly plugged in starts a session (deadline from
  the driver's preferences), an unplugged one ends it;
* **planning**: the policy (:class:`Uncontrolled`, or a plan-following policy such as
  :class:`twin.policies.Smart`) is asked to plan on plug-in, when a reading deviates from what
  the plan expected, when a new forecast arrives and when preferences change; commands follow
  the plan's slot boundaries;
* **calls**: one call in flight per car; a failed call is retried with exponential back-off,
  a rate limit's Retry-After is honoured, an asleep car is woken first, an expired token is
  refreshed first;
* **verification**: every acknowledged start/stop is checked against a later reading taken
  after it; a car that keeps charging after "stop" is told again, and after
  ``escalate_after`` disobediences it is *escalated*: recorded, the driver notified, and from
  then on treated as uncontrollable load for the rest of the session;
* **estimation**: between readings the SoC is estimated from what the car was told to do,
  along its charging curve;
* **call budget**: cars whose cloud pushes telemetry are read only to verify commands, to
  check once before the deadline and after a failure; polled cars are read every
  ``poll_interval_s`` while unplugged and every ``plugged_poll_interval_s`` while plugged in;
* **notifications**: at plug-in the driver is told when charging will start and the SoC
  expected at ready-by, and again whenever that moves materially.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Protocol

import pandas as pd

from twin.battery import ChargeCurve
from twin.domain import Preferences
from twin.oem import AuthExpired, OEMError, RateLimited, VehicleAsleep, VehicleReading

__all__ = [
    "Controller",
    "ControllerConfig",
    "Policy",
    "Uncontrolled",
    "VehicleTrack",
    "SessionPlan",
    "SOC_TOLERANCE",
    # events
    "Telemetry",
    "CallSucceeded",
    "CallFailed",
    "PreferencesChanged",
    "ForecastUpdated",
    # actions
    "Action",
    "Read",
    "StartCharging",
    "StopCharging",
    "Wake",
    "RefreshAuth",
    "Notify",
]

# SoC differences below this are treated as "at target". OEMs report SoC in 1 % steps at best,
# so anything finer than a tenth of that is noise, not unmet demand.
SOC_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Actions (controller -> host)


_action_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the host must do. ``id`` ties the outcome event back to it.

    ``method`` names the :class:`~twin.oem.OEMAdapter` coroutine that performs it (called with
    the vehicle id); actions with ``method = None`` are not OEM calls.
    """

    vehicle_id: str
    id: int = field(default_factory=lambda: next(_action_ids), compare=False)

    kind: ClassVar[str] = "action"
    method: ClassVar[str | None] = None

    def describe(self) -> str:
        """One line for event logs."""
        return self.kind


@dataclass(frozen=True, slots=True)
class Read(Action):
    """Read the car's state through its OEM cloud."""

    kind: ClassVar[str] = "read"
    method: ClassVar[str | None] = "read"


@dataclass(frozen=True, slots=True)
class StartCharging(Action):
    kind: ClassVar[str] = "start"
    method: ClassVar[str | None] = "start_charging"


@dataclass(frozen=True, slots=True)
class StopCharging(Action):
    kind: ClassVar[str] = "stop"
    method: ClassVar[str | None] = "stop_charging"


@dataclass(frozen=True, slots=True)
class Wake(Action):
    kind: ClassVar[str] = "wake"
    method: ClassVar[str | None] = "wake"


@dataclass(frozen=True, slots=True)
class RefreshAuth(Action):
    kind: ClassVar[str] = "refresh_auth"
    method: ClassVar[str | None] = "refresh_auth"


@dataclass(frozen=True, slots=True)
class Notify(Action):
    """Tell the driver (and operations) something. Not an OEM call.

    ``topic``: ``plan`` (at plug-in), ``plan_changed``, or ``escalated``.
    """

    topic: str = "plan"
    charge_start_at: datetime | None = None
    expected_soc: float | None = None
    ready_by: datetime | None = None
    message: str = ""

    kind: ClassVar[str] = "notify"

    def describe(self) -> str:
        parts = [self.topic]
        if self.charge_start_at is not None:
            parts.append(f"start={self.charge_start_at.isoformat()}")
        if self.expected_soc is not None:
            parts.append(f"expected_soc={self.expected_soc:.4f}")
        if self.ready_by is not None:
            parts.append(f"ready_by={self.ready_by.isoformat()}")
        if self.message:
            parts.append(self.message)
        return " ".join(parts)


COMMANDS = (StartCharging, StopCharging)


# --------------------------------------------------------------------------------------------
# Events (host -> controller)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A reading pushed by the OEM cloud (webhook)."""

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


@dataclass(frozen=True, slots=True)
class ForecastUpdated:
    """New price/carbon forecasts: ``frame`` indexed by UTC slot start with columns
    ``price_gbp_per_kwh`` and ``carbon_g_per_kwh`` (what is now expected for those slots)."""

    frame: pd.DataFrame
    slot_minutes: int


Event = Telemetry | CallSucceeded | CallFailed | PreferencesChanged | ForecastUpdated


# --------------------------------------------------------------------------------------------
# Plans and per-vehicle state


@dataclass(frozen=True)
class SessionPlan:
    """When a car should charge: ``on[i]`` for the slot starting at ``starts[i]`` (UTC).

    The last slot ends at ``end``. ``expected_soc`` is the SoC the plan reaches by ready-by.
    """

    starts: tuple[datetime, ...]
    on: tuple[bool, ...]
    end: datetime
    expected_soc: float

    def on_at(self, now: datetime) -> bool:
        i = bisect_right(self.starts, now) - 1
        return 0 <= i < len(self.on) and now < self.end and self.on[i]

    def next_change(self, now: datetime) -> datetime | None:
        """The next slot boundary after ``now`` where the plan switches on or off."""
        current = self.on_at(now)
        for i in range(bisect_right(self.starts, now), len(self.starts)):
            if self.on[i] != current:
                return self.starts[i]
        return self.end if current and now < self.end else None

    def on_since(self, now: datetime) -> datetime | None:
        """Start of the run of on-slots that contains ``now`` (None if the plan is off now)."""
        i = bisect_right(self.starts, now) - 1
        if not (0 <= i < len(self.on)) or not self.on[i] or now >= self.end:
            return None
        while i > 0 and self.on[i - 1]:
            i -= 1
        return self.starts[i]

    @property
    def charge_start_at(self) -> datetime | None:
        for start, on in zip(self.starts, self.on):
            if on:
                return start
        return None


class VehicleTrack:
    """What the controller believes about one car."""

    __slots__ = (
        "vehicle_id", "curve", "preferences", "pushes",
        # latest reading
        "plugged_in", "charging", "soc", "soc_at",
        # estimate anchor: SoC `est_soc` at `est_at`, charging since then if `charging`
        "est_soc", "est_at", "limit",
        # session
        "session_started", "deadline", "plan", "escalated", "disobeyed", "notified",
        # calls
        "pending", "attempts", "not_before", "needs_wake", "needs_auth", "read_due", "check_at",
        "retry_kind", "change_at",
        # last acknowledged command awaiting verification: (charging expected, at, SoC then)
        "expect", "disobeyed_at",
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
        self.est_soc: float | None = None
        self.est_at: datetime | None = None
        #: the car's own charge limit (the target when the session started): it stops there
        self.limit = preferences.target_soc
        self.session_started: datetime | None = None
        self.deadline: datetime | None = None
        self.plan: SessionPlan | None = None
        self.escalated = False
        self.disobeyed = 0
        #: (charge start, expected SoC) last told to the driver
        self.notified: tuple[datetime | None, float] | None = None
        self.pending: Action | None = None
        self.attempts = 0
        self.not_before: datetime | None = None
        self.needs_wake = False
        self.needs_auth = False
        self.read_due: datetime | None = None
        #: one progress check before the deadline (pushed cars are otherwise not read)
        self.check_at: datetime | None = None
        #: kind of the command that last failed or was not obeyed (its re-send is a retry)
        self.retry_kind: str | None = None
        #: when a timer is set for the plan's next switch
        self.change_at: datetime | None = None
        self.expect: tuple[bool, datetime, float | None] | None = None
        #: when the car was first seen charging against an acknowledged stop this session
        self.disobeyed_at: datetime | None = None

    @property
    def target(self) -> float:
        return self.preferences.target_soc

    def soc_estimate(self, now: datetime) -> float | None:
        """SoC now, from the last anchor and whether the car is believed to be charging."""
        if self.est_soc is None or self.est_at is None:
            return None
        if not self.charging or now <= self.est_at:
            return self.est_soc
        soc = self.curve.soc_after(self.est_soc, (now - self.est_at).total_seconds() / 3600.0)
        return min(soc, max(self.limit, self.est_soc))

    def needs_charge(self, now: datetime) -> bool:
        """Below the driver's target (by the estimate)."""
        soc = self.soc_estimate(now)
        return soc is not None and soc < self.target - SOC_TOLERANCE

    def below_limit(self, now: datetime) -> bool:
        """Below the car's own charge limit, so a charging car is still charging."""
        soc = self.soc_estimate(now)
        return soc is not None and soc < self.limit - SOC_TOLERANCE

    def _anchor(self, now: datetime) -> None:
        self.est_soc = self.soc_estimate(now)
        self.est_at = now


class Policy(Protocol):
    """Decides whether a plugged-in car should be charging."""

    name: str

    def replan(self, now: datetime, tracks: Sequence[VehicleTrack],
               fleet: Sequence[VehicleTrack]) -> Sequence[VehicleTrack]:
        """(Re)compute ``track.plan`` for ``tracks``; ``fleet`` is every plugged-in car.

        Returns the tracks whose plans it set (it may re-plan others of ``fleet`` too).
        """
        ...

    def wants_charging(self, now: datetime, track: VehicleTrack) -> bool: ...

    def next_change(self, now: datetime, track: VehicleTrack) -> datetime | None: ...

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        """Take a new forecast; return True if plugged-in cars should be re-planned."""
        ...

    def outlook(self, now: datetime, track: VehicleTrack) -> tuple[datetime | None, float]:
        """(when charging will start, SoC expected at ready-by) for the driver."""
        ...


class Uncontrolled:
    """Charge on plug-in until the target, as a car does without smart charging."""

    name = "uncontrolled"

    def replan(self, now, tracks, fleet):
        return ()

    def wants_charging(self, now: datetime, track: VehicleTrack) -> bool:
        return track.plugged_in and track.needs_charge(now)

    def next_change(self, now: datetime, track: VehicleTrack) -> datetime | None:
        return None

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        return False

    def outlook(self, now: datetime, track: VehicleTrack) -> tuple[datetime | None, float]:
        soc = track.soc_estimate(now) or 0.0
        if track.deadline is None or soc >= track.target - SOC_TOLERANCE:
            return None, soc
        hours = max(0.0, (track.deadline - now).total_seconds() / 3600.0)
        return now, min(track.target, track.curve.soc_after(soc, hours))


@dataclass(frozen=True)
class ControllerConfig:
    """Tunables of the control loop (seconds unless named otherwise)."""

    # A D2V platform that polls must notice a plug-in within a settlement slot to plan it;
    # 15 min is the usual compromise with per-vehicle data quotas (Tesla's historical limit was
    # one data request per car per 5 min; Smartcar asks for no more than needed).
    poll_interval_s: float = 900.0
    # Once plugged in, a polled car only needs checking for departure and progress.
    plugged_poll_interval_s: float = 1800.0
    retry_base_s: float = 30.0
    # Beyond ~30 min a retry no longer helps within a typical overnight window.
    retry_max_s: float = 1800.0
    # Commands take effect within seconds to a couple of minutes; clouds cache readings for
    # minutes. Ten minutes lets a fresh reading exist before we judge the car.
    verify_after_s: float = 600.0
    # A car that ignored "stop" twice is not going to obey a third time soon (it is the model,
    # or the car's own schedule overrides the API); further commands only burn quota.
    escalate_after: int = 2
    # Re-plan when a reading differs from the estimate by more than this (SoC fraction): above
    # the 1 % reporting step of most clouds plus estimation error over an hour.
    replan_soc_deviation: float = 0.03
    # A car that disobeyed a stop and cannot be confirmed stopped this long afterwards (reads
    # failing, quota exhausted) is escalated anyway: it may be charging against the plan.
    escalate_within_s: float = 1800.0
    # A start that lands this much after its slot began has cost charge the plan counted on.
    replan_late_s: float = 120.0
    # One check read this long before the deadline catches a plan that is falling behind.
    check_before_deadline_s: float = 3600.0
    # Tell the driver again when the start time moves by this much or the expected SoC by 5 %.
    notify_shift_s: float = 1800.0
    notify_soc_shift: float = 0.05


class _Fleet(Sequence[VehicleTrack]):
    """The plugged-in cars, sorted by id, built only if a policy looks at them."""

    def __init__(self, tracks: dict[str, VehicleTrack], ids: set[str]) -> None:
        self._tracks, self._ids = tracks, ids
        self._list: list[VehicleTrack] | None = None

    def _items(self) -> list[VehicleTrack]:
        if self._list is None:
            self._list = [self._tracks[v] for v in sorted(self._ids)]
        return self._list

    def __getitem__(self, i):  # type: ignore[override]
        return self._items()[i]

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self):
        return iter(self._items())


class Controller:
    """Fleet controller. See the module docstring for the loop it expects to be hosted in."""

    def __init__(self, policy: Policy, config: ControllerConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ControllerConfig()
        self.tracks: dict[str, VehicleTrack] = {}
        self._timers: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()
        self._dirty: set[str] = set()
        self._replan_all = False
        #: plugged-in cars with a session, and those of them waiting to be (re)planned
        self._plugged: set[str] = set()
        self._to_plan: set[str] = set()
        self._escalations: list[str] = []
        #: counters for KPIs: what happened to commands and cars
        self.stats = {
            "commands_sent": 0, "commands_failed": 0, "commands_retried": 0,
            "commands_verified": 0, "commands_unverified": 0, "disobeyed": 0,
            "escalations": 0, "replans": 0, "notifications": 0,
        }

    # -- registration -------------------------------------------------------------------------

    def register(self, vehicle_id: str, curve: ChargeCurve, preferences: Preferences, *, pushes: bool = True) -> None:
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
        for vid in self._dirty:
            self._escalate_if_overdue(now, self.tracks[vid])
        actions: list[Action] = []
        self._plan(now, actions)
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
            self._succeeded(now, event)
        elif isinstance(event, CallFailed):
            self._failed(now, event)
        elif isinstance(event, PreferencesChanged):
            track = self._track(event.vehicle_id)
            track.preferences = event.preferences
            if track.plugged_in and track.session_started is not None:
                track.deadline = event.preferences.deadline(track.session_started)
                self._to_plan.add(track.vehicle_id)
            self._dirty.add(track.vehicle_id)
        elif isinstance(event, ForecastUpdated):
            if self.policy.on_forecast(now, event):
                self._replan_all = True
        else:
            raise TypeError(f"controller cannot handle event {event!r}")

    def _succeeded(self, now: datetime, event: CallSucceeded) -> None:
        action = event.action
        track = self._track(action.vehicle_id)
        if track.pending is not None and track.pending.id == action.id:
            track.pending = None
        self._dirty.add(track.vehicle_id)
        if isinstance(action, Wake):
            track.needs_wake = False
            return
        if isinstance(action, RefreshAuth):
            track.needs_auth = False
            return
        track.attempts = 0
        track.not_before = None
        if isinstance(action, Read):
            track.read_due = None
        if isinstance(action, COMMANDS):
            want = isinstance(action, StartCharging)
            if track.expect is not None:
                self.stats["commands_unverified"] += 1  # superseded before it was checked
            track._anchor(now)
            track.charging = want
            track.expect = (want, now, track.est_soc)
            if want and track.plan is not None:
                # charging started later than planned (failures, wake-ups): plan the rest again
                on_since = track.plan.on_since(now)
                if on_since is not None and (now - on_since).total_seconds() > self.config.replan_late_s:
                    self._to_plan.add(track.vehicle_id)
            self._read_at(track, now + timedelta(seconds=self.config.verify_after_s))
        if event.reading is not None:
            self._observe(now, event.reading)
            if track.expect is not None and track.read_due is None:
                # the reading predates the command (served from a cache): look again later
                self._read_at(track, now + timedelta(seconds=self.config.verify_after_s))

    def _failed(self, now: datetime, event: CallFailed) -> None:
        action, error = event.action, event.error
        track = self._track(action.vehicle_id)
        if track.pending is not None and track.pending.id == action.id:
            track.pending = None
        self._dirty.add(track.vehicle_id)
        if isinstance(action, COMMANDS):
            self.stats["commands_failed"] += 1
            track.retry_kind = action.kind
        if isinstance(error, VehicleAsleep) and not isinstance(action, Wake):
            track.needs_wake = True  # wake first, then decide again
            return
        if isinstance(error, AuthExpired) and not isinstance(action, RefreshAuth):
            track.needs_auth = True
            return
        track.attempts += 1
        delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** (track.attempts - 1))
        if isinstance(error, RateLimited):
            delay = max(delay, error.retry_after_s)
        track.not_before = now + timedelta(seconds=delay)
        self._at(track.not_before, track.vehicle_id)

    def _observe(self, now: datetime, reading: VehicleReading) -> None:
        track = self._track(reading.vehicle_id)
        self._dirty.add(track.vehicle_id)
        known = [t for t in (track.soc_at, track.est_at) if t is not None]
        if known and reading.taken_at < max(known):
            return  # older than what we already know (a cache, or out-of-order delivery)
        if reading.plugged_in and not track.plugged_in:
            self._session_start(now, track, reading)
        elif not reading.plugged_in and track.plugged_in:
            self._session_end(now, track)
        # verification: only a reading taken after the command can judge it
        expect = track.expect
        if expect is not None and reading.taken_at >= expect[1] and reading.plugged_in:
            self._verify(now, track, reading, expect[0], expect[2])
        elif track.plugged_in and reading.plugged_in and reading.soc is not None and track.plan is not None:
            estimate = track.soc_estimate(reading.taken_at)
            if estimate is not None and abs(reading.soc - estimate) > self.config.replan_soc_deviation:
                self._to_plan.add(track.vehicle_id)
        if track.check_at is not None and reading.taken_at >= track.check_at:
            track.check_at = None
        track.plugged_in = reading.plugged_in
        track.charging = reading.charging
        track.soc_at = reading.taken_at
        if reading.soc is not None:
            track.soc = reading.soc
            track.est_soc, track.est_at = reading.soc, reading.taken_at
        if not track.pushes:
            interval = self.config.plugged_poll_interval_s if track.plugged_in else self.config.poll_interval_s
            self._read_at(track, now + timedelta(seconds=interval))

    def _verify(self, now: datetime, track: VehicleTrack, reading: VehicleReading, expected: bool,
                soc_then: float | None) -> None:
        track.expect = None
        if track.pushes:
            track.read_due = None
        # SoC moved by more than one 1 % reporting step (plus slack): the car charged meanwhile
        charged_since = reading.soc is not None and soc_then is not None and reading.soc > soc_then + 0.011
        if not expected and (reading.charging or charged_since):
            # acknowledged "stop", still charging (or charged on and has since stopped at its limit)
            track.retry_kind = "stop"
            track.disobeyed += 1
            self.stats["disobeyed"] += 1
            if track.disobeyed_at is None:
                track.disobeyed_at = now
                self._at(now + timedelta(seconds=self.config.escalate_within_s), track.vehicle_id)
            if track.disobeyed >= self.config.escalate_after:
                self._escalate(track)
            return
        if reading.charging == expected:
            self.stats["commands_verified"] += 1
            track.retry_kind = None
            if not expected:
                track.disobeyed_at = None
            return
        # a reported SoC within one 1 % reporting step of the limit counts as full
        full = reading.soc is not None and reading.soc >= track.limit - max(SOC_TOLERANCE, 0.011)
        if expected and full:
            self.stats["commands_verified"] += 1  # it started, then stopped at its limit
            track.retry_kind = None
            return
        track.retry_kind = "start"

    def _escalate_if_overdue(self, now: datetime, track: VehicleTrack) -> None:
        """A car that disobeyed a stop and is still not confirmed stopped ``escalate_within_s``
        later is escalated: it may be charging against the plan, and we cannot tell."""
        if track.disobeyed_at is None or track.escalated:
            return
        unconfirmed = track.charging or (track.expect is not None and not track.expect[0])
        if unconfirmed and (now - track.disobeyed_at).total_seconds() >= self.config.escalate_within_s:
            self._escalate(track)

    def _escalate(self, track: VehicleTrack) -> None:
        """Record a car that will not obey: notify, and plan it as uncontrollable from now on."""
        if track.escalated:
            return
        track.escalated = True
        self.stats["escalations"] += 1
        self._escalations.append(track.vehicle_id)
        self._to_plan.add(track.vehicle_id)

    def _session_start(self, now: datetime, track: VehicleTrack, reading: VehicleReading) -> None:
        track.session_started = reading.taken_at
        track.deadline = track.preferences.deadline(reading.taken_at)
        track.limit = track.preferences.target_soc
        track.plan = None
        track.escalated = False
        track.disobeyed = 0
        track.disobeyed_at = None
        track.notified = None
        track.expect = None
        self._plugged.add(track.vehicle_id)
        self._to_plan.add(track.vehicle_id)
        track.retry_kind = None
        track.check_at = None

    def _session_end(self, now: datetime, track: VehicleTrack) -> None:
        if track.expect is not None:
            self.stats["commands_unverified"] += 1
        track.session_started = None
        track.deadline = None
        track.plan = None
        track.expect = None
        track.read_due = None if track.pushes else track.read_due
        track.check_at = None
        self._plugged.discard(track.vehicle_id)
        self._to_plan.discard(track.vehicle_id)
        if track.preferences.ready_by_at is not None:
            # the one-off ready-by applied to the session that just ended
            p = track.preferences
            track.preferences = Preferences(p.ready_by, p.target_soc, p.min_soc)

    # -- planning -----------------------------------------------------------------------------

    def _plan(self, now: datetime, actions: list[Action]) -> None:
        if self._replan_all:
            self._replan_all = False
            self._to_plan |= self._plugged
        if self._to_plan:
            todo = [self.tracks[v] for v in sorted(self._to_plan)]
            self._to_plan.clear()
            plugged = _Fleet(self.tracks, self._plugged)
            planned = self.policy.replan(now, todo, plugged)
            self.stats["replans"] += len(planned)
            for t in sorted({*todo, *planned}, key=lambda x: x.vehicle_id):
                self._follow(now, t)
                if t.pushes and t.plan is not None and t.check_at is None and t.deadline is not None:
                    check = t.deadline - timedelta(seconds=self.config.check_before_deadline_s)
                    if check > now:
                        t.check_at = check
                        self._at(check, t.vehicle_id)
                self._dirty.add(t.vehicle_id)
                self._maybe_notify(now, t, actions)
        for vid in self._escalations:
            t = self.tracks[vid]
            actions.append(Notify(vid, topic="escalated", ready_by=t.deadline,
                                  message="car keeps charging after stop; treated as uncontrollable this session"))
            self.stats["notifications"] += 1
        self._escalations.clear()

    def _maybe_notify(self, now: datetime, track: VehicleTrack, actions: list[Action]) -> None:
        start, soc = self.policy.outlook(now, track)
        last = track.notified
        if last is not None:
            moved = (start is None) != (last[0] is None) or (
                start is not None and last[0] is not None
                and abs((start - last[0]).total_seconds()) >= self.config.notify_shift_s
            )
            if not moved and abs(soc - last[1]) < self.config.notify_soc_shift:
                return
        track.notified = (start, soc)
        actions.append(Notify(track.vehicle_id, topic="plan" if last is None else "plan_changed",
                              charge_start_at=start, expected_soc=soc, ready_by=track.deadline))
        self.stats["notifications"] += 1

    def _follow(self, now: datetime, track: VehicleTrack) -> None:
        """Keep a timer at the plan's next switch on or off."""
        change = self.policy.next_change(now, track)
        if change is not None and change != track.change_at:
            track.change_at = change
            self._at(change, track.vehicle_id)

    # -- decisions ----------------------------------------------------------------------------

    def _decide(self, now: datetime, track: VehicleTrack) -> Action | None:
        if track.pending is not None:
            return None
        if track.not_before is not None and now < track.not_before:
            return None
        if track.needs_auth:
            return self._issue(track, RefreshAuth(track.vehicle_id))
        if track.needs_wake:
            return self._issue(track, Wake(track.vehicle_id))
        if track.soc_at is None or (track.read_due is not None and now >= track.read_due):
            return self._issue(track, Read(track.vehicle_id))
        if track.check_at is not None and now >= track.check_at:
            return self._issue(track, Read(track.vehicle_id))  # cleared by the reading
        if not track.plugged_in:
            return None
        if track.plan is not None:
            self._follow(now, track)
        if track.expect is not None:
            return None  # wait for the verdict on the last command
        charging = track.charging and track.below_limit(now)
        if track.charging and not charging:
            # reached its limit by our estimate: the car stops itself, no command needed
            track._anchor(now)
            track.charging = False
        want = self.policy.wants_charging(now, track)
        if want and not charging and track.needs_charge(now):
            return self._command(track, StartCharging(track.vehicle_id))
        if not want and charging and not track.escalated:
            return self._command(track, StopCharging(track.vehicle_id))
        return None

    def _command(self, track: VehicleTrack, action: Action) -> Action:
        self.stats["commands_sent"] += 1
        if track.retry_kind == action.kind:
            self.stats["commands_retried"] += 1
        return self._issue(track, action)

    def _issue(self, track: VehicleTrack, action: Action) -> Action:
        track.pending = action
        return action

    # -- helpers ------------------------------------------------------------------------------

    def _read_at(self, track: VehicleTrack, when: datetime) -> None:
        if track.read_due is None or when < track.read_due:
            track.read_due = when
        self._at(when, track.vehicle_id)

    def _track(self, vehicle_id: str) -> VehicleTrack:
        try:
            return self.tracks[vehicle_id]
        except KeyError:
            raise KeyError(f"vehicle {vehicle_id} is not registered with the controller") from None

    def _at(self, when: datetime, vehicle_id: str) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), vehicle_id))
