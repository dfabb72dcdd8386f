"""Drivers' behaviour: who plugs in when, leaves when, and drives how far.

Two sources of charging sessions, both producing the same two tables:

* :func:`generate_fleet` draws daily cycles for each fleet group of a scenario (seeded);
* :func:`read_sessions_csv` replays recorded or externally generated sessions.

``vehicles`` (one row per car): ``vehicle_id``, ``group``, ``model``, ``battery_kwh``,
``max_ac_kw``, ``efficiency``, ``taper_knee_soc``, ``taper_floor_kw``, ``charger_kw``,
``consumption_kwh_per_km``, ``ignores_stop``, ``target_soc``, ``min_soc``, ``ready_by`` (declared daily time,
``HH:MM`` UTC), ``oem`` (profile name), ``account_id`` (the OEM account the car belongs to).

``sessions`` (one row per plug-in, ordered by vehicle then arrival): ``session_id``,
``vehicle_id``, ``arrival``, ``departure``, ``ready_by`` (UTC timestamps), ``trip_kwh`` (energy
driven since the car's previous departure, kWh; 0 for a first session and for replayed ones),
``soc_arrival`` (SoC at plug-in for first and replayed sessions; NaN where it follows from the
previous session and the trips), ``target_soc``, ``min_soc``.

The declared ready-by and the actual departure are separate draws: a driver may leave before
the time they declared.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from twin.scenario import FleetGroup, ScenarioError, SessionReplay, TimeOfDay

__all__ = ["generate_fleet", "read_sessions_csv", "SESSION_COLUMNS", "VEHICLE_COLUMNS"]

SESSION_COLUMNS = [
    "session_id", "vehicle_id", "arrival", "departure", "ready_by",
    "trip_kwh", "soc_arrival", "target_soc", "min_soc",
]
VEHICLE_COLUMNS = [
    "vehicle_id", "group", "model", "battery_kwh", "max_ac_kw", "efficiency", "taper_knee_soc",
    "taper_floor_kw", "charger_kw", "consumption_kwh_per_km", "ignores_stop", "target_soc", "min_soc",
    "ready_by", "oem", "account_id",
]

# A car that arrives is plugged in for at least this long; draws that would leave sooner are
# pushed back (only possible with same-day departures).
_MIN_DWELL = timedelta(minutes=30)


def _minutes(t: time) -> float:
    return t.hour * 60 + t.minute + t.second / 60


def draw_time_of_day(spec: TimeOfDay, size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Minutes after midnight from a normal distribution truncated to [earliest, latest]."""
    lo, hi, mean = _minutes(spec.earliest), _minutes(spec.latest), _minutes(spec.mean)
    out = rng.normal(mean, spec.sd_minutes, size)
    # Resample the tails (truncation, not clipping, so no probability piles up at the bounds);
    # at most a few rounds are needed because the mean lies inside the bounds.
    for _ in range(100):
        bad = (out < lo) | (out > hi)
        if not bad.any():
            break
        out[bad] = rng.normal(mean, spec.sd_minutes, int(bad.sum()))
    return np.clip(out, lo, hi)


def _lognormal(mean: float, sd: float, size: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if mean == 0:
        return np.zeros(size)
    if sd == 0:
        return np.full(size, mean)
    sigma2 = np.log1p((sd / mean) ** 2)
    return rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), size)


def _hhmm(minutes: np.ndarray) -> list[str]:
    m = np.round(minutes).astype(int)
    return [f"{v // 60:02d}:{v % 60:02d}" for v in m]


