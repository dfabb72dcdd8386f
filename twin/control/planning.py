"""From cars and signals to scheduler problems and back to session plans.

Both the ``smart`` policy (planning on forecasts, at plug-in) and the perfect-foresight bound
(:mod:`twin.foresight`, planning every session on actual prices) state their problems through
:func:`session_problem`, order cars under a feeder limit with :func:`least_slack_order`, keep an
on/off car out of slots without room for it with :func:`block_full_slots`, and predict what a
planned car will draw at any instant with :func:`drawing_kw`. Each of these exists once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from twin.battery import ChargeCurve
from twin.control.config import ControlParams
from twin.control.track import SessionPlan, VehicleTrack
from twin.domain import SOC_TOLERANCE
from twin.oem import Capabilities

if TYPE_CHECKING:  # the scheduler (Pyomo, HiGHS, OR-Tools) loads only when a policy plans
    from twin.scheduler import FleetProblem, Plan

__all__ = [
    "BLOCKED_PRICE_GBP_PER_KWH", "block_full_slots", "drawing_kw", "least_slack_order", "session_problem",
    "session_plans", "feeder_room", "settable_levels", "flat_out_plan", "scheduler",
]

_SCHEDULER = None


def scheduler():
    """The :mod:`twin.scheduler` package, imported on first use: it pulls in Pyomo, HiGHS and
    OR-Tools, which an uncontrolled run never needs. Cached here because an import statement
    inside a function costs microseconds on every call, and planning runs thousands of times."""
    global _SCHEDULER
    if _SCHEDULER is None:
        import twin.scheduler

        _SCHEDULER = twin.scheduler
    return _SCHEDULER


# A slot the feeder cannot take the car in is priced out of the plan. The price must beat the
# scheduler's shortfall penalty (100 GBP/kWh by default): missing the target is better than
# overloading the site.
BLOCKED_PRICE_GBP_PER_KWH = 1e4


def session_problem(
    curves: Sequence[ChargeCurve], *, slot_hours: float, soc0, target_soc, min_soc, start_slot, end_slot,
    price, carbon, params: ControlParams, modulated=False, feeder_kw=None, vehicle_ids=None,
) -> FleetProblem:
    """The scheduler problem of charging sessions: one row per car, on the slot grid.

    ``curves`` give each car's battery, power limits, efficiency and taper; ``modulated`` (per car
    or for all) chooses continuous power over on/off control; ``price`` may be (T,) or (N, T).
    """
    return scheduler().FleetProblem(
        slot_hours=slot_hours,
        battery_kwh=[c.battery_kwh for c in curves],
        soc0=soc0,
        target_soc=target_soc,
        min_soc=np.minimum(min_soc, target_soc),
        start_slot=start_slot,
        end_slot=end_slot,
        max_kw=[c.max_kw for c in curves],
        vehicle_max_kw=[c.vehicle_kw for c in curves],
        efficiency=[c.efficiency for c in curves],
        taper_knee_soc=[c.knee_soc for c in curves],
        taper_floor_kw=[min(c.floor_kw, c.vehicle_kw) for c in curves],
        price_gbp_per_kwh=price,
        carbon_g_per_kwh=carbon,
        carbon_weight_gbp_per_kg=params.carbon_weight_gbp_per_kg,
        feeder_kw=feeder_kw,
        mode=_modes(modulated, len(curves)),
        start_penalty_gbp=params.start_penalty_gbp,
        min_run_slots=params.min_run_slots,
        vehicle_ids=vehicle_ids,
    )


def settable_levels(caps: Capabilities, max_kw: float) -> np.ndarray:
    """The powers (kW, ascending) a car can be set to draw: each settable current below its own
    maximum ``max_kw``, and that maximum (its largest current, as the charger caps it)."""
    amps = np.arange(caps.min_amps, caps.max_amps + 1e-9, caps.amps_step)
    kw = amps * caps.kw_per_amp()
    return np.append(kw[kw < max_kw - 1e-9], max_kw)


def _modes(modulated, n: int):
    """The scheduler's ``mode``: one string when every car is alike (its fast validation path)."""
    flags = [bool(modulated)] * n if np.ndim(modulated) == 0 else [bool(m) for m in modulated]
    if not any(flags):
        return "onoff"
    if all(flags):
        return "modulated"
    return ["modulated" if m else "onoff" for m in flags]


def session_plans(problem: FleetProblem, plan: Plan, curves: Sequence[ChargeCurve], first: datetime,
                  slot: timedelta, settable: Sequence[np.ndarray | None] | None = None) -> list[SessionPlan]:
    """One :class:`SessionPlan` per row of a solved ``problem`` on the grid starting at ``first``.

    An on/off car's level is its own rate where it is on. A modulated car's level is the power
    that delivers the slot's planned energy in the part of the slot it is plugged in, moved onto
    the powers the car can be set to (``settable[i]``, see :func:`settable_levels`): each level
    rounded down, then raised a step at a time in the cheapest slots with room until the planned
    energy is back. Room is the car's own maximum, or for a car planned alone into a feeder's
    room (a one-car problem with ``feeder_kw``) that room, so the site stays under its limit.
    """
    out = []
    modulated = ~problem.is_onoff
    energy = plan.energy_kwh
    on = plan.on if plan.on is not None else energy > 0
    for i, curve in enumerate(curves):
        if modulated[i]:
            avail = problem.availability
            with np.errstate(divide="ignore", invalid="ignore"):
                kw = np.where(energy[i] > 0, energy[i] / (problem.slot_hours * avail[i]), 0.0)
            kw = np.minimum(kw, curve.max_kw)
            grid = None if settable is None else settable[i]
            if grid is not None:
                room = np.full(len(kw), curve.max_kw)
                if problem.feeder_kw is not None and problem.n_cars == 1:
                    # the room while the car charges (feeder_room scaled it to a slot average)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        room = np.minimum(room, np.where(avail[i] > 0, problem.feeder_kw / avail[i], 0.0))
                # above the knee the car's own taper sets the power: ask for as much as there
                # is room for and let the car take what it can
                tapered = (energy[i] > 0) & (plan.soc[i, 1:] > curve.taper_soc)
                kw = _on_settable(kw, avail[i], room, problem.unit_cost()[i], problem.slot_hours, grid, tapered)
            levels = tuple(float(v) for v in kw)
        else:
            levels = tuple(curve.max_kw if v else 0.0 for v in on[i].tolist())
        out.append(SessionPlan(first, slot, levels, float(plan.soc_at_end[i]), bool(modulated[i])))
    return out


