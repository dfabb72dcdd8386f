"""Plan-following control policies: ``smart`` and ``optimal``.

Both hand the controller a :class:`~twin.controller.SessionPlan` per plugged-in car (which
settlement slots to charge in) and let it dispatch start/stop at the slot boundaries. They plan
in **on/off** mode: most OEM APIs can only start and stop a car, which then charges at its own
rate (see :mod:`twin.scheduler`).

``smart``
    Plans each car when it plugs in, from what the platform could know then: the published
    price and carbon forecasts (:class:`PriceBook`, persistence beyond the published horizon),
    the car's estimated SoC and the driver's ready-by and target. It re-plans when a reading
    deviates from the plan, when a start lands late, when new forecasts are published, when
    preferences change and when a car is escalated. With a site feeder limit, each car is planned against the capacity the
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

from twin.battery import ChargeCurve
from twin.controller import SOC_TOLERANCE, ForecastUpdated, SessionPlan, VehicleTrack
from twin.scheduler import FleetProblem, solve

__all__ = ["ControlParams", "PriceBook", "Smart", "Optimal", "PlanFollower", "expected_kw", "block_full_slots"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A slot the feeder cannot take the car in is priced out of the plan. The price must beat the
# scheduler's shortfall penalty (100 GBP/kWh by default): missing the target is better than
# overloading the site.
BLOCKED_PRICE_GBP_PER_KWH = 1e4


def block_full_slots(price: np.ndarray, residual_kw: np.ndarray, max_kw: float) -> np.ndarray:
    """Prices for an on/off car that may only charge where ``residual_kw`` fits its power.

    An on/off car draws its full power or nothing, so a slot with less headroom than that is
    off limits: planning it at a prohibitive price is exact for one car.
    """
    return np.where(residual_kw + 1e-9 >= max_kw, price, BLOCKED_PRICE_GBP_PER_KWH)


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
        """Take the known (non-NaN) values of a forecast frame (see ``ForecastUpdated``)."""
        keys = ((frame.index - pd.Timestamp(_EPOCH)) // pd.Timedelta(seconds=1)).to_numpy().tolist()
        for table, column in ((self._price, "price_gbp_per_kwh"), (self._carbon, "carbon_g_per_kwh")):
            values = frame[column].to_numpy().tolist()
            table.update((k, v) for k, v in zip(keys, values) if v == v)

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

    def on_forecast(self, now: datetime, event: ForecastUpdated) -> bool:
        self.book.update(event.frame)
        return True

    def replan(self, now: datetime, tracks: Sequence[VehicleTrack],
               fleet: Sequence[VehicleTrack]) -> Sequence[VehicleTrack]:
        tracks = [t for t in tracks if self._plannable(now, t)]
        if not tracks:
            return []
        if self.feeder_kw is None:
            self._plan(now, tracks, None)
            return tracks
        # One car at a time against the headroom the others leave, least slack first. If a car
        # cannot be fitted, the whole site is re-planned in that order, so cars that plugged in
        # early do not keep cheap slots a more urgent car needs.
        done = self._sequential(now, sorted(tracks, key=lambda t: self._slack(now, t)), fleet)
        short = any(t.plan is not None and t.plan.expected_soc < t.target - SOC_TOLERANCE for t in done)
        if short and len(fleet) > len(done):
            everyone = [t for t in fleet if self._plannable(now, t)]
            for t in everyone:
                t.plan = None
            done = self._sequential(now, sorted(everyone, key=lambda t: self._slack(now, t)), fleet)
        return done

    @staticmethod
    def _plannable(now: datetime, t: VehicleTrack) -> bool:
        return t.deadline is not None and t.deadline > now and t.soc_estimate(now) is not None and not t.escalated

    @staticmethod
    def _slack(now: datetime, t: VehicleTrack) -> float:
        """Hours to spare if the car charged flat out from now."""
        hours = t.curve.hours_to(t.soc_estimate(now) or 0.0, t.target)
        return (t.deadline - now).total_seconds() / 3600.0 - hours

    def _sequential(self, now: datetime, order: list[VehicleTrack],
                    fleet: Sequence[VehicleTrack]) -> list[VehicleTrack]:
        pending = {t.vehicle_id for t in order}
        for t in order:
            pending.discard(t.vehicle_id)
            others = [o for o in fleet if o.vehicle_id != t.vehicle_id and o.vehicle_id not in pending]
            self._plan(now, [t], others)
        return order

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
        c = [t.curve for t in tracks]
        if others is not None:
            residual = np.full(count, float(self.feeder_kw))
            starts = [first + i * self.slot for i in range(count)]
            for o in others:
                residual -= _planned_kw(o, now, starts, self.slot)
            price = np.stack([block_full_slots(price, residual, x.max_kw) for x in c])
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
            mode="onoff",
            start_penalty_gbp=self.params.start_penalty_gbp,
            min_run_slots=self.params.min_run_slots,
            vehicle_ids=[t.vehicle_id for t in tracks],
        )
        plan = solve(problem)
        starts = tuple(first + i * self.slot for i in range(count))
        end = first + count * self.slot
        for i, t in enumerate(tracks):
            on = plan.on[i] if plan.on is not None else plan.energy_kwh[i] > 0
            t.plan = SessionPlan(starts, tuple(bool(v) for v in on), end, float(plan.soc_at_end[i]))


def expected_kw(curve: ChargeCurve, soc: float, limit: float, on: Sequence[bool],
                available_h: Sequence[float], slot_h: float) -> np.ndarray:
    """Average power (kW) a car draws per slot when switched on in ``on`` slots.

    It charges along its curve for ``available_h`` hours of each on-slot and stops at
    ``limit``, so once it is expected to be full it stops counting.
    """
    out = np.zeros(len(on))
    kwh_per_soc = curve.battery_kwh / curve.efficiency
    for i, (is_on, hours) in enumerate(zip(on, available_h)):
        if soc >= limit - SOC_TOLERANCE:
            break
        if is_on and hours > 0:
            after = min(limit, curve.soc_after(soc, hours))
            out[i] = (after - soc) * kwh_per_soc / slot_h
            soc = after
    return out


def _planned_kw(track: VehicleTrack, now: datetime, starts: list[datetime], slot: timedelta) -> np.ndarray:
    """What another plugged-in car is expected to draw per slot: its plan, or flat out if it is
    uncontrollable (escalated) or charging without a plan."""
    flat_out = track.escalated or (track.plan is None and track.charging)
    if not track.plugged_in or (not flat_out and track.plan is None):
        return np.zeros(len(starts))
    on = [flat_out or track.plan.on_at(s + slot / 2) for s in starts]
    available = [max(0.0, (s + slot - max(s, now)).total_seconds() / 3600.0) for s in starts]
    return expected_kw(track.curve, track.soc_estimate(now) or 0.0, track.limit, on, available,
                       slot.total_seconds() / 3600.0)


class Optimal(PlanFollower):
    """Follow precomputed perfect-foresight plans, one per (vehicle, session)."""

    name = "optimal"

    def __init__(self, plans: dict[str, list[SessionPlan]], arrivals: dict[str, list[datetime]]) -> None:
        self._plans = plans
        self._arrivals = arrivals

    def replan(self, now: datetime, tracks: Sequence[VehicleTrack],
               fleet: Sequence[VehicleTrack]) -> Sequence[VehicleTrack]:
        for t in tracks:
            arrivals = self._arrivals.get(t.vehicle_id, [])
            # the session that started last at or before the plug-in we saw (a second of slack
            # absorbs time rounding between the table and the simulated clock)
            seen = (t.session_started or now) + timedelta(seconds=1)
            k = max((i for i, a in enumerate(arrivals) if a <= seen), default=None)
            t.plan = self._plans[t.vehicle_id][k] if k is not None else None
        return tracks
