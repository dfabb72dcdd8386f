"""Perfect foresight: the best any controller could have done in a scenario.

Every session is known in advance — arrival, departure, ready-by, target — and so are the
*actual* prices and carbon. Each session is planned on the scenario's slot grid with the same
objective and control mode as the ``smart`` policy (:class:`twin.policies.ControlParams`,
on/off), over the window from arrival to ready-by, or to departure if the driver leaves
earlier.

Sessions of one car are linked through its battery: a session's arrival SoC is what the
previous plan left, minus the driving in between. Sessions are therefore solved in rounds (the
first session of every car, then the second, ...), each round one vectorised call to
:func:`twin.scheduler.solve`. With a feeder limit, each round is planned against the capacity
earlier rounds left free, so the bound is then a close upper estimate of the joint optimum
rather than the optimum itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twin.domain import Signals
from twin.policies import ControlParams
from twin.scheduler import FleetProblem, solve

__all__ = ["Foresight", "perfect_foresight"]


@dataclass
class Foresight:
    """Perfect-foresight plans.

    ``on``: (sessions, slots) bool, the slots each session charges in (row order = the
    ``sessions`` table); ``summary``: one row per session with ``session_id``, ``vehicle_id``,
    ``soc_arrival``, ``soc_at_end`` (expected at ready-by), ``energy_kwh``, ``cost_gbp``,
    ``carbon_kg``, ``objective_gbp`` (as planned, on the slot model).
    """

    on: np.ndarray
    summary: pd.DataFrame
    slot_starts: pd.DatetimeIndex
    solve_seconds: float


def perfect_foresight(vehicles: pd.DataFrame, sessions: pd.DataFrame, signals: Signals,
                      params: ControlParams | None = None, feeder_kw: float | None = None) -> Foresight:
    """Plan every session of a scenario knowing everything in advance (see module docstring)."""
    params = params or ControlParams()
    frame = signals.frame
    nslots = len(frame)
    slot_s = signals.slot_minutes * 60.0
    origin = frame.index[0]
    v = vehicles.set_index("vehicle_id")
    s = sessions.reset_index(drop=True)
    veh = v.loc[s["vehicle_id"]]
    start = ((s["arrival"] - origin).dt.total_seconds() / slot_s).to_numpy()
    end_t = np.minimum(s["ready_by"].astype("int64"), s["departure"].astype("int64"))
    end = (end_t - origin.value) / 1e9 / slot_s
    order_in_car = s.groupby("vehicle_id").cumcount().to_numpy()
    battery = veh["battery_kwh"].to_numpy()
    on = np.zeros((len(s), nslots), dtype=bool)
    soc_arrival = s["soc_arrival"].to_numpy().copy()
    soc_end = np.full(len(s), np.nan)
    energy = np.zeros(len(s))
    cost = np.zeros(len(s))
    carbon = np.zeros(len(s))
    objective = np.zeros(len(s))
    used_kw = np.zeros(nslots)
    seconds = 0.0
    # row of the same car's previous session (NaN for a first session)
    prev_index = pd.Series(np.arange(len(s))).groupby(s["vehicle_id"]).shift().to_numpy()
    for k in range(int(order_in_car.max(initial=-1)) + 1):
        rows = np.flatnonzero(order_in_car == k)
        # arrival SoC: given, or the previous plan's end minus the driving since
        missing = rows[np.isnan(soc_arrival[rows])]
        if len(missing):
            prev = prev_index[missing].astype(np.int64)
            left = soc_end[prev] - s["trip_kwh"].to_numpy()[missing] / battery[missing]
            soc_arrival[missing] = np.maximum(left, 0.0)
        r = veh.iloc[rows]
        target = s["target_soc"].to_numpy()[rows]
        problem = FleetProblem(
            slot_hours=slot_s / 3600.0,
            battery_kwh=battery[rows],
            soc0=np.minimum(soc_arrival[rows], 1.0),
            target_soc=target,
            min_soc=np.minimum(s["min_soc"].to_numpy()[rows], target),
            start_slot=start[rows],
            end_slot=np.maximum(end[rows], start[rows]),
            max_kw=np.minimum(r["max_ac_kw"], r["charger_kw"]).to_numpy(),
            vehicle_max_kw=r["max_ac_kw"].to_numpy(),
            efficiency=r["efficiency"].to_numpy(),
            taper_knee_soc=r["taper_knee_soc"].to_numpy(),
            taper_floor_kw=np.minimum(r["taper_floor_kw"], r["max_ac_kw"]).to_numpy(),
            price_gbp_per_kwh=frame["price_gbp_per_kwh"].to_numpy(),
            carbon_g_per_kwh=frame["carbon_g_per_kwh"].to_numpy(),
            carbon_weight_gbp_per_kg=params.carbon_weight_gbp_per_kg,
            feeder_kw=None if feeder_kw is None else np.maximum(feeder_kw - used_kw, 0.0),
            mode="onoff",
            start_penalty_gbp=params.start_penalty_gbp,
            min_run_slots=params.min_run_slots,
            vehicle_ids=s["vehicle_id"].to_numpy()[rows].tolist(),
        )
        plan = solve(problem)
        seconds += plan.solve_seconds
        on[rows] = plan.on if plan.on is not None else plan.energy_kwh > 0
        soc_end[rows] = plan.soc_at_end
        energy[rows] = plan.energy_kwh.sum(axis=1)
        cost[rows] = plan.cost_gbp
        carbon[rows] = plan.carbon_kg
        objective[rows] = plan.objective_gbp
        used_kw += plan.power_kw.sum(axis=0)
    summary = pd.DataFrame(
        {
            "session_id": s["session_id"].to_numpy(),
            "vehicle_id": s["vehicle_id"].to_numpy(),
            "soc_arrival": soc_arrival,
            "soc_at_end": soc_end,
            "energy_kwh": energy,
            "cost_gbp": cost,
            "carbon_kg": carbon,
            "objective_gbp": objective,
        }
    )
    return Foresight(on, summary, frame.index, seconds)