def _on_settable(kw: np.ndarray, avail: np.ndarray, room: np.ndarray, cost: np.ndarray, slot_h: float,
                 grid: np.ndarray, tapered: np.ndarray) -> np.ndarray:
    """``kw`` per slot moved onto ``grid`` without losing energy (see :func:`session_plans`);
    ``tapered`` slots get all the room there is and stay out of the energy balance."""
    hours = np.where(tapered, 0.0, avail * slot_h)
    need = float((kw * hours).sum())
    # index of the largest settable power at or below each level and each slot's room (-1: none)
    top = np.searchsorted(grid, room + 1e-9, side="right") - 1
    at = np.where(tapered, top, np.minimum(np.searchsorted(grid, kw + 1e-9, side="right") - 1, top))
    power = lambda k: np.where(k >= 0, grid[np.maximum(k, 0)], 0.0)  # noqa: E731
    deficit = need - float((power(at) * hours).sum())
    for t in np.argsort(cost, kind="stable"):
        if deficit <= 1e-9:
            break
        while deficit > 1e-9 and hours[t] > 0 and at[t] < top[t]:
            before = grid[at[t]] if at[t] >= 0 else 0.0
            at[t] += 1
            deficit -= (grid[at[t]] - before) * hours[t]
    return power(at)


def block_full_slots(price: np.ndarray, residual_kw: np.ndarray, max_kw: float) -> np.ndarray:
    """Prices for an on/off car that may only charge where ``residual_kw`` fits its power.

    An on/off car draws its full power or nothing, so a slot with less headroom than that is
    off limits: planning it at a prohibitive price is exact for one car.
    """
    return np.where(residual_kw + 1e-9 >= max_kw, price, BLOCKED_PRICE_GBP_PER_KWH)


def feeder_room(price: np.ndarray, residual_kw: np.ndarray, curve: ChargeCurve, min_kw: float | None,
                available: np.ndarray):
    """(price, feeder_kw) for planning one car into the ``residual_kw`` the others leave at
    every instant of each slot; ``available``: the share of each slot the car is plugged in.

    An on/off car (``min_kw`` None) is kept out of slots without room for its full power
    (:func:`block_full_slots`); its price is the car's own row, shape (1, T). A modulated car
    may take whatever room there is, except where the room is below the least it can draw
    (``min_kw``, its lowest settable current) once charging; as the slot model limits average
    power, the room is scaled by the share of the slot the car can charge in, so that its power
    while it charges stays within the room.
    """
    if min_kw is not None:
        room = np.maximum(residual_kw, 0.0)
        return price, np.where(room + 1e-9 >= min_kw, room * np.asarray(available, dtype=float), 0.0)
    return block_full_slots(price, residual_kw, curve.max_kw)[None, :], None


def least_slack_order(hours_left: Sequence[float], curves: Sequence[ChargeCurve], soc: Sequence[float],
                      target: Sequence[float]) -> np.ndarray:
    """Indices from the least to the most slack: hours to spare if each car charged flat out.

    Under a feeder limit cars are planned one at a time in this order, so the most urgent car
    gets first pick of the capacity.
    """
    slack = [h - c.hours_to(s, t) for h, c, s, t in zip(hours_left, curves, soc, target)]
    return np.argsort(slack, kind="stable")


def drawing_kw(curve: ChargeCurve, soc: float, limit: float, levels_kw: Sequence[float],
               available_h: Sequence[float]) -> np.ndarray:
    """The most a car draws at any instant of each slot (kW) when told to charge at
    ``levels_kw`` (0: off, ``inf``: as fast as it charges) for ``available_h`` hours of each.

    A site limit holds at every instant, so planning counts another car at its full power in
    every slot it charges in at all, not at its average over the slot: a car that plugs in ten
    minutes into a slot draws its full power for the other twenty. Power only falls as SoC rises,
    so the most is at the start of its charging in the slot; once it is expected to be full at
    ``limit`` it no longer counts.
    """
    out = np.zeros(len(levels_kw))
    full = curve.max_kw
    for i, (level, hours) in enumerate(zip(levels_kw, available_h)):
        if soc >= limit - SOC_TOLERANCE:
            break
        if level > 0 and hours > 0:
            c = curve if level >= full else curve.capped(level)
            out[i] = c.power_kw(soc)
            soc = min(limit, c.soc_after(soc, hours))
    return out


def flat_out_plan(now: datetime, track: VehicleTrack) -> SessionPlan | None:
    """The plan of a car whose planning failed: charge until the deadline, as uncontrolled."""
    if track.deadline is None or track.deadline <= now:
        return None
    hours = (track.deadline - now).total_seconds() / 3600.0
    soc = min(track.target, track.curve.soc_after(track.soc_estimate(now) or 0.0, hours))
    return SessionPlan(now, track.deadline - now, (track.curve.max_kw,), soc)
