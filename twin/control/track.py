"""One car as the controller sees it: an explicit state, the session, and the session's plan.

A :class:`VehicleTrack` holds two small state machines and the data they act on.

**Session** (:class:`Session`), from readings::

    UNPLUGGED --reading: plugged in--> PLUGGED --car keeps charging after "stop"--> ESCALATED
    PLUGGED | ESCALATED --reading: unplugged--> UNPLUGGED

An escalated car is recorded, its driver told, and it is planned as uncontrollable load for the
rest of the session.

**Link** (:class:`Link`), the one call channel to the car, from call outcomes::

    READY   --call--> CALLING --ok--> READY
    CALLING --VehicleAsleep--> ASLEEP --wake--> CALLING
    CALLING --transient failure, 429--> BACKOFF(not_before) --timer--> READY, or ASLEEP after a failed wake
    CALLING --ReauthorizationRequired--> REAUTH --AuthorizationRestored--> READY   (every car of the account)
    CALLING --UnknownVehicle--> GONE                                             (no more calls)

What the controller does for a car follows from the two states, in this order (the table
:meth:`twin.control.controller.Controller._decide` implements):

=====================  ============================================================
state                  next call
=====================  ============================================================
link CALLING           none: one call in flight per car
link REAUTH, GONE      none
link BACKOFF           none before ``not_before``
link ASLEEP            wake
a read is due          read (first contact, verification, poll, pre-deadline check)
UNPLUGGED              none
awaiting a plan        none: the plan decides
awaiting a verdict     none: the last command is checked first
PLUGGED                start / stop / set current, as the policy wants
ESCALATED              start if the policy wants charge; never stop
=====================  ============================================================
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import Enum
from typing import Any

from twin.battery import ChargeCurve
from twin.control.config import ControllerConfig
from twin.control.events import Action, action_from_json
from twin.domain import SOC_TOLERANCE, Preferences
from twin.oem import Capabilities, RateLimited, VehicleReading

__all__ = ["Link", "Session", "SessionPlan", "ManagedVehicle", "VehicleTrack", "CHARGED_SINCE_SOC"]

# A SoC reported more than one 1 % reporting step (plus slack) above the SoC at a stop means the
# car charged on after it.
CHARGED_SINCE_SOC = 0.011
#: clouds date readings to the millisecond (Tesla's ``timestamp``, Smartcar's ``oemUpdatedAt``):
#: a reading dated less than this before an instant the host knows may have been taken after it
READING_RESOLUTION = timedelta(milliseconds=1)
# Sessions a car remembers to expect its next one (two weeks of daily use).
HISTORY = 14


class Session(Enum):
    UNPLUGGED = "unplugged"
    PLUGGED = "plugged"
    ESCALATED = "escalated"


class Link(Enum):
    READY = "ready"
    CALLING = "calling"
    BACKOFF = "backoff"
    ASLEEP = "asleep"
    REAUTH = "reauth"
    GONE = "gone"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


@dataclass(frozen=True)
class SessionPlan:
    """When and how hard a car should charge: ``levels_kw[i]`` (grid kW, 0 = off) for the slot
    starting at ``first + i * slot`` (UTC). ``expected_soc`` is the SoC the plan reaches by
    ready-by. ``modulated``: the levels are power to dispatch as a charging current; otherwise
    any positive level means "on" at the car's own rate. A modulated plan's levels are powers
    the car can be set to (see :func:`twin.control.planning.settable_levels`).
    """

    first: datetime
    slot: timedelta
    levels_kw: tuple[float, ...]
    expected_soc: float
    modulated: bool = False
    # derived once: the controller asks a plan about "now" several times per decision
    _changes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _at: tuple[datetime | None, int] = field(init=False, repr=False, compare=False)
    last_on: int = field(init=False, repr=False, compare=False)
    """Index of the last slot with a positive level (-1 if none)."""

    def __post_init__(self) -> None:
        levels = self.levels_kw
        # slots whose level differs from the one before (slot 0: from "before the plan", 0 kW)
        changes = tuple(j for j in range(len(levels)) if levels[j] != (levels[j - 1] if j else 0.0))
        last = max((j for j in range(len(levels)) if levels[j] > 0.0), default=-1)
        object.__setattr__(self, "_changes", changes)
        object.__setattr__(self, "last_on", last)
        object.__setattr__(self, "_at", (None, 0))

    @property
    def end(self) -> datetime:
        return self.first + len(self.levels_kw) * self.slot

    def _index(self, now: datetime) -> int:
        # one decision asks about the same instant several times: remember the last answer
        at = self._at
        if at[0] is now:
            return at[1]
        i = (now - self.first) // self.slot
        object.__setattr__(self, "_at", (now, i))
        return i

    def level_at(self, now: datetime) -> float:
        """Planned grid kW at ``now`` (0 outside the plan)."""
        i = self._index(now)
        return self.levels_kw[i] if 0 <= i < len(self.levels_kw) else 0.0

    def on_at(self, now: datetime) -> bool:
        return self.level_at(now) > 0.0

    def over(self, now: datetime) -> bool:
        """No charging left in the plan at or after ``now``."""
        return self._index(now) > self.last_on

    def next_change(self, now: datetime) -> datetime | None:
        """The next slot boundary after ``now`` where the planned level changes."""
        i = self._index(now)
        k = bisect_right(self._changes, i)
        if k < len(self._changes):
            return self.first + self._changes[k] * self.slot
        # no change left: the plan ends charging at its end, or is off for good
        return self.end if 0 <= i <= self.last_on else None

    def on_since(self, now: datetime) -> datetime | None:
        """Start of the run of charging slots that contains ``now`` (None if off now)."""
        i = self._index(now)
        levels = self.levels_kw
        if not (0 <= i < len(levels)) or levels[i] <= 0.0:
            return None
        while i > 0 and levels[i - 1] > 0.0:
            i -= 1
        return self.first + i * self.slot

    @property
    def charge_start_at(self) -> datetime | None:
        for i, level in enumerate(self.levels_kw):
            if level > 0.0:
                return self.first + i * self.slot
        return None

    def to_json(self) -> dict[str, Any]:
        return {"first": self.first.isoformat(), "slot_s": self.slot.total_seconds(),
                "levels_kw": list(self.levels_kw), "expected_soc": self.expected_soc, "modulated": self.modulated}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionPlan:
        return cls(datetime.fromisoformat(d["first"]), timedelta(seconds=d["slot_s"]), tuple(d["levels_kw"]),
                   d["expected_soc"], d["modulated"])


@dataclass(frozen=True)
class ManagedVehicle:
    """A car the controller manages: its charging curve (car and charger), what its OEM head
    can do with it, the OEM account it belongs to and the head's name."""

    vehicle_id: str
    curve: ChargeCurve
    caps: Capabilities = Capabilities()
    account_id: str = ""
    oem: str = "oem"

    @property
    def account(self) -> str:
        """The account id, or the vehicle's own id when it has none of its own."""
        return self.account_id or self.vehicle_id


