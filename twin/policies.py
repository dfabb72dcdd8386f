"""Plan-following control policies: ``smart`` and ``optimal``.

Both hand the controller a :class:`~twin.controller.SessionPlan` per plugged-in car (which
settlement slots to charge in) and let it dispatch start/stop at the slot boundaries. They plan
in **on/off** mode: most OEM APIs can only start and stop a car, which then charges at its own
rate (see :mod:`twin.scheduler`).

``smart``
    Plans each car when it plugs in, from what the platform could know then: the published
    price and carbon forecasts (:class:`PriceBook`, persistence beyond the published horizon),
    the car's estimated SoC and the driver's ready-by and target. It re-plans when a reading
    deviates from the plan, when new forecasts are published, when preferences change and when
    a car is escalated. With a site feeder limit, each car is planned against the capacity the
    other cars' plans (and escalated, uncontrollable cars) leave free.
``optimal``
    Replays the perfect-foresight plan of every session (:mod:`twin.foresight`): arrival,
    departure and actual prices known in advance. The bound other policies are measured
    against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from math import ceil, floor

import numpy as np
import pandas as pd

from twin.controller import SOC_TOLERANCE, ForecastUpdated, SessionPlan, VehicleTrack
from twin.scheduler import FleetProblem, solve

__all__ = ["ControlParams", "PriceBook", "Smart", "Optimal", "PlanFollower"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Persistence forecast: beyond the published horizon, assume a slot costs what the same slot
# did this many days earlier (the first one known), the usual naive forecast for day-ahead
# prices and carbon intensity.
_PERSISTENCE_DAYS = (1, 2, 7)


@dataclass(frozen=True)
class ControlParams:
    """What the planning policies optimise: cost + weight × carbon, per car, on/off."""

    carbon_weight_gbp_per_kg: float = 0.0
    # Each start is an OEM call that may wake the car; a few pence per start stops a plan from
    # toggling a car for a saving smaller than the risk of the command going wrong.
    start_penalty_gbp: float = 0.02
    min_run_slots: int = 1


class PriceBook:
    """What the platform currently expects each slot's price and carbon to be."""

    def __init__(self, slot_minutes: int) -> None:
        self.slot_s = slot_minutes * 60
        self._price: dict[int, float] = {}
        self._carbon: dict[int, float] = {}

    def update(self, frame: pd.DataFrame) -> None:
        keys = ((frame.index - pd.Timestamp(_EPOCH)) // pd.Timedelta(seconds=1)).to_numpy()
        self._price.update(zip(keys.tolist(), frame["price_gbp_per_kwh"].to_numpy().tolist()))
        self._carbon.update(zip(keys.tolist(), frame["carbon_g_per_kwh"].to_numpy().tolist()))

    def series(self, first: datetime, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Expected price (GBP/kWh) and carbon (gCO2/kWh) for ``count`` slots from ``first``."""
        k0 = int((first - _EPOCH).total_seconds())
        keys = [k0 + i * self.slot_s for i in range(count)]
        return self._lookup(self._price, keys), self._lookup(self._carbon, keys)

    def _lookup(self, table: dict[int, float], keys: list[int]) -> np.ndarray:
        out = np.empty(len(keys))
        fallback = float(np.mean(list(table.values()))) if table else 0.0
        for i, k in enumerate(keys):
            value = table.get(k)
            if value is None:
                for days in _PERSISTENCE_DAYS:
                    value = table.get(k - days * 86400)
                    if value is not None:
                        break
            out[i] = fallback if value is None else value
        return out


class PlanFollower:
    """Common behaviour of policies that follow a per-session plan."""

    name = "plan"

    def wants_charging(self, now: datetime, track: VehicleTrack) -> bool:
        if not track.plugged_in:
            return False
        soc = track.soc_estimate(now)
        if soc is not None and soc < track.preferences.min_soc - SOC_TOLERANCE:
            return True  # below the driver's minimum: charge now whatever the price
        return track.plan is not None and track.plan.on_at(now)

    def next_change(self, now: datetime, track: VehicleTrack) -> datetime | None:
        return track.plan.next_change(now) if track.plan is not None else None

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        return False

    def outlook(self, now: datetime, track: VehicleTrack) -> tuple[datetime | None, float]:
        if track.plan is None:
            return None, track.soc_estimate(now) or 0.0
        start = track.plan.charge_start_at
        return (max(start, now) if start is not None else None), track.plan.expected_soc


class Smart(PlanFollower):
    """Plan on what could be known, re-plan on news (see the module docstring)."""

    name = "smart"

    def __init__(self, slot_minutes: int, params: ControlParams | None = None,
                 feeder_kw: float | None = None) -> None:
        self.params = params or ControlParams()
        self.slot = timedelta(minutes=slot_minutes)
        self.book = PriceBook(slot_minutes)
        self.feeder_kw = feeder_kw
        #: wall time spent solving, seconds (for reports)
        self.solve_seconds = 0.0

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        self.book.update(event.frame)
        return True

    def replan(self, now: datetime, tracks: Sequence[VehicleTrack], fleet: Sequence[VehicleTrack]) -> None:
        tracks = [t for t in tracks if t.deadline is not None and t.deadline > now and t.soc_estimate(now) is not None]
        if not tracks:
            return
        if self.feeder_kw is None:
            self._plan(now, tracks, None)
            return
        # one car at a time against what the others leave free
        chosen = {t.vehicle_id for t in tracks}
        for t in tracks:
            others = [o for o in fleet if o.vehicle_id != t.vehicle_id and (o.vehicle_id not in chosen or o.plan)]
            self._plan(now, [t], others)

    def _grid(self, now: datetime, end: datetime) -> tuple[datetime, int]:
        slot_s = self.slot.total_seconds()
        epoch_s = (now - _EPOCH).total_seconds()
        first = _EPOCH + timedelta(seconds=floor(epoch_s / slot_s) * slot_s)
        count = max(1, ceil((end - first).total_seconds() / slot_s))
        return first, count

    def _plan(self, now: datetime, tracks: list[VehicleTrack], others: list[VehicleTrack] | None) -> None:
        first, count = self._grid(now, max(t.deadline for t in tracks))
        price, carbon = self.book.series(first, count)
        slot_s = self.slot.total_seconds()
        feeder = None
        if others is not None:
            feeder = np.full(count, float(self.feeder_kw))
            starts = [first + i * self.slot for i in range(count)]
            for o in others:
                feeder -= _planned_kw(o, now, starts, self.slot)
            feeder = np.maximum(feeder, 0.0)
        c = [t.curve for t in tracks]
        problem = FleetProblem(
            slot_hours=slot_s / 3600.0,
            battery_kwh=[x.battery_kwh for x in c],
            soc0=[min(t.soc_estimate(now), t.target) for t in tracks],
            target_soc=[t.target for t in tracks],
            min_soc=[min(t.preferences.min_soc, t.target) for t in tracks],
            start_slot=[(now - first).total_seconds() / slot_s] * len(tracks),
            end_slot=[(t.deadline - first).total_seconds() / slot_s for t in tracks],
            max_kw=[x.max_kw for x in c],
            vehicle_max_kw=[x.vehicle_kw for x in c],
            efficiency=[x.efficiency for x in c],
            taper_knee_soc=[x.knee_soc for x in c],
            taper_floor_kw=[min(x.floor_kw, x.vehicle_kw) for x in c],
            price_gbp_per_kwh=price,
            carbon_g_per_kwh=carbon,
            carbon_weight_gbp_per_kg=self.params.carbon_weight_gbp_per_kg,
            feeder_kw=feeder,
            mode="onoff",
            start_penalty_gbp=self.params.start_penalty_gbp,
            min_run_slots=self.params.min_run_slots,
            vehicle_ids=[t.vehicle_id for t in tracks],
        )
        plan = solve(problem)
        self.solve_seconds += plan.solve_seconds
        starts = tuple(first + i * self.slot for i in range(count))
        end = first + count * self.slot
        for i, t in enumerate(tracks):
            on = plan.on[i] if plan.on is not None else plan.energy_kwh[i] > 0
            t.plan = SessionPlan(starts, tuple(bool(v) for v in on), end, float(plan.soc_at_end[i]))


def _planned_kw(track: VehicleTrack, now: datetime, starts: list[datetime], slot: timedelta) -> np.ndarray:
    """Power a car is expected to draw per slot: its plan, or flat out if uncontrollable."""
    out = np.zeros(len(starts))
    if not track.plugged_in:
        return out
    kw = track.curve.max_kw
    if track.escalated or (track.plan is None and track.charging):
        soc = track.soc_estimate(now) or 0.0
        hours = track.curve.hours_to(soc, track.limit)
        done = now + timedelta(hours=min(hours, 1e4))
        for i, s in enumerate(starts):
            out[i] = kw if s < done else 0.0
        return out
    if track.plan is not None:
        for i, s in enumerate(starts):
            out[i] = kw if track.plan.on_at(s + slot / 2) else 0.0
    return out


class Optimal(PlanFollower):
    """Follow precomputed perfect-foresight plans, one per (vehicle, session)."""

    name = "optimal"

    def __init__(self, plans: dict[str, list[SessionPlan]], arrivals: dict[str, list[datetime]]) -> None:
        self._plans = plans
        self._arrivals = arrivals

    def replan(self, now: datetime, tracks: Sequence[VehicleTrack], fleet: Sequence[VehicleTrack]) -> None:
        for t in tracks:
            arrivals = self._arrivals.get(t.vehicle_id, [])
            # the session that started last at or before the plug-in we saw
            seen = t.session_started or now
            k = max((i for i, a in enumerate(arrivals) if a <= seen), default=None)
            t.plan = self._plans[t.vehicle_id][k] if k is not None else None