def generate_fleet(groups: list[FleetGroup], start: datetime, days: int,
                   rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Vehicles and sessions for ``days`` daily cycles from ``start`` (see module docstring)."""
    vehicles, sessions = [], []
    for group in groups:
        v, s = _generate_group(group, pd.Timestamp(start), days, rng)
        vehicles.append(v)
        sessions.append(s)
    return pd.concat(vehicles, ignore_index=True), _finish_sessions(pd.concat(sessions, ignore_index=True))


def _generate_group(g: FleetGroup, start: pd.Timestamp, days: int,
                    rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    n, b = g.count, g.behaviour
    day0 = start.normalize()
    ids = [f"{g.name}-{i:0{max(len(str(n)), 4)}d}" for i in range(1, n + 1)]
    # whole minutes: the declared time is what the driver types into the app
    ready_min = np.round(draw_time_of_day(b.ready_by, n, rng))
    initial_soc = rng.uniform(b.initial_soc[0], b.initial_soc[1], n)
    vehicles = pd.DataFrame(
        {
            "vehicle_id": ids,
            "group": g.name,
            "model": g.vehicle.model,
            "battery_kwh": g.vehicle.battery_kwh,
            "max_ac_kw": g.vehicle.max_ac_kw,
            "efficiency": g.vehicle.efficiency,
            "taper_knee_soc": g.vehicle.taper_knee_soc,
            "taper_floor_kw": g.vehicle.taper_floor_kw,
            "charger_kw": g.charger.max_kw,
            "consumption_kwh_per_km": g.vehicle.consumption_kwh_per_km,
            "ignores_stop": g.vehicle.ignores_stop,
            "target_soc": g.preferences.target_soc,
            "min_soc": g.preferences.min_soc,
            "ready_by": _hhmm(ready_min),
            "oem": g.oem,
            "account_id": _accounts(g, ids),
        }
    )
    plugs = rng.random((n, days)) < b.plug_in_probability
    arrive_min = draw_time_of_day(b.plug_in, (n, days), rng)
    depart_min = draw_time_of_day(b.departure, (n, days), rng)
    km = _lognormal(b.daily_distance.mean_km, b.daily_distance.sd_km, (n, days), rng)
    daily_kwh = km * g.vehicle.consumption_kwh_per_km
    # energy driven up to and including each day's trip, per car
    driven = np.cumsum(daily_kwh, axis=1)

    minute = np.timedelta64(60_000_000_000, "ns")
    cycle_day = np.arange(days)[None, :] * 1440
    arrive_at = day0.to_datetime64() + (cycle_day + arrive_min) * minute
    depart_at = day0.to_datetime64() + (cycle_day + b.departure_day_offset * 1440 + depart_min) * minute
    # a cycle whose plug-in falls before the scenario start (start not at midnight) is dropped
    plugs &= arrive_at >= start.to_datetime64()
    car, day = np.nonzero(plugs)  # row-major: by car, then day
    # whole seconds, like recorded data (and exact as float seconds in the simulation)
    arrival = pd.DatetimeIndex(arrive_at[car, day]).tz_localize("UTC").round("s")
    departure = pd.DatetimeIndex(depart_at[car, day]).tz_localize("UTC").round("s")
    departure = departure.where(departure >= arrival + _MIN_DWELL, arrival + _MIN_DWELL)
    ready_t = ready_min[car]
    ready = arrival.normalize() + pd.to_timedelta(ready_t, unit="min")
    ready = ready.where(ready > arrival, ready + pd.Timedelta(days=1))
    if b.departs_at_ready_by:
        departure = ready

    first = np.r_[True, car[1:] != car[:-1]] if len(car) else np.zeros(0, bool)
    prev_day = np.r_[-1, day[:-1]]
    trip = np.where(first, 0.0, driven[car, day] - driven[car, np.maximum(prev_day, 0)])
    sessions = pd.DataFrame(
        {
            "vehicle_id": np.asarray(ids, dtype=object)[car],
            "arrival": arrival,
            "departure": departure,
            "ready_by": ready,
            "trip_kwh": trip,
            "soc_arrival": np.where(first, initial_soc[car], np.nan),
            "target_soc": g.preferences.target_soc,
            "min_soc": g.preferences.min_soc,
        }
    )
    return vehicles, sessions


def _accounts(g: FleetGroup, ids: list[str]) -> list[str]:
    """Each car's OEM account: its own, or ``g.accounts`` accounts holding consecutive cars."""
    if g.accounts is None:
        return list(ids)
    per = -(-len(ids) // g.accounts)  # ceil: the last account may hold fewer cars
    return [f"{g.name}-account-{i // per + 1}" for i in range(len(ids))]


def _finish_sessions(sessions: pd.DataFrame) -> pd.DataFrame:
    sessions = sessions.reset_index(drop=True)
    sessions.insert(0, "session_id", np.arange(len(sessions), dtype=np.int64))
    return sessions[SESSION_COLUMNS]


_REQUIRED = ["vehicle_id", "arrival", "departure", "energy_kwh"]
_OPTIONAL = ["battery_kwh", "max_kw", "soc_arrival", "target_soc", "ready_by"]


def read_sessions_csv(path: str | Path, replay: SessionReplay) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Vehicles and sessions from a session CSV.

    Columns: ``vehicle_id, arrival, departure, energy_kwh`` and optionally ``battery_kwh,
    max_kw, soc_arrival, target_soc, ready_by``. ``energy_kwh`` is the energy the driver needs
    added to the battery. Missing values come from the scenario's ``sessions`` block:
    ``target_soc`` from its preferences, ``soc_arrival = target_soc - energy_kwh /
    battery_kwh`` (or ``target_soc = soc_arrival + energy_kwh / battery_kwh`` when only
    ``soc_arrival`` is given), ``ready_by`` = departure, ``max_kw`` = the car's AC limit.
    Times must carry a timezone. Sessions of one vehicle must not overlap.
    """
    path = Path(path)
    src = str(path)
    try:
        raw = pd.read_csv(path, dtype={"vehicle_id": str})
    except FileNotFoundError:
        raise ScenarioError(src, ["session CSV not found"]) from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScenarioError(src, [f"cannot read session CSV: {exc}"]) from None
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise ScenarioError(src, [f"missing column(s) {', '.join(missing)}; required: {', '.join(_REQUIRED)}"])
    unknown = [c for c in raw.columns if c not in _REQUIRED + _OPTIONAL]
    if unknown:
        raise ScenarioError(src, [f"unknown column(s) {', '.join(unknown)}; optional: {', '.join(_OPTIONAL)}"])
    if raw.empty:
        raise ScenarioError(src, ["session CSV has no rows"])

    problems: list[str] = []
    line = np.arange(len(raw)) + 2  # header is line 1

    def times(col: str) -> pd.Series:
        out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
        for i, text in raw[col].items():
            if pd.isna(text):
                if col != "ready_by":
                    problems.append(f"line {line[i]}: {col}: missing")
                continue
            try:
                ts = pd.Timestamp(str(text))
            except ValueError:
                problems.append(f"line {line[i]}: {col}: not a time ({text!r})")
                continue
            if ts.tzinfo is None:
                problems.append(f"line {line[i]}: {col}: no timezone ({text!r}); use e.g. 2026-01-12T18:00:00Z")
                continue
            out[i] = ts.tz_convert("UTC")
        return out

    def numbers(col: str, default: float | None) -> pd.Series:
        if col not in raw.columns:
            return pd.Series(default, index=raw.index, dtype=float)
        vals = pd.to_numeric(raw[col], errors="coerce")
        for i in np.flatnonzero(vals.isna().to_numpy() & raw[col].notna().to_numpy()):
            problems.append(f"line {line[i]}: {col}: not a number ({raw[col].iloc[i]!r})")
        return vals

    arrival, departure = times("arrival"), times("departure")
    ready = times("ready_by") if "ready_by" in raw.columns else pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    energy = numbers("energy_kwh", None)
    battery = numbers("battery_kwh", replay.vehicle.battery_kwh).fillna(replay.vehicle.battery_kwh)
    max_kw = numbers("max_kw", replay.vehicle.max_ac_kw).fillna(replay.vehicle.max_ac_kw)
    soc_arr = numbers("soc_arrival", np.nan)
    target = numbers("target_soc", np.nan)
    if problems:
        raise ScenarioError(src, problems)

    vid = raw["vehicle_id"]
    for i in range(len(raw)):
        where = f"line {line[i]}"
        if pd.isna(vid.iloc[i]) or not str(vid.iloc[i]).strip():
            problems.append(f"{where}: vehicle_id: missing")
        if departure.iloc[i] <= arrival.iloc[i]:
            problems.append(f"{where}: departure {departure.iloc[i]} is not after arrival {arrival.iloc[i]}")
        if not pd.isna(ready.iloc[i]) and ready.iloc[i] <= arrival.iloc[i]:
            problems.append(f"{where}: ready_by {ready.iloc[i]} is not after arrival {arrival.iloc[i]}")
        if pd.isna(energy.iloc[i]) or energy.iloc[i] < 0:
            problems.append(f"{where}: energy_kwh must be a number >= 0 (got {raw['energy_kwh'].iloc[i]!r})")
        if not battery.iloc[i] > 0 or battery.iloc[i] > 300:
            problems.append(f"{where}: battery_kwh must be in (0, 300] kWh (got {battery.iloc[i]:g})")
        if not max_kw.iloc[i] > 0 or max_kw.iloc[i] > 50:
            problems.append(f"{where}: max_kw must be in (0, 50] kW (got {max_kw.iloc[i]:g})")
        for name, col in (("soc_arrival", soc_arr), ("target_soc", target)):
            v = col.iloc[i]
            if not pd.isna(v) and not 0 <= v <= 1:
                problems.append(f"{where}: {name} is a fraction 0..1 (got {v:g})")
    if problems:
        raise ScenarioError(src, problems)

    default_target = replay.preferences.target_soc
    need = energy / battery
    target_final = target.copy()
    only_soc = target.isna() & soc_arr.notna()
    target_final[only_soc] = soc_arr[only_soc] + need[only_soc]
    target_final = target_final.fillna(default_target)
    soc_final = soc_arr.fillna(target_final - need)
    for i in np.flatnonzero((soc_final < -1e-9).to_numpy() | (target_final > 1 + 1e-9).to_numpy()):
        problems.append(
            f"line {line[i]}: energy_kwh {energy.iloc[i]:g} does not fit in a {battery.iloc[i]:g} kWh battery "
            f"between soc_arrival and target_soc; give soc_arrival and target_soc explicitly"
        )

    frame = pd.DataFrame(
        {
            "vehicle_id": vid.astype(str).str.strip(),
            "arrival": arrival,
            "departure": departure,
            "ready_by": ready.fillna(departure),
            "trip_kwh": 0.0,
            "soc_arrival": soc_final.clip(0, 1),
            "target_soc": target_final.clip(0, 1),
            "min_soc": np.minimum(replay.preferences.min_soc, target_final.clip(0, 1)),
            "_battery": battery,
            "_max_kw": max_kw,
            "_line": line,
        }
    ).sort_values(["vehicle_id", "arrival"], kind="stable")
    same = frame["vehicle_id"].to_numpy()[1:] == frame["vehicle_id"].to_numpy()[:-1]
    overlap = same & (frame["arrival"].to_numpy()[1:] < frame["departure"].to_numpy()[:-1])
    for k in np.flatnonzero(overlap):
        a, b = frame.iloc[k], frame.iloc[k + 1]
        problems.append(
            f"line {b['_line']}: vehicle {b['vehicle_id']} arrives at {b['arrival']} before leaving "
            f"(line {a['_line']}) at {a['departure']}"
        )
    for col, name in (("_battery", "battery_kwh"), ("_max_kw", "max_kw")):
        varying = frame.groupby("vehicle_id")[col].nunique()
        for v in varying[varying > 1].index:
            problems.append(f"vehicle {v}: {name} differs between its sessions; one car has one value")
    if problems:
        raise ScenarioError(src, problems)

    per_vehicle = frame.groupby("vehicle_id", sort=True).first()
    vm = replay.vehicle
    vehicles = pd.DataFrame(
        {
            "vehicle_id": per_vehicle.index.to_numpy(),
            "group": "replay",
            "model": vm.model,
            "battery_kwh": per_vehicle["_battery"].to_numpy(),
            "max_ac_kw": per_vehicle["_max_kw"].to_numpy(),
            "efficiency": vm.efficiency,
            "taper_knee_soc": vm.taper_knee_soc,
            "taper_floor_kw": np.minimum(vm.taper_floor_kw, per_vehicle["_max_kw"].to_numpy()),
            "charger_kw": replay.charger.max_kw,
            "consumption_kwh_per_km": vm.consumption_kwh_per_km,
            "ignores_stop": vm.ignores_stop,
            "target_soc": per_vehicle["target_soc"].to_numpy(),
            "min_soc": per_vehicle["min_soc"].to_numpy(),
            "ready_by": [f"{t:%H:%M}" for t in per_vehicle["ready_by"]],
            "oem": replay.oem,
            "account_id": per_vehicle.index.to_numpy(),
        }
    )
    sessions = frame.drop(columns=["_battery", "_max_kw", "_line"])
    return vehicles[VEHICLE_COLUMNS], _finish_sessions(sessions)
