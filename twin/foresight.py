"""Perfect foresight: the best any controller could have done in a scenario.

Every session is known in advance — arrival, departure, ready-by, target — and so are the
*actual* prices and carbon. Each session is planned on the scenario's slot grid with the same
objective and control mode as the ``smart`` policy (:class:`twin.policies.ControlParams`,
on/off), over the window from arrival to ready-by, or to departure if the driver leaves
earlier.

Sessions of one car are linked through its battery: a session's arrival SoC is what the
previous plan left, minus the driving in between. Sessions are therefore solved in rounds (the
first session of every car, then the second, ...), each round one vectorised call to
:func:`twin.scheduler.solve`. With a feeder limit, the sessions of a round are planned one at
a time, least slack first, each against the capacity the others already planned will really
draw (on/off cars cannot share a slot's last kilowatts). The bound is then the best plan with
perfect information under that rule, not the joint optimum of the coupled on/off problem (a
MILP that does not scale to a fleet-week), and a policy can occasionally beat it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twin.domain import Signals
from twin.domain import Charger, VehicleSpec
from twin.policies import ControlParams, block_full_slots, expected_kw
from twin.scheduler import FleetProblem, solve

__all__ = ["Foresight", "perfect_foresight"]


@dataclass
class Foresight:
    """Perfect-foresight plans.

    ``on``: (sessions, slots) bool, the slots each session charges in (row order = the
    ``sessions`` table); ``summary``: one row per session with ``session_id``, ``vehicle_id``,
    ``soc_arrival``, ``soc_at_end`` (expected at ready-by), ``energy_kwh``, ``cost_gbp``,
    ``carbon_kg``, ``objective_gbp`` (cost + carbon weight × carbon, as planned on the slot
    model, at actual prices; start penalties excluded).
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
    slot_h = slot_s / 3600.0
    origin = frame.index[0]
    s = sessions.reset_index(drop=True)
    veh = vehicles.set_index("vehicle_id").loc[s["vehicle_id"]]
    start = ((s["arrival"] - origin).dt.total_seconds() / slot_s).to_numpy()
    end_t = np.minimum(s["ready_by"].astype("int64"), s["departure"].astype("int64"))
    end = np.maximum((end_t - origin.value) / 1e9 / slot_s, start)
    order_in_car = s.groupby("vehicle_id").cumcount().to_numpy()
    # row of the same car's previous session (NaN for a first session)
    prev_index = pd.Series(np.arange(len(s))).groupby(s["vehicle_id"]).shift().to_numpy()
    battery = veh["battery_kwh"].to_numpy()
    max_kw = np.minimum(veh["max_ac_kw"], veh["charger_kw"]).to_numpy()
    target = s["target_soc"].to_numpy()
    price = frame["price_gbp_per_kwh"].to_numpy()
    carbon_g = frame["carbon_g_per_kwh"].to_numpy()
    curves = [
        VehicleSpec(r.battery_kwh, r.max_ac_kw, r.efficiency, r.taper_knee_soc, r.taper_floor_kw).curve(Charger(r.charger_kw))
        for r in veh.itertuples()
    ]

    on = np.zeros((len(s), nslots), dtype=bool)
    soc_arrival = s["soc_arrival"].to_numpy().copy()
    soc_end = np.full(len(s), np.nan)
    energy = np.zeros((len(s), nslots))
    used_kw = np.zeros(nslots)
    seconds = 0.0

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
            slack = [(end[i] - start[i]) * slot_h - curves[i].hours_to(soc_arrival[i], target[i]) for i in rows]
            batches = [rows[[j]] for j in np.argsort(slack, kind="stable")]
        for b in batches:
            batch_price = price
            if feeder_kw is not None:
                batch_price = block_full_slots(price, feeder_kw - used_kw, float(max_kw[b[0]]))[None, :]
            r = veh.iloc[b]
            plan = solve(FleetProblem(
                slot_hours=slot_h,
                battery_kwh=battery[b],
                soc0=soc_arrival[b],
                target_soc=target[b],
                min_soc=np.minimum(s["min_soc"].to_numpy()[b], target[b]),
                start_slot=start[b],
                end_slot=end[b],
                max_kw=max_kw[b],
                vehicle_max_kw=r["max_ac_kw"].to_numpy(),
                efficiency=r["efficiency"].to_numpy(),
                taper_knee_soc=r["taper_knee_soc"].to_numpy(),
                taper_floor_kw=np.minimum(r["taper_floor_kw"], r["max_ac_kw"]).to_numpy(),
                price_gbp_per_kwh=batch_price,
                carbon_g_per_kwh=carbon_g,
                carbon_weight_gbp_per_kg=params.carbon_weight_gbp_per_kg,
                mode="onoff",
                start_penalty_gbp=params.start_penalty_gbp,
                min_run_slots=params.min_run_slots,
                vehicle_ids=s["vehicle_id"].to_numpy()[b].tolist(),
            ))
            seconds += plan.solve_seconds
            on[b] = plan.on if plan.on is not None else plan.energy_kwh > 0
            soc_end[b] = plan.soc_at_end
            energy[b] = plan.energy_kwh
            if feeder_kw is not None:
                # what the car will really draw: its curve, from plug-in, stopping when full
                i = int(b[0])
                slots = np.arange(nslots)
                available = np.clip(np.minimum(slots + 1, end[i]) - np.maximum(slots, start[i]), 0, 1) * slot_h
                used_kw += expected_kw(curves[i], float(soc_arrival[i]), float(target[i]), on[i], available, slot_h)

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
    return Foresight(on, summary, frame.index, seconds)
