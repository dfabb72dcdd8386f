"""Results of a twin run: KPIs and tidy tables, computed from the recorded charging segments.

Every charging segment is split at settlement-slot boundaries and each piece's energy is
integrated with the same closed-form physics as the simulation (:func:`twin.battery.soc_after_array`),
so slot energies are exact, not sampled.

Tables (pandas DataFrames):

``sessions`` — one row per plug-in: ``session_id``, ``vehicle_id``, ``arrival``, ``departure``,
``ready_by`` (UTC), ``target_soc``, ``soc_arrival``, ``soc_at_ready_by`` (SoC at ready-by, or at
departure if the driver left earlier), ``soc_departure``, ``energy_kwh`` (from the grid),
``battery_kwh_added``, ``cost_gbp``, ``carbon_kg``, ``first_charge_at``, ``met_target``
(``soc_at_ready_by`` within 0.1 % of target or above), ``shortfall_kwh`` (battery kWh missing
at ready-by), ``target_reachable`` (charging at full power from plug-in would have reached the
target by ready-by), ``left_early`` (departure before ready-by), ``trip_unmet_kwh`` (driving
energy the car did not have before this session).

``timeseries`` — one row per settlement slot: ``slot_start`` (UTC), ``price_gbp_per_kwh``,
``carbon_g_per_kwh`` (actual), ``price_forecast_gbp_per_kwh``, ``carbon_forecast_g_per_kwh``,
``energy_kwh`` (fleet grid energy in the slot), ``fleet_kw`` (slot-average fleet power),
``plugged_in`` (cars plugged in at slot start), ``cost_gbp``.

``events`` — ``time`` (UTC), ``vehicle_id``, ``kind`` (``plug_in``, ``unplug``, ``telemetry``,
``command``, ``result``, ``notification``, and ``fault`` for ground truth the platform cannot
see, such as a stop the car ignored), ``detail``.

``charging`` — one row per continuous charging segment: ``vehicle_id``, ``session_id``,
``start``, ``end`` (UTC), ``soc_start``, ``soc_end``, ``energy_kwh`` (grid), ``power_cap_kw`` (the
limit a charging current set through the OEM API imposed; NaN: none). SoC rises along the car's
taper curve (capped at ``power_cap_kw``) between the two ends; :func:`soc_trajectory` samples it.

``vehicles`` — the fleet as simulated (see :mod:`twin.sim.behaviour`).

KPIs (``kpis``, a dict; units in the names): see :data:`KPI_DESCRIPTIONS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from twin.battery import capped_arrays, soc_after_array
from twin.domain import SOC_TOLERANCE, Signals

__all__ = ["SimulationResult", "KPI_DESCRIPTIONS", "build_result", "soc_trajectory"]

#: log details of the command rows that count as commands (reads and wakes are calls, not commands)
_COMMAND_KINDS = ("start", "stop", "set_current", "set_limit")

KPI_DESCRIPTIONS = {
    "vehicles": "cars in the fleet",
    "sessions": "plug-in sessions",
    "vehicle_days": "cars × days simulated",
    "energy_delivered_kwh": "energy drawn from the grid, kWh",
    "energy_to_batteries_kwh": "energy added to batteries, kWh",
    "cost_gbp": "energy cost at actual prices, GBP",
    "avg_price_gbp_per_kwh": "cost / energy delivered, GBP/kWh",
    "carbon_kg": "emissions at actual carbon intensity, kg CO2",
    "ready_by_met_share": "share of sessions at target SoC by ready-by (or departure if earlier)",
    "ready_by_met_share_reachable": "the same, over sessions whose target was reachable and the driver did not leave early",
    "shortfall_kwh": "battery energy missing at ready-by, summed over sessions, kWh",
    "peak_fleet_kw": "highest slot-average fleet power, kW",
    "sessions_left_early": "sessions where the driver left before the declared ready-by",
    "commands_sent": "commands sent to OEM clouds: start, stop, set current, set charge limit",
    "commands_failed": "start/stop commands that returned an error",
    "commands_retried": "start/stop commands re-sent after a failure or a disobeyed stop",
    "commands_unverified": "acknowledged commands never confirmed by a later reading",
    "stops_ignored": "acknowledged stops the car did not obey (ground truth)",
    "cars_escalated": "sessions where a car was escalated as not obeying stop",
    "oem_calls": "all OEM calls: reads, commands, wakes, token refreshes",
    "oem_calls_per_car_hour": "OEM calls per car per simulated hour",
    "notifications": "messages to drivers (plan at plug-in, plan changes, escalations)",
    "plans": "charging plans computed (at plug-in and on every re-plan)",
}


@dataclass
class SimulationResult:
    """Everything a run produced. Tables are documented in :mod:`twin.results`."""

    scenario: str
    policy: str
    seed: int
    kpis: dict[str, float]
    sessions: pd.DataFrame
    timeseries: pd.DataFrame
    events: pd.DataFrame
    vehicles: pd.DataFrame
    charging: pd.DataFrame
    wall_seconds: float = field(default=0.0, compare=False)

    def kpi_frame(self) -> pd.DataFrame:
        """KPIs as a one-column DataFrame indexed by KPI name (``value``) with descriptions."""
        return pd.DataFrame(
            {"value": pd.Series(self.kpis), "description": pd.Series(KPI_DESCRIPTIONS)}
        ).loc[list(self.kpis)]

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``kpis.json`` and ``sessions``, ``timeseries``, ``events``, ``charging`` CSVs."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"scenario": self.scenario, "policy": self.policy, "seed": self.seed, "kpis": self.kpis}
        paths = [out / "kpis.json"]
        paths[0].write_text(json.dumps(meta, indent=2) + "\n")
        for name in ("sessions", "timeseries", "events", "charging"):
            paths.append(out / f"{name}.csv")
            getattr(self, name).to_csv(paths[-1], index=False)
        return paths


def _slot_pieces(seg: dict[str, np.ndarray], slot_s: float) -> dict[str, np.ndarray]:
    """Split segments at slot boundaries: one row per (segment, slot) overlap."""
    t0, t1 = seg["t0"], seg["t1"]
    k0 = np.floor(t0 / slot_s).astype(np.int64)
    k1 = np.maximum(np.ceil(t1 / slot_s).astype(np.int64) - 1, k0)
    n = k1 - k0 + 1
    rep = np.repeat(np.arange(len(t0)), n)
    first = np.repeat(np.cumsum(n) - n, n)
    k = k0[rep] + (np.arange(len(rep)) - first)
    a = np.maximum(t0[rep], k * slot_s)
    b = np.minimum(t1[rep], (k + 1) * slot_s)
    return {"seg": rep, "slot": k, "a": a, "b": b}


def build_result(
    *,
    scenario: str,
    policy: str,
    seed: int,
    origin: datetime,
    days: int,
    vehicles: pd.DataFrame,
    sessions: pd.DataFrame,
    signals: Signals,
    curves: dict[str, np.ndarray],
    segments: list[tuple[int, int, float, float, float, float, float]],
    soc_arrival: np.ndarray,
    soc_departure: np.ndarray,
    trip_unmet_kwh: np.ndarray,
    log: list[tuple[float, str, str, str]],
    controller_stats: dict[str, int] | None = None,
    oem_stats: dict[str, int] | None = None,
) -> SimulationResult:
    """Assemble KPIs and tables. ``origin`` is simulated time 0 (= first signal slot)."""
    slot_s = signals.slot_minutes * 60.0
    nslots = len(signals.frame)
    seg_arr = np.array(segments, dtype=float).reshape(-1, 7)
    seg = {
        "car": seg_arr[:, 0].astype(np.int64),
        "session": seg_arr[:, 1].astype(np.int64),
        "t0": seg_arr[:, 2],
        "t1": seg_arr[:, 3],
        "soc0": seg_arr[:, 4],
        "soc1": seg_arr[:, 5],
        "cap_kw": seg_arr[:, 6],
    }
    # each segment charged along its car's curve, capped by the current set at the time
    seg_curves = capped_arrays({k: v[seg["car"]] for k, v in curves.items()}, seg["cap_kw"])

    # -- energy per (segment, slot) piece, integrated exactly --------------------------------
    pieces = _slot_pieces(seg, slot_s)
    if int(pieces["slot"].max(initial=-1)) >= nslots:
        raise ValueError("charging ran past the end of the signals; extend the signal horizon")
    pc = {k: v[pieces["seg"]] for k, v in seg_curves.items()}
    soc0 = seg["soc0"][pieces["seg"]]
    t0 = seg["t0"][pieces["seg"]]
    soc_a = soc_after_array(pc, soc0, (pieces["a"] - t0) / 3600.0)
    soc_b = soc_after_array(pc, soc0, (pieces["b"] - t0) / 3600.0)
    battery_kwh = (soc_b - soc_a) * pc["battery_kwh"]
    grid_kwh = battery_kwh / pc["efficiency"]
    frame = signals.frame
    price = frame["price_gbp_per_kwh"].to_numpy()[pieces["slot"]]
    carbon = frame["carbon_g_per_kwh"].to_numpy()[pieces["slot"]]
    piece_session = seg["session"][pieces["seg"]]
    nsess = len(sessions)

    def per_session(values: np.ndarray) -> np.ndarray:
        return np.bincount(piece_session, weights=values, minlength=nsess)

    def per_slot(values: np.ndarray) -> np.ndarray:
        return np.bincount(pieces["slot"], weights=values, minlength=nslots)

    # -- sessions ------------------------------------------------------------------------------
    origin_ts = pd.Timestamp(origin)
    arrival_s = (sessions["arrival"] - origin_ts).dt.total_seconds().to_numpy()
    departure_s = (sessions["departure"] - origin_ts).dt.total_seconds().to_numpy()
    ready_s = (sessions["ready_by"] - origin_ts).dt.total_seconds().to_numpy()
    deadline_s = np.minimum(ready_s, departure_s)
    vindex = pd.Index(vehicles["vehicle_id"])
    car_of_session = vindex.get_indexer(sessions["vehicle_id"])
    target = sessions["target_soc"].to_numpy()
    soc_ready = _soc_at(seg, seg_curves, nsess, deadline_s, soc_arrival)
    sess_curves = {k: v[car_of_session] for k, v in curves.items()}
    cap = sess_curves["battery_kwh"]
    reach = soc_after_array(sess_curves, soc_arrival, (ready_s - arrival_s) / 3600.0)
    met = soc_ready >= target - SOC_TOLERANCE
    shortfall = np.maximum(target - soc_ready, 0.0) * cap
    shortfall[met] = 0.0
    first_start = np.full(nsess, np.inf)
    np.minimum.at(first_start, seg["session"], seg["t0"])
    first_charge = pd.Series(
        origin_ts + pd.to_timedelta(np.where(np.isfinite(first_start), first_start, np.nan), unit="s")
    )
    energy = per_session(grid_kwh)
    out_sessions = pd.DataFrame(
        {
            "session_id": sessions["session_id"].to_numpy(),
            "vehicle_id": sessions["vehicle_id"].to_numpy(),
            "arrival": sessions["arrival"].array,
            "departure": sessions["departure"].array,
            "ready_by": sessions["ready_by"].array,
            "target_soc": target,
            "soc_arrival": soc_arrival,
            "soc_at_ready_by": soc_ready,
            "soc_departure": soc_departure,
            "energy_kwh": energy,
            "battery_kwh_added": per_session(battery_kwh),
            "cost_gbp": per_session(grid_kwh * price),
            "carbon_kg": per_session(grid_kwh * carbon / 1000.0),
            "first_charge_at": first_charge.array,
            "met_target": met,
            "shortfall_kwh": shortfall,
            "target_reachable": reach >= target - SOC_TOLERANCE,
            "left_early": departure_s < ready_s,
            "trip_unmet_kwh": trip_unmet_kwh,
        }
    )

    # -- timeseries ----------------------------------------------------------------------------
    slot_energy = per_slot(grid_kwh)
    slot_start_s = np.arange(nslots) * slot_s
    plugged = np.searchsorted(np.sort(arrival_s), slot_start_s, side="right") - np.searchsorted(
        np.sort(departure_s), slot_start_s, side="right"
    )
    ts = frame.reset_index()
    ts["energy_kwh"] = slot_energy
    ts["fleet_kw"] = slot_energy / (slot_s / 3600.0)
    ts["plugged_in"] = plugged
    ts["cost_gbp"] = slot_energy * frame["price_gbp_per_kwh"].to_numpy()

    # -- events --------------------------------------------------------------------------------
    if log:
        t, vid, kind, detail = zip(*log)
    else:
        t, vid, kind, detail = (), (), (), ()
    events = pd.DataFrame(
        {
            "time": origin_ts + pd.to_timedelta(np.asarray(t, dtype=float), unit="s"),
            "vehicle_id": list(vid),
            "kind": list(kind),
            "detail": list(detail),
        }
    )
    commands = events.loc[events["kind"] == "command", "detail"]
    seg_cap = seg_curves["battery_kwh"]
    charging = pd.DataFrame(
        {
            "vehicle_id": vehicles["vehicle_id"].to_numpy()[seg["car"]],
            "session_id": sessions["session_id"].to_numpy()[seg["session"]],
            "start": origin_ts + pd.to_timedelta(seg["t0"], unit="s"),
            "end": origin_ts + pd.to_timedelta(seg["t1"], unit="s"),
            "soc_start": seg["soc0"],
            "soc_end": seg["soc1"],
            "energy_kwh": (seg["soc1"] - seg["soc0"]) * seg_cap / seg_curves["efficiency"],
            "power_cap_kw": np.where(np.isfinite(seg["cap_kw"]), seg["cap_kw"], np.nan),
        }
    ).sort_values(["start", "vehicle_id"], kind="stable", ignore_index=True)

    # -- KPIs ----------------------------------------------------------------------------------
    total_energy = float(grid_kwh.sum())
    cost = float((grid_kwh * price).sum())
    fair = out_sessions["target_reachable"] & ~out_sessions["left_early"]
    kpis = {
        "vehicles": int(len(vehicles)),
        "sessions": int(nsess),
        "vehicle_days": int(len(vehicles) * days),
        "energy_delivered_kwh": total_energy,
        "energy_to_batteries_kwh": float(battery_kwh.sum()),
        "cost_gbp": cost,
        "avg_price_gbp_per_kwh": cost / total_energy if total_energy > 0 else float("nan"),
        "carbon_kg": float((grid_kwh * carbon).sum() / 1000.0),
        "ready_by_met_share": float(met.mean()) if nsess else float("nan"),
        "ready_by_met_share_reachable": float(met[fair.to_numpy()].mean()) if fair.any() else float("nan"),
        "shortfall_kwh": float(shortfall.sum()),
        "peak_fleet_kw": float(ts["fleet_kw"].max()),
        "sessions_left_early": int(out_sessions["left_early"].sum()),
    }
    cstats, ostats = controller_stats or {}, oem_stats or {}
    hours = nslots * slot_s / 3600.0
    # every call the platform made: the host's (reads, commands, wakes) and the heads' own
    # token refreshes
    calls = int(len(commands) + ostats.get("token_refreshes", 0) + ostats.get("refresh_refused", 0))
    kpis.update(
        {
            "commands_sent": int(commands.str.startswith(_COMMAND_KINDS).sum()),
            "commands_failed": int(cstats.get("commands_failed", 0)),
            "commands_retried": int(cstats.get("commands_retried", 0)),
            "commands_unverified": int(cstats.get("commands_unverified", 0)),
            "stops_ignored": int(ostats.get("stops_ignored", 0)),
            "cars_escalated": int(cstats.get("escalations", 0)),
            "oem_calls": calls,
            "oem_calls_per_car_hour": float(calls / (len(vehicles) * hours)) if len(vehicles) else 0.0,
            "notifications": int((events["kind"] == "notification").sum()),
            "plans": int(cstats.get("replans", 0)),
        }
    )
    return SimulationResult(scenario, policy, seed, kpis, out_sessions, ts, events, vehicles, charging)


def _soc_at(seg: dict[str, np.ndarray], curves: dict[str, np.ndarray], nsess: int,
            when_s: np.ndarray, soc_arrival: np.ndarray) -> np.ndarray:
    """SoC of each session at ``when_s`` (seconds), from its charging segments."""
    segs = pd.DataFrame({"session": seg["session"], "t0": seg["t0"], "row": np.arange(len(seg["t0"]))})
    queries = pd.DataFrame({"session": np.arange(nsess), "when": when_s})
    merged = pd.merge_asof(
        queries.sort_values("when"),
        segs.sort_values("t0"),
        left_on="when",
        right_on="t0",
        by="session",
        allow_exact_matches=False,
    ).sort_values("session")
    row = merged["row"].to_numpy()
    has = ~np.isnan(row)
    out = soc_arrival.copy()
    r = row[has].astype(np.int64)
    finished = seg["t1"][r] <= when_s[has]
    partial = soc_after_array({k: v[r] for k, v in curves.items()}, seg["soc0"][r], (when_s[has] - seg["t0"][r]) / 3600.0)
    out[has] = np.where(finished, seg["soc1"][r], partial)
    return out


def soc_trajectory(result: SimulationResult, vehicle_id: str, points_per_segment: int = 8) -> pd.DataFrame:
    """SoC of one car over time (``time``, ``soc``), sampled along its charging curve.

    Between charging segments the SoC is flat while plugged in and unknown while driving, so
    the frame has a row at every plug-in and unplug plus ``points_per_segment`` samples inside
    each charging segment.
    """
    from twin.battery import curve_arrays  # local: only analysts call this
    from twin.domain import vehicle_curves

    [curve] = vehicle_curves(result.vehicles[result.vehicles["vehicle_id"] == vehicle_id])
    rows: list[tuple[pd.Timestamp, float]] = []
    for s in result.sessions[result.sessions["vehicle_id"] == vehicle_id].itertuples():
        rows.append((s.arrival, s.soc_arrival))
        segs = result.charging[result.charging["session_id"] == s.session_id]
        for g in segs.itertuples():
            hours = (g.end - g.start).total_seconds() / 3600 * np.linspace(0, 1, points_per_segment)
            capped = curve if np.isnan(g.power_cap_kw) else curve.capped(g.power_cap_kw)
            socs = soc_after_array(curve_arrays([capped] * len(hours)), np.full(len(hours), g.soc_start), hours)
            socs[-1] = g.soc_end
            rows.extend(zip(g.start + pd.to_timedelta(hours, unit="h"), socs))
        rows.append((s.departure, s.soc_departure))
    return pd.DataFrame(rows, columns=["time", "soc"])
