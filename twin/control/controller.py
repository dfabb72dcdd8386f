"""The controller: the one place that decides when each car charges. Sans-I/O.

The controller consumes *events* (telemetry readings, outcomes of calls it asked for, driver
preference changes, new price/carbon forecasts, finished plans) and produces *actions* (read a
car, start or stop charging, set its current or charge limit, wake it, notify the driver, run a
planning job). It never performs I/O and never reads a clock: ``now`` is passed to
:meth:`Controller.step`, and action ids come from the host's ``new_id``. A host (the SimPy
driver in the twin, the asyncio driver live) runs the loop::

    actions = controller.step(now, events)
    ... execute each action, turn each outcome into an event ...
    sleep until controller.wake_at or until new events arrive

Everything that must behave the same in the twin and live is decided here:

* **sessions**: a reading that shows the car newly plugged in starts a session (deadline from
  the driver's preferences), an unplugged one ends it (:class:`~twin.control.track.Session`);
* **planning**: the policy is asked to plan on plug-in, when a reading deviates from what the
  plan expected, when a new forecast arrives and when preferences change, through a
  :class:`~twin.control.events.PlanRequest` the host may run off its loop; commands follow the
  plan's slot boundaries, as start/stop or, for cars whose current can be set, as a current;
* **calls**: one call in flight per car (:class:`~twin.control.track.Link`); a failed call is
  retried with exponential back-off, a rate limit's Retry-After is honoured for its scope, the
  OEM's published call budgets are kept, an asleep car is woken first, a refused command is not
  repeated blindly, a revoked account stops all calls for its cars until it is linked again, and
  a car the OEM no longer knows is dropped;
* **verification**: every acknowledged start/stop is checked against a later reading taken
  after it; a car that keeps charging after "stop" is told again, and after
  ``escalate_after`` disobediences it is *escalated*: recorded, the driver notified, and from
  then on treated as uncontrollable load for the rest of the session;
* **estimation**: between readings the SoC is estimated from what the car was told to do,
  along its (possibly current-limited) charging curve;
* **call budget**: cars whose cloud pushes telemetry are read only to verify commands, to
  check once before the deadline and after a failure; polled cars are read every
  ``poll_interval_s`` while unplugged and every ``plugged_poll_interval_s`` while plugged in;
* **notifications**: at plug-in the driver is told when charging will start and the SoC
  expected at ready-by, and again whenever that moves materially.

:meth:`Controller.snapshot` returns the whole state as plain JSON-serialisable data and
:meth:`Controller.restore` rebuilds a controller from it, so a live server can restart without
losing plans, pending calls, back-off timers or escalations.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from twin.control.budget import Budgets
from twin.control.config import ControllerConfig
from twin.control.events import (
    COMMANDS, Action, AuthorizationRestored, CallFailed, CallSucceeded, Event, ForecastUpdated, Notify,
    PlanRequest, PlansReady, PreferencesChanged, Read, SetChargeLimit, SetChargingCurrent, StartCharging,
    StopCharging, Telemetry, Wake,
)
from twin.control.planning import flat_out_plan
from twin.control.policies import Policy
from twin.control.track import READING_RESOLUTION, Link, ManagedVehicle, Session, SessionPlan, VehicleTrack
from twin.domain import SOC_TOLERANCE, Preferences
from twin.oem import (
    CommandRejected, RateBudget, RateLimited, ReauthorizationRequired, UnknownVehicle, VehicleAsleep,
    VehicleReading,
)

__all__ = ["Controller"]

#: a rejection that says the car is already where the command wanted it: the command succeeded
_ALREADY = {"start": "already_charging", "stop": "not_charging"}


# the link states, bound once: _decide compares them for every car with news
_READY, _CALLING, _BACKOFF, _ASLEEP, _REAUTH, _GONE = (Link.READY, Link.CALLING, Link.BACKOFF, Link.ASLEEP,
                                                       Link.REAUTH, Link.GONE)


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
    """Fleet controller. See the module docstring for the loop it expects to be hosted in.

    ``new_id()`` supplies action ids (seeded in the twin, UUIDs live): they are the commands'
    idempotency keys and survive a snapshot. With ``inline_planning`` (the default) planning jobs
    run inside :meth:`step`; a host that runs them off its event loop sets it to False and
    answers each :class:`PlanRequest` with :class:`PlansReady`.
    """

    def __init__(self, policy: Policy, config: ControllerConfig | None = None, *,
                 new_id: Callable[[], str], site_kw: float | None = None) -> None:
        self.policy = policy
        if hasattr(policy, "site_tracks"):
            policy.site_tracks = lambda: self.tracks.values()
        self.config = config or ControllerConfig()
        self.new_id = new_id
        #: the site's feeder limit (kW at every instant) its cars share; None: no shared limit
        self.site_kw = site_kw
        self.inline_planning = True
        #: cars whose start waits for room under the site limit
        self._held: set[str] = set()
        #: the policy shares the site's room without plans (``edf``): it is asked every step
        #: whose turn to charge has changed
        self._waits = bool(getattr(policy, "waits_for_room", False))
        self.tracks: dict[str, VehicleTrack] = {}
        self._accounts: dict[str, set[str]] = {}
        self._timers: list[tuple[datetime, int, str]] = []
        self._seq = 0
        self._dirty: set[str] = set()
        self._replan_all = False
        #: plugged-in cars with a session, and those of them waiting to be (re)planned
        self._plugged: set[str] = set()
        self._to_plan: set[str] = set()
        #: plan requests in flight: id -> {vehicle id: session start the plan is for}
        self._requests: dict[str, dict[str, datetime | None]] = {}
        #: after a failed planning job, no new request before this
        self._plan_not_before: datetime | None = None
        self._escalations: list[str] = []
        #: accounts whose authorisation was revoked
        self._revoked: set[str] = set()
        #: calls to send again first (pending when a snapshot was restored)
        self._resend: list[Action] = []
        self._budgets = Budgets()
        self._out: list[Action | PlanRequest] = []
        #: counters for KPIs: what happened to commands and cars
        self.stats = {
            "commands_sent": 0, "commands_failed": 0, "commands_retried": 0, "commands_rejected": 0,
            "commands_verified": 0, "commands_unverified": 0, "disobeyed": 0,
            "escalations": 0, "replans": 0, "planning_failures": 0, "notifications": 0,
            "reauthorizations": 0, "unregistered": 0, "events_dropped": 0, "stale_outcomes": 0,
        }

    # -- registration -------------------------------------------------------------------------

    def register(self, vehicle: ManagedVehicle, preferences: Preferences) -> None:
        """Start managing a car."""
        vid = vehicle.vehicle_id
        if vid in self.tracks:
            raise ValueError(f"vehicle {vid} is already registered")
        self.tracks[vid] = VehicleTrack(vehicle, preferences)
        self._accounts.setdefault(vehicle.account, set()).add(vid)
        self._dirty.add(vid)

    def unregister(self, vehicle_id: str) -> None:
        """Stop managing a car (the driver unlinked it); its later events are dropped."""
        track = self.tracks.pop(vehicle_id, None)
        if track is None:
            return
        self._accounts.get(track.account_id, set()).discard(vehicle_id)
        for group in (self._dirty, self._plugged, self._to_plan):
            group.discard(vehicle_id)

    def set_rate_limits(self, oem: str, budgets: tuple[RateBudget, ...]) -> None:
        """The call budgets OEM head ``oem`` declares (:attr:`twin.oem.OEMAdapter.rate_limits`)."""
        self._budgets.set_limits(oem, budgets)

    # -- the loop -----------------------------------------------------------------------------

    @property
    def wake_at(self) -> datetime | None:
        """When the host must call :meth:`step` again even if no event arrives."""
        return self._timers[0][0] if self._timers else None

    def step(self, now: datetime, events: Iterable[Event] = ()) -> list[Action | PlanRequest]:
        """Consume ``events`` observed up to ``now`` and return the actions to execute now."""
        self._out = actions = []
        if self._resend:
            actions.extend(self._resend)
            self._resend = []
        for event in events:
            self._apply(now, event)
        timers = self._timers
        while timers and timers[0][0] <= now:
            self._dirty.add(heapq.heappop(timers)[2])
        if self._waits:
            self._dirty |= self.policy.turns(now)
        if self._held:  # cars waiting for room: look again whenever anything happens
            self._dirty |= self._held
            self._held.clear()
        for vid in self._dirty:
            self._escalate_if_overdue(now, self.tracks[vid])
        self._plan(now)
        dirty, self._dirty = self._dirty, set()
        for vid in sorted(dirty):
            action = self._decide(now, self.tracks[vid])
            if action is not None:
                actions.append(action)
        self._out = []
        return actions

    # -- events -------------------------------------------------------------------------------

    def _apply(self, now: datetime, event: Event) -> None:
        if isinstance(event, Telemetry):
            self._observe(now, event.reading)
        elif isinstance(event, CallSucceeded):
            self._succeeded(now, event)
        elif isinstance(event, CallFailed):
            self._failed(now, event)
        elif isinstance(event, PlansReady):
            self._planned(now, event)
        elif isinstance(event, PreferencesChanged):
            track = self._track(event.vehicle_id)
            if track is None:
                return
            track.preferences = event.preferences
            if track.plugged_in and track.session_started is not None:
                track.deadline = event.preferences.deadline(track.session_started)
                self._to_plan.add(track.vehicle_id)
            self._dirty.add(track.vehicle_id)
        elif isinstance(event, ForecastUpdated):
            if self.policy.on_forecast(now, event):
                self._replan_all = True
        elif isinstance(event, AuthorizationRestored):
            self._restored(now, event.account_id)
        else:
            raise TypeError(f"controller cannot handle event {event!r}")

    def _track(self, vehicle_id: str) -> VehicleTrack | None:
        track = self.tracks.get(vehicle_id)
        if track is None:
            self.stats["events_dropped"] += 1  # not (or no longer) registered
        return track

    def _outcome_track(self, action: Action) -> VehicleTrack | None:
        """The car a call outcome belongs to, with its call channel freed; None for an outcome
        that is not the car's pending call (already answered, or from before a restore)."""
        track = self._track(action.vehicle_id)
        if track is None:
            return None
        if track.pending is None or track.pending.id != action.id:
            self.stats["stale_outcomes"] += 1
            return None
        track.pending = None
        track.link = Link.REAUTH if track.account_id in self._revoked else Link.READY
        self._dirty.add(track.vehicle_id)
        return track

    def _succeeded(self, now: datetime, event: CallSucceeded) -> None:
        action = event.action
        track = self._outcome_track(action)
        if track is None:
            return
        if isinstance(action, Wake):
            return
        track.attempts = 0
        track.not_before = None
        if isinstance(action, Read):
            track.read_due = None
        elif isinstance(action, COMMANDS):
            self._acknowledged(now, track, isinstance(action, StartCharging))
        elif isinstance(action, SetChargingCurrent):
            track.anchor(now)
            track.set_cap(action.amps)
        elif isinstance(action, SetChargeLimit):
            track.anchor(now)
            track.limit = action.soc
        if event.reading is not None:
            self._observe(now, event.reading)
            if track.expect is not None and track.read_due is None:
                # the reading predates the command (served from a cache): look again later
                self._read_at(track, now + timedelta(seconds=self.config.verify_after_s))

    def _acknowledged(self, now: datetime, track: VehicleTrack, want: bool) -> None:
        """A start (``want``) or stop was acknowledged: expect it in the next readings."""
        if track.expect is not None:
            self.stats["commands_unverified"] += 1  # superseded before it was checked
        track.anchor(now)
        track.charging = want
        track.expect = (want, now, track.est_soc)
        if want and track.plan is not None:
            # charging started later than planned (failures, wake-ups): plan the rest again
            on_since = track.plan.on_since(now)
            if on_since is not None and (now - on_since).total_seconds() > self.config.replan_late_s:
                self._to_plan.add(track.vehicle_id)
        self._read_at(track, now + timedelta(seconds=self.config.verify_after_s))

    def _failed(self, now: datetime, event: CallFailed) -> None:
        action, error = event.action, event.error
        track = self._outcome_track(action)
        if track is None:
            return
        if isinstance(action, COMMANDS):
            self.stats["commands_failed"] += 1
            track.retry_kind = action.kind
        if isinstance(error, UnknownVehicle):
            self._gone(track, str(error))
        elif isinstance(error, ReauthorizationRequired):
            self._revoke(track, error)
        elif isinstance(error, CommandRejected):
            self._rejected(now, track, action, error)
        elif isinstance(error, VehicleAsleep) and not isinstance(action, Wake) and track.caps.needs_wake:
            track.link = Link.ASLEEP  # wake first, then decide again
        else:
            self._back_off(now, track, action, error)

    def _back_off(self, now: datetime, track: VehicleTrack, action: Action, error: Exception) -> None:
        if isinstance(error, RateLimited) and error.scope != "vehicle":
            self._budgets.block(error.scope, now + timedelta(seconds=error.retry_after_s), track.vehicle_id,
                                track.account_id, track.oem)
        track.back_off(now, self.config, error, isinstance(action, Wake))
        self._at(track.not_before, track.vehicle_id)

    def _rejected(self, now: datetime, track: VehicleTrack, action: Action, error: CommandRejected) -> None:
        """The car refused: do not repeat the command; learn from the reason and look again."""
        if error.reason == _ALREADY.get(action.kind):
            if isinstance(action, COMMANDS):
                self.stats["commands_failed"] -= 1  # it is where we wanted it: not a failure
                self._acknowledged(now, track, isinstance(action, StartCharging))
            return
        self.stats["commands_rejected"] += 1
        track.retry_kind = None
        if error.reason == "fully_charged":
            track.anchor(now)
            track.est_soc = max(track.est_soc or 0.0, track.limit)
            track.charging = False
        elif error.reason == "not_capable" and isinstance(action, SetChargingCurrent):
            track.caps = track.caps.without_current()
        self._read_at(track, now)

    def _gone(self, track: VehicleTrack, why: str) -> None:
        """The OEM no longer knows the car: stop managing it and say so."""
        if track.link is Link.GONE:
            return
        track.link = Link.GONE
        self._plugged.discard(track.vehicle_id)
        self._to_plan.discard(track.vehicle_id)
        self.stats["unregistered"] += 1
        self._notify(Notify(track.vehicle_id, self.new_id(), topic="unregistered",
                            message=f"the {track.oem} cloud no longer knows this car; control stopped ({why})"))

    def _revoke(self, track: VehicleTrack, error: ReauthorizationRequired) -> None:
        """The account's grant is gone: no calls for any of its cars until it is linked again."""
        account = track.account_id
        if account in self._revoked:
            track.link = Link.REAUTH
            return
        self._revoked.add(account)
        self.stats["reauthorizations"] += 1
        for vid in sorted(self._accounts.get(account, ())):
            t = self.tracks[vid]
            if t.link is not Link.CALLING and t.link is not Link.GONE:
                t.link = Link.REAUTH
        self._notify(Notify(track.vehicle_id, self.new_id(), topic="reauthorize",
                            message=f"link your {track.oem} account again to resume smart charging"))

    def _restored(self, now: datetime, account: str) -> None:
        self._revoked.discard(account)
        for vid in sorted(self._accounts.get(account, ())):
            t = self.tracks[vid]
            if t.link is Link.REAUTH:
                t.link = Link.READY
                self._read_at(t, now)  # whatever happened meanwhile, look first

    def _observe(self, now: datetime, reading: VehicleReading) -> None:
        track = self.tracks.get(reading.vehicle_id)
        if track is None:
            self.stats["events_dropped"] += 1  # not (or no longer) registered
            return
        if track.link is _GONE:
            return
        self._dirty.add(track.vehicle_id)
        seen = track.soc_at if track.est_at is None or (track.soc_at is not None and track.soc_at > track.est_at) \
            else track.est_at
        if seen is not None and reading.taken_at < seen - READING_RESOLUTION:
            return  # older than what we already know (a cache, or out-of-order delivery)
        if reading.plugged_in and not track.plugged_in:
            self._session_start(track, reading)
        elif not reading.plugged_in and track.plugged_in:
            self._session_end(track, reading.taken_at)
        # verification: only a reading taken after the command can judge it
        expect = track.expect
        if expect is not None and reading.taken_at >= expect[1] - READING_RESOLUTION and reading.plugged_in:
            self._verify(now, track, reading, expect[0], expect[2])
        elif track.disobeyed_at is not None and not reading.charging:
            track.disobeyed_at = None  # seen stopped since it disobeyed: nothing is overdue
        elif track.plugged_in and reading.plugged_in and reading.soc is not None and track.plan is not None:
            estimate = track.soc_estimate(reading.taken_at)
            if estimate is not None and abs(reading.soc - estimate) > self.config.replan_soc_deviation:
                self._to_plan.add(track.vehicle_id)
        track.record(reading)
        if not track.caps.pushes_telemetry:
            interval = self.config.plugged_poll_interval_s if track.plugged_in else self.config.poll_interval_s
            self._read_at(track, now + timedelta(seconds=interval))

    def _verify(self, now: datetime, track: VehicleTrack, reading: VehicleReading, expected: bool,
                soc_then: float | None) -> None:
        track.expect = None
        if track.caps.pushes_telemetry:
            track.read_due = None
        verdict = track.verdict(reading, expected, soc_then)
        if verdict == "disobeyed":
            # acknowledged "stop", still charging (or charged on and has since stopped at its limit)
            track.retry_kind = "stop"
            track.disobeyed += 1
            self.stats["disobeyed"] += 1
            if track.disobeyed_at is None:
                track.disobeyed_at = now
                self._at(now + timedelta(seconds=self.config.escalate_within_s), track.vehicle_id)
            if track.disobeyed >= self.config.escalate_after:
                self._escalate(track)
        elif verdict == "obeyed":
            self.stats["commands_verified"] += 1
            track.retry_kind = None
            if not expected:
                track.disobeyed_at = None
        else:  # a start that did not take
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
        track.session = Session.ESCALATED
        self.stats["escalations"] += 1
        self._escalations.append(track.vehicle_id)
        self._to_plan.add(track.vehicle_id)

    def _session_start(self, track: VehicleTrack, reading: VehicleReading) -> None:
        track.start_session(reading.taken_at, reading.soc)
        self._plugged.add(track.vehicle_id)
        self._to_plan.add(track.vehicle_id)

    def _session_end(self, track: VehicleTrack, unplugged_at: datetime | None = None) -> None:
        if track.expect is not None:
            self.stats["commands_unverified"] += 1
        track.end_session(unplugged_at)
        self._plugged.discard(track.vehicle_id)
        self._to_plan.discard(track.vehicle_id)

    # -- planning -----------------------------------------------------------------------------

    def _plan(self, now: datetime) -> None:
        """Ask the policy for plans of the cars waiting for one (see :class:`PlanRequest`)."""
        if self._replan_all:
            self._replan_all = False
            self._to_plan |= self._plugged
        if self._to_plan and (self._plan_not_before is None or now >= self._plan_not_before):
            todo = [self.tracks[v] for v in sorted(self._to_plan)]
            self._to_plan.clear()
            job = self.policy.prepare(now, todo, _Fleet(self.tracks, self._plugged))
            if job is None:
                self._settle(now, todo)
            else:
                sessions = {vid: self.tracks[vid].session_started for vid in job.vehicle_ids}
                request = PlanRequest(self.new_id(), tuple(job.vehicle_ids), job, sessions)
                self._requests[request.id] = sessions
                for vid in request.vehicle_ids:
                    self.tracks[vid].awaiting_plan = request.id
                if self.inline_planning:
                    done = self._apply_plans(now, request.run())
                    self._settle(now, {*todo, *done})
                else:
                    self._settle(now, [t for t in todo if t.awaiting_plan != request.id])
                    self._out.append(request)
        for vid in self._escalations:
            t = self.tracks[vid]
            self._notify(Notify(vid, self.new_id(), topic="escalated", ready_by=t.deadline,
                                message="car keeps charging after stop; treated as uncontrollable this session"))
        self._escalations.clear()

    def _planned(self, now: datetime, event: PlansReady) -> None:
        self._settle(now, self._apply_plans(now, event))

    def _apply_plans(self, now: datetime, event: PlansReady) -> list[VehicleTrack]:
        """Take the plans of a finished request; returns the cars that were waiting for it."""
        sessions = self._requests.pop(event.request_id, None)
        if sessions is None:
            return []  # a request from before a restore: its cars were planned again
        waiting = [t for vid in sorted(sessions) if (t := self.tracks.get(vid)) is not None
                   and t.awaiting_plan == event.request_id]
        for t in waiting:
            t.awaiting_plan = None
        if event.error is not None:
            self.stats["planning_failures"] += 1
            self._plan_not_before = now + timedelta(seconds=self.config.replan_after_failure_s)
            for t in waiting:
                if t.session is not Session.UNPLUGGED:
                    if t.plan is None:
                        t.plan = flat_out_plan(now, t)
                    self._to_plan.add(t.vehicle_id)
                    self._at(self._plan_not_before, t.vehicle_id)
            return waiting
        for t in waiting:
            vid = t.vehicle_id
            if vid in event.plans and t.session is not Session.UNPLUGGED and t.session_started == sessions[vid]:
                if event.plans[vid] != t.plan:
                    t.short_replanned = False  # a new plan may run short again
                t.plan = event.plans[vid]
                self.stats["replans"] += 1
        return waiting

    def _settle(self, now: datetime, tracks: Iterable[VehicleTrack]) -> None:
        """Cars whose planning is over (planned or not): follow, check, tell the driver."""
        for t in sorted(tracks, key=lambda x: x.vehicle_id):
            self._follow(now, t)
            if t.caps.pushes_telemetry and t.plan is not None and t.check_at is None and t.deadline is not None:
                check = t.deadline - timedelta(seconds=self.config.check_before_deadline_s)
                if check > now:
                    t.check_at = check
                    self._at(check, t.vehicle_id)
            self._dirty.add(t.vehicle_id)
            self._maybe_notify(now, t)

    def _maybe_notify(self, now: datetime, track: VehicleTrack) -> None:
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
        early = None
        if track.deadline is not None and track.deadline - timedelta(hours=1) > now:
            early = min(soc, self.policy.soc_by(now, track, track.deadline - timedelta(hours=1)))
        self._notify(Notify(track.vehicle_id, self.new_id(), topic="plan" if last is None else "plan_changed",
                            charge_start_at=start, expected_soc=soc, ready_by=track.deadline,
                            soc_hour_early=early))

    def _notify(self, note: Notify) -> None:
        self._out.append(note)
        self.stats["notifications"] += 1

    def _follow(self, now: datetime, track: VehicleTrack) -> None:
        """Keep a timer at the plan's next switch on or off."""
        change = self.policy.next_change(now, track)
        if change is not None and change != track.change_at:
            track.change_at = change
            self._at(change, track.vehicle_id)

    # -- decisions (the table in twin.control.track) ------------------------------------------

    def _decide(self, now: datetime, track: VehicleTrack) -> Action | None:
        link = track.link
        if link is not _READY:
            if link is _CALLING or link is _REAUTH or link is _GONE:
                return None
            if link is _BACKOFF:
                if now < track.not_before:
                    return None
                track.link = link = track.resume
            if link is _ASLEEP:
                return self._issue(now, track, Wake)
        if track.soc_at is None or (track.read_due is not None and now >= track.read_due):
            return self._issue(now, track, Read)
        if track.check_at is not None and now >= track.check_at:
            return self._issue(now, track, Read)  # cleared by the reading
        if not track.plugged_in or track.awaiting_plan is not None:
            return None
        plan = track.plan
        if plan is not None or self._waits:
            self._follow(now, track)  # the plan's next switch, or when a plan-free turn may come
        if plan is not None:
            if not track.short_replanned and self._ran_short(now, track, plan):
                # the plan is over but the car is short of what it promised: plan the rest, once
                # (a policy whose new plan is the same, like the optimal replay, is not asked again)
                track.short_replanned = True
                self._to_plan.add(track.vehicle_id)
                self._at(now, track.vehicle_id)
                return None
        if track.expect is not None:
            return None  # wait for the verdict on the last command
        if track.caps.can_set_charge_limit and abs(track.limit - track.target) > 1e-9:
            return self._issue(now, track, SetChargeLimit, soc=track.target)
        charging = track.charging and track.below_limit(now)
        if track.charging and not charging:
            # reached its limit by our estimate: the car stops itself, no command needed. Until a
            # reading confirms it, the site still counts it (the estimate may be early)
            track.anchor(now)
            track.charging = False
            if self.site_kw is not None:
                left_h = track.curve.hours_to(track.est_soc, track.limit) if track.est_soc < track.limit else 0.0
                track.drawing_until = now + timedelta(seconds=min(left_h * 3600.0, 3600.0) + self.config.site_grace_s)
        want = self.policy.wants_kw(now, track)
        amps = self._amps(track, want) if track.caps.can_set_current else None
        if amps == 0.0:
            want = 0.0
        if want > 0 and amps is not None and amps != track.amps:
            if (charging and (track.amps is None or amps > track.amps)) and not self._room(now, track, amps):
                return None
            return self._command(now, track, SetChargingCurrent, amps=amps)
        if want > 0 and not charging and track.needs_charge(now):
            if not self._room(now, track, track.amps):
                return None
            return self._command(now, track, StartCharging)
        if want <= 0 and charging and not track.escalated:
            return self._command(now, track, StopCharging)
        return None

    def _room(self, now: datetime, track: VehicleTrack, amps: float | None) -> bool:
        """Whether the site has room for ``track`` to draw at ``amps`` now (always without a
        site limit, or for a policy that does not respect one). Without room the car is held,
        looked at again with the next news and when a car counted against the site should stop
        counting; held past ``replan_late_s`` it is planned again around what the others draw."""
        if self.site_kw is None or not self.policy.respects_site:
            return True
        curve = track.curve if amps is None else track.curve.capped(amps * track.caps.kw_per_amp())
        need = curve.power_kw(track.soc_estimate(now) or 0.0)
        drawn, frees = self._site_draw(now, exclude=track.vehicle_id)
        if drawn + need <= self.site_kw + 1e-6:
            track.held_since = None
            return True
        self._held.add(track.vehicle_id)
        if track.held_since is None:
            track.held_since = now
        elif (now - track.held_since).total_seconds() >= self.config.replan_late_s:
            track.held_since = now
            self._to_plan.add(track.vehicle_id)
        self._at(min(frees, now + timedelta(seconds=self.config.replan_late_s)), track.vehicle_id)
        return False

    def site_draw_kw(self, now: datetime, exclude: str | None = None) -> float:
        """What the plugged-in cars draw now by the controller's belief (kW); see
        :meth:`_site_draw`."""
        return self._site_draw(now, exclude)[0]

    def _site_draw(self, now: datetime, exclude: str | None = None) -> tuple[float, datetime]:
        """(kW drawn now, the earliest time a car stops counting) by the controller's belief.

        A car counts at its power at its estimated SoC while it is believed charging, until
        its estimate reaches its charge limit plus ``site_grace_s`` (the estimate may be early);
        while its stop is not yet confirmed by a reading; and while a start or a higher current
        for it is in flight. Cars that need no estimate to count (a start in flight) do not set
        the earliest time.
        """
        total = 0.0
        frees = datetime.max.replace(tzinfo=now.tzinfo)
        grace = timedelta(seconds=self.config.site_grace_s)
        for vid in self._plugged:
            if vid == exclude:
                continue
            t = self.tracks[vid]
            pending = t.pending
            until = t.drawing_until
            if t.charging and t.est_at is not None and t.est_soc is not None:
                left = t.active.hours_to(t.est_soc, t.limit) if t.est_soc < t.limit else 0.0
                until = t.est_at + timedelta(hours=min(left, 48.0)) + grace
            drawing = ((until is not None and now < until) or (t.expect is not None and not t.expect[0])
                       or isinstance(pending, (StartCharging, SetChargingCurrent)))
            if not drawing:
                continue
            if isinstance(pending, SetChargingCurrent):
                curve = t.curve.capped(max(pending.amps * t.caps.kw_per_amp(), t.cap_kw if t.charging else 0.0))
            else:
                curve = t.active
            total += curve.power_kw(min(t.soc_estimate(now) or 0.0, t.limit - SOC_TOLERANCE))
            if until is not None and now < until:
                frees = min(frees, until)
        return total, frees

    @staticmethod
    def _ran_short(now: datetime, track: VehicleTrack, plan: SessionPlan) -> bool:
        """No more charging in the plan, yet the car is below its target with time left: the
        plan expected the target and rounding, a slow start or a taper cost energy it counted on,
        or the plan aimed at an earlier departure (see ``departure_quantile``) that has passed."""
        return (plan.over(now) and track.session is Session.PLUGGED and track.deadline is not None
                and now < track.deadline and track.needs_charge(now)
                and (plan.expected_soc >= track.target - SOC_TOLERANCE or plan.end + plan.slot <= track.deadline))

    @staticmethod
    def _amps(track: VehicleTrack, want_kw: float) -> float | None:
        """The current to set for ``want_kw`` (None: leave the car's current as it is).

        A modulated plan's levels are settable powers, so this is exact; the car's own maximum
        is its largest current.
        """
        caps = track.caps
        if not caps.can_set_current or want_kw <= 0:
            return None
        if math.isinf(want_kw):
            # as fast as it charges: undo a current we set earlier, otherwise leave it alone
            return None if track.amps is None else caps.max_amps
        if want_kw >= track.curve.max_kw - 1e-9:
            return caps.max_amps
        return caps.amps_for(want_kw, "nearest")

    def _command(self, now: datetime, track: VehicleTrack, cls: type[Action], **fields: Any) -> Action | None:
        action = self._issue(now, track, cls, **fields)
        if action is not None:
            self.stats["commands_sent"] += 1
            if track.retry_kind == action.kind:
                self.stats["commands_retried"] += 1
        return action

    def _issue(self, now: datetime, track: VehicleTrack, cls: type[Action], **fields: Any) -> Action | None:
        wait = self._budgets.next_call(now, track.vehicle_id, track.account_id, track.oem)
        if wait is not None:
            self._at(wait, track.vehicle_id)  # over a call budget: try again when there is room
            return None
        self._budgets.spend(now, track.vehicle_id, track.account_id, track.oem)
        action = cls(track.vehicle_id, self.new_id(), **fields)
        track.pending = action
        track.link = Link.CALLING
        return action

    # -- helpers ------------------------------------------------------------------------------

    def _read_at(self, track: VehicleTrack, when: datetime) -> None:
        if track.read_due is None or when < track.read_due:
            track.read_due = when
        self._at(when, track.vehicle_id)

    def _at(self, when: datetime, vehicle_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, vehicle_id))

    # -- snapshot (twin.control.snapshot) -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The controller's whole state as plain JSON-serialisable data (:func:`twin.control.
        snapshot.take`)."""
        from twin.control.snapshot import take

        return take(self)

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any], **kwargs: Any) -> Controller:
        """A controller in the state ``snapshot`` recorded (:func:`twin.control.snapshot.restore`)."""
        from twin.control.snapshot import restore

        return restore(cls, snapshot, **kwargs)
