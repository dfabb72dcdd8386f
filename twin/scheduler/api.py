"""Analyst entry point: plan a fleet's charging from plain pandas tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .problem import FleetProblem, Plan
from .router import solve

__all__ = ["plan_charging", "ChargingPlan", "CAR_COLUMNS", "SIGNAL_COLUMNS"]

#: Required columns of ``cars`` (``plugged_in_at`` may be omitted when ``now`` is given).
CAR_COLUMNS = ("vehicle_id", "plugged_in_at", "ready_by", "battery_kwh", "soc", "target_soc", "min_soc", "max_kw")
#: Optional columns of ``cars`` and their defaults (``vehicle_max_kw`` defaults to ``max_kw``).
CAR_DEFAULTS = {"vehicle_max_kw": None, "efficiency": 0.9, "taper_knee_soc": 1.0, "taper_floor_kw": 0.0}
#: Columns of ``signals``; carbon is optional.
SIGNAL_COLUMNS = ("price_gbp_per_kwh", "carbon_g_per_kwh")


@dataclass(frozen=True)
class ChargingPlan:
    """Result of :func:`plan_charging`.

    Attributes
    ----------
    schedule : pandas.DataFrame
        One row per car and slot of its window, in car then time order:

        ============  ==========================================================
        vehicle_id    the car
        slot_start    start of the slot (tz-aware UTC)
        energy_kwh    grid energy drawn in the slot (kWh)
        power_kw      average grid power over the slot (kW)
        soc_end       state of charge at the end of the slot (fraction 0..1)
        ============  ==========================================================
    summary : pandas.DataFrame
        One row per car:

        ===============  =====================================================
        vehicle_id       the car
        energy_kwh       total grid energy (kWh)
        cost_gbp         energy cost at the import price (GBP)
        carbon_kg        emissions at the grid's intensity (kg CO2)
        soc_at_ready_by  state of charge at ``ready_by`` (fraction 0..1)
        shortfall_kwh    battery energy short of ``target_soc`` (kWh)
        first_charge_at  start of the first slot with charging (UTC), or NaT
        ===============  =====================================================
    plan : Plan
        The slot-level result (matrices, objective, solver path and time).
    problem : FleetProblem
        The problem that was solved.
    """

    schedule: pd.DataFrame
    summary: pd.DataFrame
    plan: Plan
    problem: FleetProblem


def _utc(value: Any, what: str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got the naive time {ts}")
    return ts.tz_convert("UTC")


def _utc_column(cars: pd.DataFrame, col: str) -> pd.Series:
    s = cars[col]
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        try:
            s = pd.to_datetime(s)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cars[{col!r}] must hold timestamps: {exc}") from None
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"cars[{col!r}] must be timezone-aware (UTC); it holds naive times")
    return s.dt.tz_convert("UTC")


def plan_charging(
    cars: pd.DataFrame,
    signals: pd.DataFrame,
    *,
    now: Any = None,
    carbon_weight_gbp_per_kg: float | Any = 0.0,
    feeder_kw: float | Any = None,
    mode: str | Any = "modulated",
    start_penalty_gbp: float = 0.0,
    min_run_slots: int = 1,
    method: str = "auto",
    slot_hours: float | None = None,
    shortfall_penalty_gbp_per_kwh: float | None = None,
) -> ChargingPlan:
    """Plan when each car charges, at least cost, from plain tables.

    Parameters
    ----------
    cars : pandas.DataFrame
        One row per car with columns ``vehicle_id``, ``plugged_in_at`` (tz-aware; may be
        omitted when ``now`` is given), ``ready_by`` (tz-aware), ``battery_kwh`` (kWh),
        ``soc``, ``target_soc``, ``min_soc`` (fractions 0..1; ``soc`` is the state of charge
        at plug-in, or now if later), ``max_kw`` (grid-side limit: min of car and charger, kW)
        and optionally ``vehicle_max_kw`` (the car's own AC limit, kW, default ``max_kw``),
        ``efficiency`` (default 0.9), ``taper_knee_soc`` (default 1.0 = no taper) and
        ``taper_floor_kw`` (kW at 100 % SoC, default 0).
    signals : pandas.DataFrame
        Indexed by tz-aware slot start times at a regular spacing, with
        ``price_gbp_per_kwh`` (GBP/kWh) and optionally ``carbon_g_per_kwh`` (gCO2/kWh).
    now : datetime-like, optional
        Planning time (tz-aware): no charging before it.
    carbon_weight_gbp_per_kg : float or array-like
        Value of a kg of CO2 in the objective (GBP/kg), one for all or one per car.
    feeder_kw : float, array-like or pandas.Series, optional
        Limit on the fleet's total power per slot (kW, net of other load).
    mode : {"modulated", "onoff"} or sequence
        Control mode for all cars or per car.
    start_penalty_gbp : float
        Cost of each start of an on/off car (GBP).
    min_run_slots : int
        Minimum number of slots an on/off car runs once started.
    method : str
        Solver path, see :func:`twin.scheduler.solve`.
    slot_hours : float, optional
        Slot length (h); inferred from the index spacing when omitted.
    shortfall_penalty_gbp_per_kwh : float, optional
        Penalty per battery kWh short of the target (default 100 GBP/kWh).

    Returns
    -------
    ChargingPlan
        ``.schedule`` and ``.summary`` tables (see :class:`ChargingPlan`).

    Raises
    ------
    ValueError
        For missing columns, naive times, irregular signal spacing, ``ready_by`` at or before
        plug-in or beyond the signals, duplicate vehicle ids, or invalid car data (the message
        names the field and the vehicle).
    """
    if not isinstance(cars, pd.DataFrame) or not isinstance(signals, pd.DataFrame):
        raise TypeError("cars and signals must be pandas DataFrames")
    required = [c for c in CAR_COLUMNS if not (c == "plugged_in_at" and now is not None)]
    missing = [c for c in required if c not in cars.columns]
    if missing:
        raise ValueError(f"cars is missing columns {missing}; expected {list(CAR_COLUMNS)}")
    if "price_gbp_per_kwh" not in signals.columns:
        raise ValueError("signals is missing the column 'price_gbp_per_kwh'")
    if cars["vehicle_id"].duplicated().any():
        dup = cars["vehicle_id"][cars["vehicle_id"].duplicated()].iloc[0]
        raise ValueError(f"vehicle_id {dup!r} appears more than once in cars")

    idx = signals.index
    if not isinstance(idx, pd.DatetimeIndex):
        raise ValueError("signals must be indexed by slot start times (a DatetimeIndex)")
    if idx.tz is None:
        raise ValueError("signals' index must be timezone-aware (UTC); it holds naive times")
    idx = idx.tz_convert("UTC")
    if len(idx) == 0:
        raise ValueError("signals is empty")
    if not idx.is_monotonic_increasing or idx.has_duplicates:
        raise ValueError("signals' index must be increasing without duplicates")
    steps = (idx[1:] - idx[:-1]) / pd.Timedelta(hours=1) if len(idx) > 1 else np.zeros(0)
    steps = np.asarray(steps, dtype=float)
    if slot_hours is None:
        if len(idx) < 2:
            raise ValueError("cannot infer the slot length from one slot; pass slot_hours")
        if not np.allclose(steps, steps[0], rtol=0, atol=1e-9):
            raise ValueError("signals' slots are not evenly spaced; pass regular slots or slot_hours")
        slot_hours = float(steps[0])
    elif len(idx) > 1 and not np.allclose(steps, float(slot_hours), rtol=0, atol=1e-9):
        raise ValueError(f"signals' index spacing does not match slot_hours={slot_hours}")
    T = len(idx)
    origin = idx[0]
    slot_td = pd.Timedelta(hours=float(slot_hours))

    def pos(ts: pd.Series) -> np.ndarray:
        return np.asarray((ts - origin) / slot_td, dtype=float)

    ids = cars["vehicle_id"].tolist()
    ready = _utc_column(cars, "ready_by")
    if ready.isna().any():
        raise ValueError(f"ready_by is missing for vehicle_id {ids[int(np.flatnonzero(ready.isna())[0])]!r}")
    end = pos(ready)
    if "plugged_in_at" in cars.columns:
        plug = _utc_column(cars, "plugged_in_at")
        if plug.isna().any() and now is None:
            raise ValueError(f"plugged_in_at is missing for vehicle_id {ids[int(np.flatnonzero(plug.isna())[0])]!r}")
        start = pos(plug.fillna(origin))
        bad = np.flatnonzero(end <= start)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"ready_by ({ready.iloc[i]}) is not after plugged_in_at ({plug.iloc[i]}) for vehicle_id {ids[i]!r}")
    else:
        start = np.zeros(len(cars))
    if now is not None:
        t_now = _utc(now, "now")
        start = np.maximum(start, (t_now - origin) / slot_td)
        bad = np.flatnonzero(end <= start)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"ready_by ({ready.iloc[i]}) is not after now ({t_now}) for vehicle_id {ids[i]!r}")
    start = np.maximum(start, 0.0)
    bad = np.flatnonzero(end > T + 1e-9)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"ready_by ({ready.iloc[i]}) for vehicle_id {ids[i]!r} is after the last signal slot "
            f"(signals end at {origin + T * slot_td}); extend the signals"
        )
    end = np.minimum(end, T)

    def col(name: str, default: Any = None) -> np.ndarray:
        if name in cars.columns:
            v = pd.to_numeric(cars[name], errors="coerce").to_numpy(dtype=float)
            if default is not None:
                v = np.where(np.isnan(v), default, v)
            if np.isnan(v).any():
                i = int(np.flatnonzero(np.isnan(v))[0])
                raise ValueError(f"{name} is missing or not a number for vehicle_id {ids[i]!r}")
            return v
        return np.full(len(cars), default, dtype=float)

    max_kw = col("max_kw")
    vmax = col("vehicle_max_kw", np.nan) if "vehicle_max_kw" in cars.columns else max_kw
    vmax = np.where(np.isnan(vmax), max_kw, vmax)
    price = signals["price_gbp_per_kwh"].to_numpy(dtype=float)
    carbon = signals["carbon_g_per_kwh"].to_numpy(dtype=float) if "carbon_g_per_kwh" in signals.columns else None
    feeder = None
    if feeder_kw is not None:
        if isinstance(feeder_kw, pd.Series):
            f_idx = feeder_kw.index
            if isinstance(f_idx, pd.DatetimeIndex):
                feeder_kw = feeder_kw.reindex(signals.index)
                if feeder_kw.isna().any():
                    raise ValueError("feeder_kw does not cover every slot of signals")
            feeder = feeder_kw.to_numpy(dtype=float)
        else:
            feeder = np.broadcast_to(np.asarray(feeder_kw, dtype=float), (T,)).copy()
    kwargs = {}
    if shortfall_penalty_gbp_per_kwh is not None:
        kwargs["shortfall_penalty_gbp_per_kwh"] = shortfall_penalty_gbp_per_kwh
    problem = FleetProblem(
        slot_hours=float(slot_hours),
        battery_kwh=col("battery_kwh"),
        soc0=col("soc"),
        target_soc=col("target_soc"),
        min_soc=col("min_soc", 0.0),
        start_slot=start,
        end_slot=end,
        max_kw=max_kw,
        vehicle_max_kw=vmax,
        efficiency=col("efficiency", CAR_DEFAULTS["efficiency"]),
        taper_knee_soc=col("taper_knee_soc", CAR_DEFAULTS["taper_knee_soc"]),
        taper_floor_kw=col("taper_floor_kw", CAR_DEFAULTS["taper_floor_kw"]),
        price_gbp_per_kwh=price,
        carbon_g_per_kwh=carbon,
        carbon_weight_gbp_per_kg=carbon_weight_gbp_per_kg,
        feeder_kw=feeder,
        mode=mode,
        start_penalty_gbp=start_penalty_gbp,
        min_run_slots=min_run_slots,
        vehicle_ids=ids,
        **kwargs,
    )
    plan = solve(problem, method=method)
    return ChargingPlan(*_tables(problem, plan, idx), plan=plan, problem=problem)


def _tables(p: FleetProblem, plan: Plan, idx: pd.DatetimeIndex) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = np.asarray(p.vehicle_ids if p.vehicle_ids is not None else range(p.n_cars), dtype=object)
    ci, ti = np.nonzero(p.availability > 0)
    schedule = pd.DataFrame(
        {
            "vehicle_id": ids[ci],
            "slot_start": idx[ti],
            "energy_kwh": plan.energy_kwh[ci, ti],
            "power_kw": plan.power_kw[ci, ti],
            "soc_end": plan.soc[ci, ti + 1],
        }
    )
    charging = plan.energy_kwh > 0
    has = charging.any(axis=1)
    first = np.where(has, charging.argmax(axis=1), 0)
    first_at = pd.Series(idx[first], dtype=idx.dtype).where(has, pd.NaT)
    summary = pd.DataFrame(
        {
            "vehicle_id": ids,
            "energy_kwh": plan.energy_kwh.sum(axis=1),
            "cost_gbp": plan.cost_gbp,
            "carbon_kg": plan.carbon_kg,
            "soc_at_ready_by": plan.soc_at_end,
            "shortfall_kwh": plan.shortfall_kwh,
            "first_charge_at": first_at.to_numpy(),
        }
    )
    summary["first_charge_at"] = pd.to_datetime(summary["first_charge_at"], utc=True)
    return schedule, summary
