"""Control policies: when a plugged-in car should charge, and how hard.

``uncontrolled``
    Charge on plug-in until the target, as a car does without smart charging.
``smart``
    Plans each car when it plugs in, from what the platform could know then: the published
    price and carbon forecasts (:class:`PriceBook`, persistence beyond the published horizon),
    the car's estimated SoC and the driver's ready-by and target. It re-plans when a reading
    deviates from the plan, when a start lands late, when new forecasts are published, when
    preferences change and when a car is escalated. Cars whose charging current can be set are
    planned with continuous power and dispatched as a current; the others on/off at slot
    boundaries. With a site feeder limit, each car is planned against the capacity the other
    cars' plans (and uncontrollable cars) leave free, least slack first.
``smart_onoff``
    ``smart`` with start/stop only, even where the car's current could be set: the comparison
    that shows what modulation is worth.
``edf``
    Earliest deadline first, the usual baseline for shared sites: no plans and no prices; every
    car that needs charge charges at once, except that under a site limit the cars whose ready-by
    comes first take the room and the rest wait (a car with an earlier ready-by that plugs in
    later stops one with a later ready-by).
``optimal``
    Replays the perfect-foresight plan of every session (:mod:`twin.foresight`): arrival,
    departure and actual prices known in advance. The bound other policies are measured
    against.

A policy plans in two steps so that planning can run off the host's event loop:
:meth:`Policy.prepare` runs on the loop and captures what a plan needs from the controller's
state into a :class:`~twin.control.events.PlanJob`; the job's ``run()`` is pure and may run on
another thread. Everything else a policy answers (``wants_kw``, ``next_change``, ``outlook``)
reads a car's current plan and is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from math import ceil, floor
from typing import Any, Protocol

import numpy as np
import pandas as pd

from twin.battery import ChargeCurve
from twin.control.config import ControlParams, ControlSettings
from twin.control.events import ForecastUpdated, PlanJob
from twin.control.planning import (
    drawing_kw, feeder_room, least_slack_order, scheduler, session_plans, session_problem, settable_levels,
)
from twin.control.track import SessionPlan, VehicleTrack
from twin.domain import SOC_TOLERANCE

__all__ = [
    "Policy", "Uncontrolled", "EarliestDeadlineFirst", "PlanFollower", "Smart", "Optimal", "PriceBook", "CarView", "POLICIES",
    "make_policy",
]

#: policy names the twin and the server know
POLICIES = ("uncontrolled", "edf", "smart", "smart_onoff", "optimal")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Under a feeder limit the site is planned one car at a time; when that leaves cars short, the
# short ones go first in up to this many more rounds (each round is one cheap plan per car).
REPAIR_ROUNDS = 2
# Sessions a car must have had before its next arrival is expected and given room under a feeder.
MIN_HISTORY = 2
# Departures a driver must have made before their own early-departure quantile is used (before
# that, the site's drivers' together); and the shortest window a plan to an early departure has.
MIN_DEPARTURES = 5
MIN_WINDOW_MIN = 60
# However old the last reading, a plan aims at most this far above the target.
MAX_MARGIN_SOC = 0.03
# Persistence forecast: beyond the published horizon, assume a slot costs what the same slot
# did this many days earlier (the first one known), the usual naive forecast for day-ahead
# prices and carbon intensity.
_PERSISTENCE_DAYS = (1, 2, 7)


class Policy(Protocol):
    """Decides how much a plugged-in car should charge now (see the module docstring)."""

    name: str
    #: whether starts must wait for room under a site limit
    respects_site: bool

    def prepare(self, now: datetime, tracks: Sequence[VehicleTrack],
                fleet: Sequence[VehicleTrack]) -> PlanJob | None:
        """A job that plans ``tracks`` (``fleet``: every plugged-in car), or None when there is
        nothing to plan. The job's ``vehicle_ids`` lists every car it may return a plan for."""
        ...

    def wants_kw(self, now: datetime, track: VehicleTrack) -> float:
        """Grid kW the car should draw now: 0 to stop, ``inf`` for as fast as it charges."""
        ...

    def next_change(self, now: datetime, track: VehicleTrack) -> datetime | None: ...

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        """Take a new forecast; return True if plugged-in cars should be re-planned."""
        ...

    def outlook(self, now: datetime, track: VehicleTrack) -> tuple[datetime | None, float]:
        """(when charging will start, SoC expected at ready-by) for the driver."""
        ...

    def soc_by(self, now: datetime, track: VehicleTrack, when: datetime) -> float:
        """The SoC the car is expected to have at ``when`` (for the driver: leaving early)."""
        ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, data: Mapping[str, Any]) -> None: ...


