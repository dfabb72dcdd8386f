"""Perfect foresight: the best any controller could have done in a scenario.

Every session is known in advance — arrival, departure, ready-by, target — and so are the
*actual* prices and carbon. Each session is planned on the scenario's slot grid with the same
objective and control mode as the ``smart`` policy (:class:`twin.control.config.ControlParams`;
continuous power for cars whose charging current can be set, on/off for the others), over the
window from arrival to ready-by, or to departure if the driver leaves earlier.

Sessions of one car are linked through its battery: a session's arrival SoC is what the
previous plan left, minus the driving in between. Sessions are therefore solved in rounds (the
first session of every car, then the second, ...), each round one vectorised call to
:func:`twin.scheduler.solve`. With a feeder limit, the sessions of a round are planned one at
a time, least slack first, each against the capacity the others already planned will really
draw at any instant (on/off cars cannot share a slot's last kilowatts). The bound is then the best plan with
perfect information under that rule, not the joint optimum of the coupled on/off problem (a
MILP that does not scale to a fleet-week), and a policy can occasionally beat it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from twin.control.config import ControlParams
from twin.control.planning import (
    drawing_kw, feeder_room, least_slack_order, scheduler, session_plans, session_problem, settable_levels,
)
from twin.control.policies import Optimal
from twin.control.track import SessionPlan
from twin.domain import Signals, vehicle_curves
from twin.oem import Capabilities

__all__ = ["Foresight", "perfect_foresight", "optimal_policy"]


@dataclass
class Foresight:
    """Perfect-foresight plans.

    ``plans``: one :class:`SessionPlan` per session (row order = the ``sessions`` table), on
    the whole scenario's slot grid; ``summary``: one row per session with ``session_id``,
    ``vehicle_id``, ``soc_arrival``, ``soc_at_end`` (expected at ready-by), ``energy_kwh``,
    ``cost_gbp``, ``carbon_kg``, ``objective_gbp`` (cost + carbon weight × carbon, as planned on
    the slot model, at actual prices; start penalties excluded).
    """

    plans: list[SessionPlan]
    summary: pd.DataFrame
    solve_seconds: float


def perfect_foresight(vehicles: pd.DataFrame, sessions: pd.DataFrame, signals: Signals,
                      params: ControlParams | None = None, feeder_kw: float | None = None,
                      current: Mapping[str, Capabilities] | None = None,
                      autostart: Mapping[str, bool] | None = None) -> Foresight:
    """Plan every session of a scenario knowing everything in advance (see module docstring).

    ``current``: the capabilities of the cars whose charging current can be set (by vehicle
    id); they are planned modulated, on the powers they can be set to. The rest are on/off.
    ``autostart``: the cars that start charging by themselves when plugged in (by vehicle id).
    Under a feeder limit their draw from plug-in until a stop lands counts in their arrival slot:
    the limit holds at every instant, and foresight knows when they arrive.
    """
    params = params or ControlParams()
    frame = signals.frame
    nslots = len(frame)
    slot_s = signals.slot_minutes * 60.0
    slot_h = slot_s / 3600.0
    origin = frame.index[0]
    first = origin.to_pydatetime()
    slot = timedelta(seconds=slot_s)
    s = sessions.reset_index(drop=True)
    veh = vehicles.set_index("vehicle_id").loc[s["vehicle_id"]]
    start = ((s["arrival"] - origin).dt.total_seconds() / slot_s).to_numpy()
    end_t = np.minimum(s["ready_by"].astype("int64"), s["departure"].astype("int64"))
    end = np.maximum((end_t - origin.value) / 1e9 / slot_s, start)
    order_in_car = s.groupby("vehicle_id").cumcount().to_numpy()
    # row of the same car's previous session (NaN for a first session)
    prev_index = pd.Series(np.arange(len(s))).groupby(s["vehicle_id"]).shift().to_numpy()
    battery = veh["battery_kwh"].to_numpy()
    target = s["target_soc"].to_numpy()
    min_soc = s["min_soc"].to_numpy()
    current = current or {}
    vids = s["vehicle_id"].to_numpy()
    price = frame["price_gbp_per_kwh"].to_numpy()
    carbon_g = frame["carbon_g_per_kwh"].to_numpy()
    curves = vehicle_curves(veh.reset_index())
    settable = [settable_levels(current[v], c.max_kw) if v in current else None for v, c in zip(vids, curves)]
    mod = np.array([g is not None for g in settable], dtype=bool)

    plans: list[SessionPlan | None] = [None] * len(s)
    soc_arrival = s["soc_arrival"].to_numpy().copy()
    soc_end = np.full(len(s), np.nan)
    energy = np.zeros((len(s), nslots))
    used_kw = np.zeros(nslots)
    seconds = 0.0
    arrival_slot = np.clip(np.floor(start).astype(np.int64), 0, nslots - 1)
    autostart = autostart or {}
    arrival_kw = np.array([c.max_kw if autostart.get(v, False) else 0.0 for v, c in zip(vids, curves)])
    if feeder_kw is not None:
        np.add.at(used_kw, arrival_slot, arrival_kw)

    for k in range(int(order_in_car.max(initial=-1)) + 1):
        rows = np.flatnonzero(order_in_car == k)
        # arrival SoC: given, or the previous plan's end minus the driving since
        missing = rows[np.isnan(soc_arrival[rows])]
        if len(missing):
            prev = prev_index[missing].astype(np.int64)
            left = soc_end[prev] - s["trip_kwh"].to_numpy()[missing] / battery[missing]
            soc_arrival[missing] = np.maximum(left, 0.0)
        soc_arrival[rows] = np.minimum(soc_arrival[rows], 1.0)
        if feeder_kw is None:
            batches = [rows]
        else:
            # one session at a time, least slack (hours to spare charging flat out) first
            order = least_slack_order((end[rows] - start[rows]) * slot_h, [curves[i] for i in rows],
                                      soc_arrival[rows], target[rows])
            batches = [rows[[j]] for j in order]
        for b in batches:
            batch_price, feeder = price, None
            if feeder_kw is not None:
                grid = settable[b[0]]
                i = int(b[0])
                slots = np.arange(nslots)
                share = np.clip(np.minimum(slots + 1, end[i]) - np.maximum(slots, start[i]), 0, 1)
                own = np.zeros(nslots)
                own[arrival_slot[i]] = arrival_kw[i]
                batch_price, feeder = feeder_room(price, feeder_kw - (used_kw - own), curves[i],
                                                  None if grid is None else float(grid[0]), share)
            c = [curves[i] for i in b]
            problem = session_problem(
                c, slot_hours=slot_h, soc0=soc_arrival[b], target_soc=target[b], min_soc=min_soc[b],
                start_slot=start[b], end_slot=end[b], price=batch_price, carbon=carbon_g, params=params,
                modulated=mod[b], feeder_kw=feeder, vehicle_ids=s["vehicle_id"].to_numpy()[b].tolist(),
            )
            plan = scheduler().solve(problem)
            seconds += plan.solve_seconds
            for i, p in zip(b, session_plans(problem, plan, c, first, slot, [settable[i] for i in b])):
                plans[i] = p
            soc_end[b] = plan.soc_at_end
            energy[b] = plan.energy_kwh
            if feeder_kw is not None:
                # what the car will really draw: its curve, from plug-in, stopping when full
                i = int(b[0])
                slots = np.arange(nslots)
                available = np.clip(np.minimum(slots + 1, end[i]) - np.maximum(slots, start[i]), 0, 1) * slot_h
                draw = drawing_kw(curves[i], float(soc_arrival[i]), float(target[i]), plans[i].levels_kw, available)
                draw[arrival_slot[i]] = max(draw[arrival_slot[i]], arrival_kw[i])
                used_kw += draw - own

    cost = energy @ price
    carbon = energy @ carbon_g / 1000.0
    summary = pd.DataFrame(
        {
            "session_id": s["session_id"].to_numpy(),
            "vehicle_id": s["vehicle_id"].to_numpy(),
            "soc_arrival": soc_arrival,
            "soc_at_end": soc_end,
            "energy_kwh": energy.sum(axis=1),
            "cost_gbp": cost,
            "carbon_kg": carbon,
            "objective_gbp": cost + params.carbon_weight_gbp_per_kg * carbon,
        }
    )
    return Foresight(plans, summary, seconds)


def optimal_policy(vehicles: pd.DataFrame, sessions: pd.DataFrame, signals: Signals,
                   params: ControlParams | None = None, feeder_kw: float | None = None,
                   current: Mapping[str, Capabilities] | None = None,
                   autostart: Mapping[str, bool] | None = None) -> Optimal:
    """The ``optimal`` policy: the perfect-foresight plans, replayed session by session."""
    best = perfect_foresight(vehicles, sessions, signals, params, feeder_kw, current, autostart)
    plans: dict[str, list[SessionPlan]] = {}
    arrivals: dict[str, list[datetime]] = {}
    for row, (vid, arrival) in enumerate(zip(sessions["vehicle_id"], sessions["arrival"])):
        plans.setdefault(vid, []).append(best.plans[row])
        arrivals.setdefault(vid, []).append(arrival.to_pydatetime(warn=False))
    return Optimal(plans, arrivals)