def preferences_to_json(p: Preferences) -> dict[str, Any]:
    return {"ready_by": p.ready_by.isoformat(), "target_soc": p.target_soc, "min_soc": p.min_soc,
            "ready_by_at": _iso(p.ready_by_at)}


def preferences_from_json(d: dict[str, Any]) -> Preferences:
    return Preferences(time.fromisoformat(d["ready_by"]), d["target_soc"], d["min_soc"], _dt(d["ready_by_at"]))


class VehicleTrack:
    """What the controller believes about one car (see the module docstring)."""

    __slots__ = (
        # registration (static; not part of a snapshot)
        "vehicle_id", "curve", "caps", "account_id", "oem",
        # driver's preferences
        "preferences",
        # latest reading
        "plugged_in", "charging", "soc", "soc_at",
        # estimate anchor: SoC `est_soc` at `est_at`, charging since then (at `cap_kw`) if `charging`
        "est_soc", "est_at", "limit", "cap_kw", "amps", "active",
        # session
        "session", "session_started", "deadline", "plan", "disobeyed", "disobeyed_at", "notified",
        "awaiting_plan", "short_replanned", "held_since", "drawing_until", "history", "departures",
        # link
        "link", "resume", "pending", "attempts", "not_before",
        # timers and verification
        "read_due", "check_at", "retry_kind", "change_at", "expect",
    )

    #: fields a snapshot holds (everything but the registration)
    STATE = __slots__[5:]

    def __init__(self, vehicle: ManagedVehicle, preferences: Preferences) -> None:
        self.vehicle_id = vehicle.vehicle_id
        self.curve = vehicle.curve
        self.caps = vehicle.caps
        self.account_id = vehicle.account
        self.oem = vehicle.oem
        self.preferences = preferences
        self.plugged_in = False
        self.charging = False
        self.soc: float | None = None
        self.soc_at: datetime | None = None
        self.est_soc: float | None = None
        self.est_at: datetime | None = None
        #: the car's own charge limit (the target when the session started): it stops there
        self.limit = preferences.target_soc
        #: the charging current last set through the API, as kW and A (inf / None: never set)
        self.cap_kw = math.inf
        self.amps: float | None = None
        #: the curve the car charges along now (its own, capped by ``cap_kw``)
        self.active = vehicle.curve
        self.session = Session.UNPLUGGED
        self.session_started: datetime | None = None
        self.deadline: datetime | None = None
        self.plan: SessionPlan | None = None
        self.disobeyed = 0
        #: when the car was first seen charging against an acknowledged stop this session
        self.disobeyed_at: datetime | None = None
        #: (charge start, expected SoC) last told to the driver
        self.notified: tuple[datetime | None, float] | None = None
        #: id of the plan request whose answer this car waits for
        self.awaiting_plan: str | None = None
        #: the plan ran out short of its target and was planned again (once per plan)
        self.short_replanned = False
        #: since when a start waits for room under the site's limit
        self.held_since: datetime | None = None
        #: a car believed to have stopped at its limit counts against the site until then
        self.drawing_until: datetime | None = None
        #: recent sessions: (plug-in minute of the UTC day, SoC it needed to its target)
        self.history: list[tuple[int, float]] = []
        #: recent sessions: minutes from the declared ready-by to the unplug (negative: early)
        self.departures: list[float] = []
        self.link = Link.READY
        #: the link state a back-off returns to
        self.resume = Link.READY
        self.pending: Action | None = None
        self.attempts = 0
        self.not_before: datetime | None = None
        self.read_due: datetime | None = None
        #: one progress check before the deadline (pushed cars are otherwise not read)
        self.check_at: datetime | None = None
        #: kind of the command that last failed or was not obeyed (its re-send is a retry)
        self.retry_kind: str | None = None
        #: when a timer is set for the plan's next switch
        self.change_at: datetime | None = None
        #: last acknowledged command awaiting verification: (charging expected, at, SoC then)
        self.expect: tuple[bool, datetime, float | None] | None = None

    # -- what the car is doing ----------------------------------------------------------------

    @property
    def target(self) -> float:
        return self.preferences.target_soc

    @property
    def escalated(self) -> bool:
        return self.session is Session.ESCALATED

    @property
    def reachable(self) -> bool:
        """The platform can still send this car commands."""
        return self.link not in (Link.REAUTH, Link.GONE)

    def soc_estimate(self, now: datetime) -> float | None:
        """SoC now, from the last anchor and whether the car is believed to be charging."""
        if self.est_soc is None or self.est_at is None:
            return None
        if not self.charging or now <= self.est_at:
            return self.est_soc
        soc = self.active.soc_after(self.est_soc, (now - self.est_at).total_seconds() / 3600.0)
        return min(soc, max(self.limit, self.est_soc))

    def needs_charge(self, now: datetime) -> bool:
        """Below the driver's target (by the estimate)."""
        soc = self.soc_estimate(now)
        return soc is not None and soc < self.target - SOC_TOLERANCE

    def below_limit(self, now: datetime) -> bool:
        """Below the car's own charge limit, so a charging car is still charging."""
        soc = self.soc_estimate(now)
        return soc is not None and soc < self.limit - SOC_TOLERANCE

    def anchor(self, now: datetime) -> None:
        """Move the estimate's anchor to ``now`` (before what the car does changes)."""
        self.est_soc = self.soc_estimate(now)
        self.est_at = now

    def start_session(self, plugged_at: datetime, soc: float | None = None) -> None:
        """A reading showed the car newly plugged in at ``plugged_at`` (at ``soc``)."""
        if soc is not None:
            self.history = (self.history + [(plugged_at.hour * 60 + plugged_at.minute,
                                             max(0.0, self.preferences.target_soc - soc))])[-HISTORY:]
        self.session = Session.PLUGGED
        self.session_started = plugged_at
        self.deadline = self.preferences.deadline(plugged_at)
        self.limit = self.preferences.target_soc
        self.plan = None
        self.short_replanned = False
        self.disobeyed = 0
        self.disobeyed_at = None
        self.notified = None
        self.expect = None
        self.retry_kind = None
        self.check_at = None

    def end_session(self, unplugged_at: datetime | None = None) -> None:
        """A reading showed the car unplugged (at ``unplugged_at``)."""
        if unplugged_at is not None and self.deadline is not None:
            departures = self.departures
            departures.append(round((unplugged_at - self.deadline).total_seconds() / 60.0, 1))
            if len(departures) > HISTORY:
                del departures[0]
        self.session = Session.UNPLUGGED
        self.session_started = None
        self.deadline = None
        self.plan = None
        self.expect = None
        self.awaiting_plan = None
        if self.caps.pushes_telemetry:
            self.read_due = None
        self.check_at = None
        if self.preferences.ready_by_at is not None:
            # the one-off ready-by applied to the session that just ended
            p = self.preferences
            self.preferences = Preferences(p.ready_by, p.target_soc, p.min_soc)

    def record(self, reading: VehicleReading) -> None:
        """Take what a reading (no older than what is known) says the car is doing."""
        if self.check_at is not None and reading.taken_at >= self.check_at - READING_RESOLUTION:
            self.check_at = None
        self.plugged_in = reading.plugged_in
        self.charging = reading.charging
        if not reading.charging:
            self.drawing_until = None  # confirmed stopped
        self.soc_at = reading.taken_at
        if reading.soc is not None:
            self.soc = reading.soc
            self.est_soc, self.est_at = reading.soc, reading.taken_at

    def verdict(self, reading: VehicleReading, expected: bool, soc_then: float | None) -> str:
        """Judge an acknowledged start (``expected``) or stop by a reading taken after it:
        ``obeyed``, ``disobeyed`` (a stop, yet it charges or has charged on) or ``not_started``."""
        charged_since = reading.soc is not None and soc_then is not None and reading.soc > soc_then + CHARGED_SINCE_SOC
        if not expected and (reading.charging or charged_since):
            return "disobeyed"
        if reading.charging == expected:
            return "obeyed"
        # a reported SoC within one 1 % reporting step of the limit counts as full
        full = reading.soc is not None and reading.soc >= self.limit - max(SOC_TOLERANCE, CHARGED_SINCE_SOC)
        return "obeyed" if expected and full else "not_started"  # a start that ended at the limit

    def back_off(self, now: datetime, config: ControllerConfig, error: Exception, waking: bool) -> None:
        """CALLING -> BACKOFF after a failed call: retry after Retry-After for a 429, otherwise
        after exponential back-off, but never later than a share of the car's slack allows."""
        if isinstance(error, RateLimited):
            # the cloud said when: not a failure of the car, so no exponential growth
            delay = error.retry_after_s
        else:
            self.attempts += 1
            delay = min(config.retry_max_s, config.retry_base_s * 2 ** (self.attempts - 1))
            if self.plugged_in and self.deadline is not None and self.needs_charge(now):
                # a car running out of time is retried at least every share of its slack
                hours = self.curve.hours_to(self.soc_estimate(now), self.target)
                slack_s = (self.deadline - now).total_seconds() - hours * 3600.0
                delay = min(delay, max(config.retry_base_s, config.backoff_slack_share * slack_s))
        self.not_before = now + timedelta(seconds=delay)
        self.resume = Link.ASLEEP if waking else Link.READY
        if self.link is not Link.REAUTH:
            self.link = Link.BACKOFF

    def set_cap(self, amps: float | None) -> None:
        """The charging current the car was told (None: as the car likes)."""
        self.amps = amps
        self.cap_kw = math.inf if amps is None else amps * self.caps.kw_per_amp()
        self.active = self.curve.capped(self.cap_kw)

    # -- snapshot -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.STATE:
            value = getattr(self, name)
            if name == "preferences":
                value = preferences_to_json(value)
            elif name in ("plan",):
                value = None if value is None else value.to_json()
            elif name == "pending":
                value = None if value is None else value.to_json()
            elif name in ("session", "link", "resume"):
                value = value.value
            elif name == "active":
                continue  # follows from the curve and cap
            elif name == "cap_kw":
                value = None if math.isinf(value) else value
            elif name == "notified":
                value = None if value is None else [_iso(value[0]), value[1]]
            elif name == "history":
                value = [list(h) for h in value]
            elif name == "departures":
                value = list(value)
            elif name == "expect":
                value = None if value is None else [value[0], value[1].isoformat(), value[2]]
            elif isinstance(value, datetime):
                value = value.isoformat()
            out[name] = value
        return out

    def load_json(self, d: dict[str, Any]) -> None:
        """Restore the state written by :meth:`to_json` (registration data stays as given)."""
        for name in self.STATE:
            if name == "active":
                continue
            value = d.get(name, []) if name == "departures" else d[name]  # absent before departures were kept
            if name == "preferences":
                value = preferences_from_json(value)
            elif name == "plan":
                value = None if value is None else SessionPlan.from_json(value)
            elif name == "pending":
                value = None if value is None else action_from_json(value)
            elif name == "session":
                value = Session(value)
            elif name in ("link", "resume"):
                value = Link(value)
            elif name == "cap_kw":
                value = math.inf if value is None else value
            elif name == "notified":
                value = None if value is None else (_dt(value[0]), value[1])
            elif name == "history":
                value = [(int(m), float(n)) for m, n in value]
            elif name == "expect":
                value = None if value is None else (value[0], datetime.fromisoformat(value[1]), value[2])
            elif name in ("soc_at", "est_at", "session_started", "deadline", "disobeyed_at", "not_before",
                          "read_due", "check_at", "change_at", "held_since", "drawing_until"):
                value = _dt(value)
            setattr(self, name, value)
        self.active = self.curve.capped(self.cap_kw)