class Uncontrolled:
    """Charge on plug-in until the target, as a car does without smart charging."""

    name = "uncontrolled"
    #: the baseline knows no site limit: it shows what the site would draw without control
    respects_site = False

    def prepare(self, now, tracks, fleet):
        return None

    def wants_kw(self, now: datetime, track: VehicleTrack) -> float:
        return math.inf if track.plugged_in and track.needs_charge(now) else 0.0

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

    def soc_by(self, now: datetime, track: VehicleTrack, when: datetime) -> float:
        soc = track.soc_estimate(now) or 0.0
        if soc >= track.target:
            return soc
        return min(track.target, track.curve.soc_after(soc, max(0.0, (when - now).total_seconds() / 3600.0)))

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, data: Mapping[str, Any]) -> None:
        pass


class EarliestDeadlineFirst(Uncontrolled):
    """Charge at once, earliest ready-by first under the site limit (see the module docstring).

    The room is shared in the order (cars that ignore "stop" and keep drawing, then ready-by,
    then plug-in time, then id): each car counts at its power at its estimated SoC, and a car
    wants to charge only while the cars before it leave it room. The controller asks for the
    share once per step (:meth:`turns`) and looks again at the cars whose turn changed; it
    still checks the instantaneous draw before every start (``respects_site``), so a car whose
    stop has not landed yet keeps counting.
    """

    name = "edf"
    respects_site = True

    def __init__(self, feeder_kw: float | None) -> None:
        self.feeder_kw = feeder_kw
        #: without a site limit every car charges at once: nothing to share
        self.waits_for_room = feeder_kw is not None
        #: every car of the site (the controller sets it when it registers cars)
        self.site_tracks: Callable[[], Iterable[VehicleTrack]] = lambda: ()
        #: the cars given room at the last step, and when
        self._given: set[str] = set()
        self._given_at: datetime | None = None
        self._next_free: datetime | None = None

    def turns(self, now: datetime) -> set[str]:
        """Share the room now; return the cars whose turn to charge has changed since the last
        share (the controller decides them again)."""
        given = self._share(now)
        changed = given ^ self._given
        self._given, self._given_at = given, now
        return changed

    def wants_kw(self, now: datetime, track: VehicleTrack) -> float:
        if not (track.plugged_in and track.needs_charge(now)):
            return 0.0
        if self.feeder_kw is None:
            return math.inf
        given = self._given if self._given_at == now else self._share(now)
        return math.inf if track.vehicle_id in given else 0.0

    def _share(self, now: datetime) -> set[str]:
        far = datetime.max.replace(tzinfo=timezone.utc)
        cars = [t for t in self.site_tracks() if t.plugged_in and t.needs_charge(now)]
        cars.sort(key=lambda t: (not (t.escalated and t.charging), t.deadline or far,
                                 t.session_started or far, t.vehicle_id))
        given: set[str] = set()
        left = float(self.feeder_kw)
        #: when the first car given room should reach its target (the others' turn may come)
        self._next_free = None
        for t in cars:
            soc = t.soc_estimate(now) or 0.0
            need = t.curve.power_kw(soc)
            if need <= left + 1e-6 or (t.escalated and t.charging):
                given.add(t.vehicle_id)
                left -= need
                done = now + timedelta(hours=min(t.curve.hours_to(soc, t.target), 48.0), seconds=1)
                self._next_free = done if self._next_free is None else min(self._next_free, done)
        return given

    def next_change(self, now: datetime, track: VehicleTrack) -> datetime | None:
        """For a car waiting for room: when the first car given room should be done."""
        if self.feeder_kw is None or self._given_at != now or track.vehicle_id in self._given:
            return None
        return self._next_free

    def outlook(self, now: datetime, track: VehicleTrack) -> tuple[datetime | None, float]:
        if self.wants_kw(now, track) <= 0 and track.needs_charge(now):
            return None, track.soc_estimate(now) or 0.0  # waiting for room: no start time known
        return super().outlook(now, track)


class PriceBook:
    """What the platform currently expects each slot's price and carbon to be."""

    def __init__(self, slot_minutes: int) -> None:
        self.slot_s = slot_minutes * 60
        self._price: dict[int, float] = {}
        self._carbon: dict[int, float] = {}
        #: the network operator's capacity signal (kW per slot), where published
        self._capacity: dict[int, float] = {}
        #: series already looked up since the last update (cars plugging in within a slot share them)
        self._seen: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def update(self, frame: pd.DataFrame) -> None:
        """Take the known (non-NaN) values of a forecast frame (see ``ForecastUpdated``)."""
        keys = ((frame.index - pd.Timestamp(_EPOCH)) // pd.Timedelta(seconds=1)).to_numpy().tolist()
        for table, column in ((self._price, "price_gbp_per_kwh"), (self._carbon, "carbon_g_per_kwh"),
                              (self._capacity, "capacity_kw")):
            if column in frame.columns:
                values = frame[column].to_numpy().tolist()
                table.update((k, v) for k, v in zip(keys, values) if v == v)
        self._seen.clear()

    def capacity(self, first: datetime, count: int) -> np.ndarray:
        """The capacity signal (kW) for ``count`` slots from ``first``; NaN where none."""
        k0 = int((first - _EPOCH).total_seconds())
        return np.array([self._capacity.get(k0 + i * self.slot_s, np.nan) for i in range(count)])

    def series(self, first: datetime, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Expected price (GBP/kWh) and carbon (gCO2/kWh) for ``count`` slots from ``first``
        (read-only arrays)."""
        k0 = int((first - _EPOCH).total_seconds())
        seen = self._seen.get((k0, count))
        if seen is not None:
            return seen
        keys = [k0 + i * self.slot_s for i in range(count)]
        out = self._lookup(self._price, keys), self._lookup(self._carbon, keys)
        for a in out:
            a.setflags(write=False)
        if len(self._seen) > 1024:
            self._seen.clear()
        self._seen[(k0, count)] = out
        return out

    def _lookup(self, table: dict[int, float], keys: list[int]) -> np.ndarray:
        out = np.empty(len(keys))
        fallback = None
        for i, k in enumerate(keys):
            value = table.get(k)
            if value is None:
                for days in _PERSISTENCE_DAYS:
                    value = table.get(k - days * 86400)
                    if value is not None:
                        break
            if value is None:
                if fallback is None:  # nothing published for this slot or a day or a week before
                    fallback = float(np.mean(list(table.values()))) if table else 0.0
                value = fallback
            out[i] = value
        return out

    def to_json(self) -> dict[str, Any]:
        return {"price": sorted(self._price.items()), "carbon": sorted(self._carbon.items()),
                "capacity": sorted(self._capacity.items())}

    def load_json(self, data: Mapping[str, Any]) -> None:
        self._price = {int(k): float(v) for k, v in data["price"]}
        self._carbon = {int(k): float(v) for k, v in data["carbon"]}
        self._capacity = {int(k): float(v) for k, v in data.get("capacity", [])}
        self._seen.clear()


class PlanFollower:
    """Common behaviour of policies that follow a per-session plan."""

    name = "plan"
    #: starts wait for room under the site's limit (see ``Controller._room``)
    respects_site = True

    def wants_kw(self, now: datetime, track: VehicleTrack) -> float:
        if not track.plugged_in:
            return 0.0
        soc = track.soc_estimate(now)
        if soc is not None and soc < track.preferences.min_soc - SOC_TOLERANCE:
            return math.inf  # below the driver's minimum: charge now whatever the price
        plan = track.plan
        if plan is None:
            return 0.0
        level = plan.level_at(now)
        return level if plan.modulated or level <= 0.0 else math.inf

    def next_change(self, now: datetime, track: VehicleTrack) -> datetime | None:
        return track.plan.next_change(now) if track.plan is not None else None

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        return False

    def outlook(self, now: datetime, track: VehicleTrack) -> tuple[datetime | None, float]:
        if track.plan is None:
            return None, track.soc_estimate(now) or 0.0
        start = track.plan.charge_start_at
        return (max(start, now) if start is not None else None), track.plan.expected_soc

    def soc_by(self, now: datetime, track: VehicleTrack, when: datetime) -> float:
        """By the plan: its levels from now to ``when``, along the car's curve."""
        soc = track.soc_estimate(now) or 0.0
        plan = track.plan
        if plan is None:
            return soc
        t = now
        while t < when and soc < track.limit - SOC_TOLERANCE:
            nxt = min(when, plan.next_change(t) or when)
            level = plan.level_at(t)
            if level > 0:
                curve = track.curve if level >= track.curve.max_kw or not plan.modulated else track.curve.capped(level)
                soc = min(track.limit, curve.soc_after(soc, (nxt - t).total_seconds() / 3600.0))
            if nxt <= t:
                break
            t = nxt
        return soc

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, data: Mapping[str, Any]) -> None:
        pass


@dataclass(frozen=True, slots=True)
class CarView:
    """What planning needs of one car, captured on the loop so a job can run elsewhere."""

    vehicle_id: str
    curve: ChargeCurve
    soc: float | None
    target: float
    min_soc: float
    limit: float
    deadline: datetime | None
    plan: SessionPlan | None
    #: escalated, or unreachable: its draw is whatever it does on its own
    uncontrollable: bool
    charging: bool
    plugged_in: bool
    #: the powers it can be set to draw when planned modulated (:func:`settable_levels`); None: on/off
    settable: np.ndarray | None
    #: SoC planned above the target to cover what dispatch loses and what the estimate may be off
    margin: float = 0.0
    #: when it can start charging: now for a plugged-in car, the expected plug-in for an arrival
    #: the site expects (an unplugged car planned only to keep room for it)
    start: datetime | None = None
    expected: bool = False

    @property
    def modulated(self) -> bool:
        return self.settable is not None

    @property
    def min_kw(self) -> float | None:
        return None if self.settable is None else float(self.settable[0])

    @classmethod
    def of(cls, now: datetime, t: VehicleTrack, modulate: bool, margin: float = 0.0,
           margin_per_hour: float = 0.0, early_min: float = 0.0) -> CarView:
        caps = t.caps
        settable = settable_levels(caps, t.curve.max_kw) if modulate and caps.can_set_current else None
        # a car whose stop is not yet confirmed by a reading may still be drawing
        charging = t.charging or (t.expect is not None and not t.expect[0])
        age_h = 0.0 if t.soc_at is None else max(0.0, (now - t.soc_at).total_seconds() / 3600.0)
        deadline = t.deadline
        if deadline is not None and early_min < 0 and t.session_started is not None:
            # plan to be ready by when this driver (or drivers like them) may really leave; once
            # that moment has passed with the car still here, the declared ready-by is the goal
            early = max(deadline + timedelta(minutes=early_min),
                        t.session_started + timedelta(minutes=MIN_WINDOW_MIN))
            deadline = early if early > now else deadline
        return cls(t.vehicle_id, t.curve, t.soc_estimate(now), t.target, t.preferences.min_soc, t.limit,
                   deadline, t.plan, t.escalated or not t.reachable, charging, t.plugged_in, settable,
                   min(margin + margin_per_hour * age_h, MAX_MARGIN_SOC))

    @classmethod
    def arrival(cls, now: datetime, t: VehicleTrack, modulate: bool, within: timedelta) -> CarView | None:
        """An unplugged car's next plug-in as its history says (its usual time of day and the
        charge it usually needs), if it falls within ``within``; None without enough history."""
        history = t.history
        if t.plugged_in or len(history) < MIN_HISTORY:
            return None
        minutes = sorted(m for m, _ in history)[len(history) // 2]
        need = sorted(n for _, n in history)[len(history) // 2]
        at = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=minutes)
        if at <= now:
            at += timedelta(days=1)
        if at - now > within or need <= 0:
            return None
        caps = t.caps
        settable = settable_levels(caps, t.curve.max_kw) if modulate and caps.can_set_current else None
        return cls(t.vehicle_id, t.curve, max(0.0, t.target - need), t.target, t.preferences.min_soc, t.target,
                   t.preferences.deadline(at), None, False, False, False, settable, 0.0, at, True)

    def plannable(self, now: datetime) -> bool:
        return (self.deadline is not None and self.deadline > now and self.soc is not None
                and not self.uncontrollable and (self.start is None or self.start < self.deadline))

    def planned_kw(self, plan: SessionPlan | None, now: datetime, starts: list[datetime],
                   slot: timedelta) -> np.ndarray:
        """The most this car is expected to draw at any instant of each slot: by its plan, or
        flat out if it is uncontrollable or charging without a plan (a car that started by
        itself at plug-in counts until it is confirmed stopped)."""
        flat_out = self.uncontrollable or (plan is None and self.charging)
        if not (self.plugged_in or self.expected) or (not flat_out and plan is None):
            return np.zeros(len(starts))
        levels = [math.inf if flat_out else plan.level_at(s + slot / 2) for s in starts]
        if self.charging and not flat_out and levels and levels[0] <= 0:
            levels[0] = math.inf  # still drawing now, until its stop is confirmed
        begin = now if self.start is None else max(now, self.start)
        available = [max(0.0, (s + slot - max(s, begin)).total_seconds() / 3600.0) for s in starts]
        return drawing_kw(self.curve, self.soc or 0.0, self.limit, levels, available)


def plan_levels(plan: SessionPlan, first: datetime, slot: timedelta, count: int) -> np.ndarray:
    """A plan's levels (kW) on the grid of ``count`` slots from ``first`` (0 outside the plan)."""
    out = np.zeros(count)
    offset = (plan.first - first) // slot
    levels = plan.levels_kw
    lo, hi = max(0, offset), min(count, offset + len(levels))
    if hi > lo:
        out[lo:hi] = levels[lo - offset:hi - offset]
    return out


class _SmartJob:
    """A smart planning round, on captured views (see :meth:`Smart.prepare`)."""

    def __init__(self, smart: Smart, now: datetime, todo: list[CarView], fleet: list[CarView] | None,
                 first: datetime, price: np.ndarray, carbon: np.ndarray, base_load: np.ndarray | None = None) -> None:
        self.now, self.todo, self.fleet = now, todo, fleet
        self.first, self.price, self.carbon = first, price, carbon
        self.slot = smart.slot
        self.params = smart.params
        self.feeder_kw = smart.feeder_kw
        #: the fleet's own load is priced (peak weight, capacity signal, demand charge)
        self.load_aware = smart.load_aware
        self.capacity = smart.capacity_series(first, len(price)) if self.load_aware else None
        self.demand_peak_kw = smart.demand_peak_kw
        self.starts = [first + i * self.slot for i in range(len(price))]
        #: the load (kW per slot) of the plugged-in cars not planned here, by their plans' levels
        self.base_load = base_load
        self.expected_ids = {v.vehicle_id for v in fleet or () if v.expected}
        self.vehicle_ids = tuple(v.vehicle_id for v in (fleet if fleet is not None else todo)
                                 if v.vehicle_id not in self.expected_ids)

    def run(self) -> dict[str, SessionPlan]:
        now = self.now
        if self.feeder_kw is None and not self.load_aware:
            return self._plan(self.todo, None)
        if self.feeder_kw is None:
            # no limit, but the fleet's own load has a price: one car at a time, each seeing the
            # load the others already planned (no herding into the same cheapest slots); the
            # load is the plans' levels, which is all the price needs
            load = self.base_load.copy()
            order = least_slack_order([(v.deadline - now).total_seconds() / 3600.0 for v in self.todo],
                                      [v.curve for v in self.todo], [v.soc for v in self.todo],
                                      [v.target for v in self.todo])
            done = {}
            for i in order:
                v = self.todo[i]
                plan = done[v.vehicle_id] = self._plan([v], load)[v.vehicle_id]
                load += plan_levels(plan, self.first, self.slot, len(load))
            return done
        # One car at a time against the headroom the others leave, least slack first. If a car
        # cannot be fitted, the whole site is re-planned in that order, so cars that plugged in
        # early do not keep cheap slots a more urgent car needs.
        assert self.fleet is not None
        plans = {v.vehicle_id: v.plan for v in self.fleet}
        expected = [v for v in self.fleet if v.expected]
        if expected:
            # the arrivals the site expects take their room first, as they will when they come
            self._sequential(expected, plans)
        done = self._sequential(self.todo, plans)
        short = any(p is not None and p.expected_soc < v.target - SOC_TOLERANCE
                    for v in self.todo for p in [done.get(v.vehicle_id)])
        if short and len(self.fleet) > len(self.todo):
            everyone = [v for v in self.fleet if v.plannable(now)]
            done = self._site(everyone, plans)
        return {vid: p for vid, p in done.items() if vid not in self.expected_ids}

    def _site(self, everyone: list[CarView], plans: dict[str, SessionPlan | None]) -> dict[str, SessionPlan]:
        """The whole site planned again, least slack first; then, while some cars end short,
        up to ``REPAIR_ROUNDS`` more rounds with the short cars moved to the front, keeping the
        round with the least total shortfall."""
        now = self.now
        order = [everyone[i] for i in least_slack_order(
            [(v.deadline - now).total_seconds() / 3600.0 for v in everyone],
            [v.curve for v in everyone], [v.soc for v in everyone], [v.target for v in everyone])]
        best, best_short = None, math.inf
        for _ in range(1 + REPAIR_ROUNDS):
            trial = dict(plans)
            for v in order:
                trial[v.vehicle_id] = None
            done = self._sequential(order, trial, ordered=True)
            short = {v.vehicle_id: (v.target - done[v.vehicle_id].expected_soc) * v.curve.battery_kwh
                     for v in order if done[v.vehicle_id].expected_soc < v.target - SOC_TOLERANCE
                     and not v.expected}
            total = sum(short.values())
            if total < best_short - 1e-9:
                best, best_short = (done, trial), total
            if not short:
                break
            order = [v for v in order if v.vehicle_id in short] + [v for v in order if v.vehicle_id not in short]
        done, trial = best
        plans.update(trial)
        return done

    def _sequential(self, views: list[CarView], plans: dict[str, SessionPlan | None],
                    ordered: bool = False) -> dict[str, SessionPlan]:
        now = self.now
        if not ordered:
            order = least_slack_order([(v.deadline - now).total_seconds() / 3600.0 for v in views],
                                      [v.curve for v in views], [v.soc for v in views], [v.target for v in views])
            views = [views[i] for i in order]
        # the most the other cars draw at any instant of each slot: those not being planned
        # here by their current plans, then each car planned here as soon as it is
        pending = {v.vehicle_id for v in views}
        load = np.zeros(len(self.starts))
        for o in self.fleet:
            if o.vehicle_id not in pending:
                load += o.planned_kw(plans[o.vehicle_id], now, self.starts, self.slot)
        done: dict[str, SessionPlan] = {}
        for v in views:
            plan = self._plan([v], load, plans)[v.vehicle_id]
            plans[v.vehicle_id] = done[v.vehicle_id] = plan
            load += v.planned_kw(plan, now, self.starts, self.slot)
        return done

    def _plan(self, views: list[CarView], load: np.ndarray | None,
              plans: dict[str, SessionPlan | None] | None = None) -> dict[str, SessionPlan]:
        """Plan ``views`` together (no load given), or one car against the ``load`` (kW per
        slot) the others draw: under the feeder's room, and with the fleet's load priced."""
        now, slot = self.now, self.slot
        slot_s = slot.total_seconds()
        first = self.first
        count = max(1, ceil((max(v.deadline for v in views) - first).total_seconds() / slot_s))
        count = min(count, len(self.price))
        price, carbon = self.price[:count], self.carbon[:count]
        feeder = None
        starts_at = [(max(now, v.start) if v.start is not None else now) for v in views]
        curves = [v.curve for v in views]
        if load is not None and self.load_aware:
            price = price + self._load_price(load[:count], curves[0].max_kw, count)
        if load is not None and self.feeder_kw is not None:
            residual = float(self.feeder_kw) - load[:count]
            start = (starts_at[0] - first).total_seconds() / slot_s
            end = min(count, (views[0].deadline - first).total_seconds() / slot_s)
            t = np.arange(count)
            available = np.clip(np.minimum(t + 1, end) - np.maximum(t, start), 0.0, 1.0)
            price, feeder = feeder_room(price, residual, curves[0], views[0].min_kw, available)
        problem = session_problem(
            curves, slot_hours=slot_s / 3600.0,
            soc0=[min(v.soc, v.target) for v in views], target_soc=[min(1.0, v.target + v.margin) for v in views],
            min_soc=[v.min_soc for v in views],
            start_slot=[(t - first).total_seconds() / slot_s for t in starts_at],
            end_slot=[min(count, (v.deadline - first).total_seconds() / slot_s) for v in views],
            price=price, carbon=carbon, params=self.params, modulated=[v.modulated for v in views],
            feeder_kw=feeder, vehicle_ids=[v.vehicle_id for v in views],
        )
        solved = session_plans(problem, scheduler().solve(problem), curves, first, slot, [v.settable for v in views])
        # the car stops at its own limit (the target): the margin is time, not charge
        return {v.vehicle_id: replace(p, expected_soc=min(p.expected_soc, v.target)) for v, p in zip(views, solved)}


    def _load_price(self, load: np.ndarray, kw: float, count: int) -> np.ndarray:
        """What the fleet's own load adds to each slot's price (GBP/kWh) for a car of ``kw``:

        * ``peak_weight_gbp_per_kwh`` × (load + kw/2) / capacity: the marginal cost of a
          quadratic price on the fleet's load, so cars spread over near-equal slots instead of
          herding into the cheapest one (capacity: the network operator's signal, or the fleet's
          total power);
        * ``capacity_price_gbp_per_kwh`` where the load would go above the capacity signal;
        * the demand charge (GBP per kW of the month's peak) per kWh, where the load would go
          above the highest the site has drawn or planned this month.
        """
        p = self.params
        cap = self.capacity[:count]
        extra = p.peak_weight_gbp_per_kwh * (load + kw / 2.0) / cap
        if p.capacity_price_gbp_per_kwh:
            extra = extra + np.where(load + kw > cap + 1e-9, p.capacity_price_gbp_per_kwh, 0.0)
        if p.demand_charge_gbp_per_kw_month:
            peak = max(self.demand_peak_kw, float(load.max(initial=0.0)))
            over = np.clip(load + kw - peak, 0.0, kw)
            extra = extra + p.demand_charge_gbp_per_kw_month * over / (kw * self.slot.total_seconds() / 3600.0)
        return extra


class Smart(PlanFollower):
    """Plan on what could be known, re-plan on news (see the module docstring).

    ``modulate``: plan cars whose charging current can be set with continuous power.
    """

    name = "smart"

    def __init__(self, slot_minutes: int, params: ControlParams | None = None,
                 feeder_kw: float | None = None, *, modulate: bool = True) -> None:
        self.params = params or ControlParams()
        self.slot = timedelta(minutes=slot_minutes)
        self.book = PriceBook(slot_minutes)
        self.feeder_kw = feeder_kw
        self.modulate = modulate
        #: the highest load the fleet has planned this billing month (kW), and that month
        self.demand_peak_kw = 0.0
        self._month: tuple[int, int] | None = None
        #: (the departures it was computed from, minutes) of the site drivers' early-departure
        #: quantile (see ``_pool``)
        self._pooled: tuple[tuple[int, float], float] | None = None
        #: every car of the site, plugged in or not (the controller sets it when it registers
        #: cars): under a feeder the arrivals the site expects keep room
        self.site_tracks: Callable[[], Iterable[VehicleTrack]] = lambda: ()
        if not modulate:
            self.name = "smart_onoff"

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        self.book.update(event.frame)
        return True

    @property
    def load_aware(self) -> bool:
        """Whether plans price the fleet's own load (see ``_SmartJob._load_price``)."""
        p = self.params
        return bool(p.peak_weight_gbp_per_kwh or p.capacity_price_gbp_per_kwh or p.demand_charge_gbp_per_kw_month)

    def capacity_series(self, first: datetime, count: int) -> np.ndarray:
        """Capacity (kW) per slot: the network operator's signal where published, otherwise the
        total power of the site's cars."""
        fleet_kw = sum(t.curve.max_kw for t in self.site_tracks()) or 1.0
        cap = self.book.capacity(first, count)
        return np.where(np.isnan(cap), fleet_kw, np.maximum(cap, 1e-3))

    def _view(self, now: datetime, t: VehicleTrack) -> CarView:
        return CarView.of(now, t, self.modulate, self.params.plan_margin_soc, self.params.margin_soc_per_hour,
                          self._early_minutes(now, t))

    def _early_minutes(self, now: datetime, t: VehicleTrack) -> float:
        """How much before the declared ready-by to plan for (minutes, <= 0): the
        ``departure_quantile`` of this driver's departures relative to their ready-by, or of all
        the site's drivers' while theirs are few."""
        q = self.params.departure_quantile
        if q <= 0:
            return 0.0
        own = t.departures
        if len(own) >= MIN_DEPARTURES:
            return min(0.0, float(floor(np.quantile(own, q))))  # whole minutes, like a ready-by
        return self._pooled[1]

    def _pool(self) -> None:
        """Refresh the site drivers' early-departure quantile when a departure was recorded
        since (a function of the recorded departures only, so every host and a restored
        controller plan alike)."""
        q = self.params.departure_quantile
        if q <= 0:
            return
        tracks = [x.departures for x in self.site_tracks() if x.departures]
        key = (sum(len(d) for d in tracks), sum(d[-1] for d in tracks))
        if self._pooled is not None and self._pooled[0] == key:
            return
        every = [m for d in tracks for m in d]
        # until drivers' habits are known; not under a site limit, where the room an earlier
        # aim takes is room the other cars need (a tight site then leaves cars short)
        prior = -self.params.departure_prior_min if self.feeder_kw is None else 0.0
        self._pooled = (key, min(0.0, float(floor(np.quantile(every, q)))) if len(every) >= 3 * MIN_DEPARTURES else prior)

    def prepare(self, now: datetime, tracks: Sequence[VehicleTrack],
                fleet: Sequence[VehicleTrack]) -> PlanJob | None:
        self._pool()
        todo = [v for v in (self._view(now, t) for t in tracks) if v.plannable(now)]
        if not todo:
            return None
        views = None
        horizon = todo
        if self.feeder_kw is not None:
            mine = {v.vehicle_id: v for v in todo}
            views = [mine.get(t.vehicle_id) or self._view(now, t) for t in fleet]
            horizon = [v for v in views if v.plannable(now)]
            within = max(v.deadline for v in horizon) - now
            plugged = {t.vehicle_id for t in fleet}
            for t in self.site_tracks():
                if t.vehicle_id not in plugged:
                    v = CarView.arrival(now, t, self.modulate, within)
                    if v is not None and v.plannable(now):
                        views.append(v)
        slot_s = self.slot.total_seconds()
        first = _EPOCH + timedelta(seconds=floor((now - _EPOCH).total_seconds() / slot_s) * slot_s)
        count = max(1, ceil((max(v.deadline for v in horizon) - first).total_seconds() / slot_s))
        price, carbon = self.book.series(first, count)
        base = None
        if self.load_aware and self.feeder_kw is None:
            mine = {v.vehicle_id for v in todo}
            base = np.zeros(count)
            for t in fleet:
                if t.vehicle_id not in mine and t.plan is not None:
                    base += plan_levels(t.plan, first, self.slot, count)
            if self.params.demand_charge_gbp_per_kw_month:
                self._note_peak(now, float(base[:1].max(initial=0.0)))
        elif self.params.demand_charge_gbp_per_kw_month and views is not None:
            starts = [first + i * self.slot for i in range(count)]
            load = np.zeros(count)
            for v in views:
                if v.plugged_in:
                    load += v.planned_kw(v.plan, now, starts, self.slot)
            self._note_peak(now, float(load[:1].max(initial=0.0)))
        return _SmartJob(self, now, todo, views, first, price, carbon, base)

    def _note_peak(self, now: datetime, load_now_kw: float) -> None:
        """Keep the highest load the fleet has drawn by its plans this month (the demand charge
        is paid once for it: slots under it cost nothing more)."""
        month = (now.year, now.month)
        if month != self._month:
            self._month, self.demand_peak_kw = month, 0.0
        self.demand_peak_kw = max(self.demand_peak_kw, load_now_kw)

    def snapshot(self) -> dict[str, Any]:
        return {"book": self.book.to_json(), "demand_peak_kw": self.demand_peak_kw,
                "month": None if self._month is None else list(self._month)}

    def restore(self, data: Mapping[str, Any]) -> None:
        self.book.load_json(data["book"])
        self.demand_peak_kw = data["demand_peak_kw"]
        self._month = None if data["month"] is None else tuple(data["month"])


class _Lookup:
    """Optimal's job: look the plans up (cheap, but through the same request path)."""

    def __init__(self, plans: dict[str, SessionPlan | None]) -> None:
        self.plans = plans
        self.vehicle_ids = tuple(plans)

    def run(self) -> dict[str, SessionPlan | None]:
        return dict(self.plans)


class Optimal(PlanFollower):
    """Follow precomputed perfect-foresight plans, one per (vehicle, session)."""

    name = "optimal"

    def __init__(self, plans: dict[str, list[SessionPlan]], arrivals: dict[str, list[datetime]]) -> None:
        self._plans = plans
        self._arrivals = arrivals

    def prepare(self, now: datetime, tracks: Sequence[VehicleTrack],
                fleet: Sequence[VehicleTrack]) -> PlanJob | None:
        out: dict[str, SessionPlan | None] = {}
        for t in tracks:
            arrivals = self._arrivals.get(t.vehicle_id, [])
            # the session that started last at or before the plug-in we saw (a second of slack
            # absorbs time rounding between the table and the simulated clock)
            seen = (t.session_started or now) + timedelta(seconds=1)
            k = max((i for i, a in enumerate(arrivals) if a <= seen), default=None)
            out[t.vehicle_id] = self._plans[t.vehicle_id][k] if k is not None else None
        return _Lookup(out)


def make_policy(name: str, settings: ControlSettings, *, optimal: Optimal | None = None) -> Policy:
    """The policy called ``name`` (one of :data:`POLICIES`) for ``settings``.

    ``optimal`` needs the perfect-foresight plans, which only the twin can compute
    (:func:`twin.foresight.optimal_policy`); pass the policy it built.
    """
    if name == "uncontrolled":
        return Uncontrolled()
    if name == "edf":
        return EarliestDeadlineFirst(settings.feeder_kw)
    if name in ("smart", "smart_onoff"):
        return Smart(settings.slot_minutes, settings.params, settings.feeder_kw, modulate=name == "smart")
    if name == "optimal":
        if optimal is None:
            raise ValueError("the optimal policy replays perfect-foresight plans; build it with "
                             "twin.foresight.optimal_policy(...) and pass it as optimal=")
        return optimal
    raise ValueError(f"unknown policy '{name}'; choose one of: {', '.join(POLICIES)}")
