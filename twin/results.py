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

``site_power`` — the instantaneous site power (all cars together), one row per instant at
which a charging segment starts or ends: ``time`` (UTC), ``site_kw`` (grid power just after that
instant, exact). Between two rows the power is constant or falls (tapering cars), so a step plot
of ``site_kw`` is exact at every row and never below the power in between; short spikes, such as
a car charging by itself for seconds at plug-in, show as a row with a higher ``site_kw``.

``vehicles`` — the fleet as simulated (see :mod:`twin.sim.behaviour`).

KPIs (``kpis``, a dict; units in the names): see :data:`KPI_DESCRIPTIONS`. Fleet power comes in
three averagings: ``peak_fleet_kw`` and ``ramp_fleet_kw_max`` use the slot average (energy per
settlement slot), ``peak_demand_kw`` the average over a demand window, ``peak_site_kw_instant``,
``minutes_above_limit`` and ``energy_above_limit_kwh`` the instantaneous power, computed exactly
from the segments: each draws a flat power until its taper binds, then a power that decays
exponentially (:func:`twin.battery.power_profile_array`). The highest instantaneous power is at a
segment start (power only rises there) and is evaluated there exactly; time and energy above the
limit are closed-form integrals between breakpoints, with the instant a taper decays through
the limit solved to 1e-6 s. The demand charge is the rate times, for each calendar month (UTC)
the run touches, the month's highest window-average power times the share of the month
simulated (a 7-day run in January: 7/31 of the month's charge).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from twin.battery import capped_arrays, power_profile_array, soc_after_array
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
    "energy_cost_gbp": "energy cost at actual prices, GBP (the same as cost_gbp)",
    "demand_cost_gbp": (
        "demand charge: the rate (GBP per kW per month) times the highest demand-window-average site power "
        "in each calendar month (UTC) the run touches, pro-rated by the share of that month simulated, GBP "
        "(0: no demand charge)"
    ),
    "total_cost_gbp": "energy cost plus demand charge, GBP",
    "avg_price_gbp_per_kwh": "cost / energy delivered, GBP/kWh",
    "carbon_kg": "emissions at actual carbon intensity, kg CO2",
    "ready_by_met_share": "share of sessions at target SoC by ready-by (or departure if earlier)",
    "ready_by_met_share_reachable": "the same, over sessions whose target was reachable and the driver did not leave early",
    "shortfall_kwh": "battery energy missing at ready-by, summed over sessions, kWh",
    "shortfall_mean_kwh": "battery energy missing at ready-by, mean over all sessions (0 for those that met it), kWh",
    "shortfall_es95_kwh": (
        "expected shortfall: battery energy missing at ready-by, mean over the worst 5 % of sessions "
        "(fewer than 20 sessions: the worst one), kWh"
    ),
    "peak_fleet_kw": "highest slot-average fleet power (fleet energy in a settlement slot / slot length), kW",
    "peak_site_kw_instant": (
        "highest instantaneous site power (all charging cars at one instant, exact from the charging "
        "segments, so spikes of seconds count), kW"
    ),
    "ramp_fleet_kw_max": "largest change in slot-average fleet power from one settlement slot to the next, kW",
    "peak_demand_kw": (
        "highest site power averaged over a demand window (demand_window_minutes, windows aligned to the "
        "UTC clock), kW"
    ),
    "minutes_above_limit": "minutes the instantaneous site power was above the site limit (NaN: no limit given)",
    "energy_above_limit_kwh": (
        "energy above the site limit: integral of instantaneous site power minus the limit while above it, "
        "kWh (NaN: no limit given)"
    ),
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
    site_power: pd.DataFrame = field(
        default_factory=lambda: _site_power_frame(pd.Timestamp(0, tz="UTC"), np.zeros(0), np.zeros(0))
    )
    wall_seconds: float = field(default=0.0, compare=False)

    def kpi_frame(self) -> pd.DataFrame:
        """KPIs as a one-column DataFrame indexed by KPI name (``value``) with descriptions."""
        return pd.DataFrame(
            {"value": pd.Series(self.kpis), "description": pd.Series(KPI_DESCRIPTIONS)}
        ).loc[list(self.kpis)]

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``kpis.json`` and ``sessions``, ``timeseries``, ``events``, ``charging``, ``site_power`` CSVs."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"scenario": self.scenario, "policy": self.policy, "seed": self.seed, "kpis": self.kpis}
        paths = [out / "kpis.json"]
        paths[0].write_text(json.dumps(meta, indent=2) + "\n")
        for name in ("sessions", "timeseries", "events", "charging", "site_power"):
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


def _piece_kwh(seg: dict[str, np.ndarray], seg_curves: dict[str, np.ndarray], pieces: dict[str, np.ndarray],
               shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Battery and grid energy (kWh) of each piece ``[a, b) - shift`` of its segment, exactly."""
    pc = {k: v[pieces["seg"]] for k, v in seg_curves.items()}
    soc0 = seg["soc0"][pieces["seg"]]
    t0 = seg["t0"][pieces["seg"]]
    soc_a = soc_after_array(pc, soc0, (pieces["a"] - shift - t0) / 3600.0)
    soc_b = soc_after_array(pc, soc0, (pieces["b"] - shift - t0) / 3600.0)
    battery_kwh = (soc_b - soc_a) * pc["battery_kwh"]
    return battery_kwh, battery_kwh / pc["efficiency"]


def _site_power_frame(origin: pd.Timestamp, times_s: np.ndarray, kw: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"time": origin + pd.to_timedelta(times_s, unit="s"), "site_kw": kw})


def _demand(seg: dict[str, np.ndarray], seg_curves: dict[str, np.ndarray], origin: pd.Timestamp, days: int,
            window_minutes: int, slot_s: float, slot_kwh: np.ndarray) -> tuple[float, float]:
    """Demand-window peaks: (highest window-average site power over the run, kW; the sum over the
    calendar months (UTC) the run touches of each month's highest window average times the share
    of the month simulated, kW).

    Windows are ``window_minutes`` long and aligned to the UTC clock (to midnight when they
    divide a day); the window average is the window's grid energy over its length, integrated
    exactly. A window belongs to the month in which it starts (or the run starts, if later).
    When the windows are the settlement slots, ``slot_kwh`` (grid energy per slot) is used.
    """
    window_s = window_minutes * 60.0
    shift = origin.timestamp() % window_s  # the run starts this long into a clock-aligned window
    if window_s == slot_s and shift == 0.0:
        windows, kwh = np.arange(len(slot_kwh)), slot_kwh
    else:
        pieces = _slot_pieces({"t0": seg["t0"] + shift, "t1": seg["t1"] + shift}, window_s)
        _, grid_kwh = _piece_kwh(seg, seg_curves, pieces, shift)
        windows, inv = np.unique(pieces["slot"], return_inverse=True)
        kwh = np.bincount(inv, grid_kwh, minlength=len(windows))
    avg_kw = kwh / (window_s / 3600.0)
    begins = origin + pd.to_timedelta(np.maximum(windows * window_s - shift, 0.0), unit="s")
    end = origin + pd.Timedelta(days=days)
    weighted = 0.0
    month = origin.tz_convert("UTC").replace(tzinfo=None).to_period("M")
    while month.start_time.tz_localize("UTC") < end:
        m0, m1 = month.start_time.tz_localize("UTC"), (month + 1).start_time.tz_localize("UTC")
        share = (min(m1, end) - max(m0, origin)) / (m1 - m0)
        inside = (begins >= m0) & (begins < m1)
        weighted += float(avg_kw[inside].max(initial=0.0)) * share
        month += 1
    return float(avg_kw.max(initial=0.0)), weighted


# -- instantaneous site power ------------------------------------------------------------------
#
# A segment draws a flat power until its taper binds, then a power that decays exponentially
# (twin.battery.power_profile_array); after its end, nothing. The site power S(t) is
# right-continuous and, between two consecutive breakpoints q_j (segment starts and ends, the
# changes from flat to taper, batteries full), equals
#
#     F_j + sum over rates k of A_k(q_j) exp(-k (t - q_j)),
#
# F_j: the flat powers drawn at q_j (a sweep: +p at a start, -p at the end of the flat part);
# A_k: the taper power at q_j of the segments tapering at rate k (one rate per car model).
# S rises only at segment starts, so its maximum is at a start.
#
# The taper terms are accumulated per rate, not per segment: pairing each breakpoint with each
# segment tapering there costs ~10^8 pairs in a 10,000-car week where every car tapers. For one
# rate k, A(q) = exp(-k (q - r)) * (running sum of P_i exp(k (tc_i - r)) over the segments in
# taper at q: added at their taper start tc_i, removed at their end), r the start of a time block
# of _BLOCK / k, so the scaled weights stay below e^_BLOCK. Segments still tapering at a block's
# start are carried into it as an event there. Removals and carries use the same float
# expression as the addition, so they cancel exactly. The cost is one running sum over these
# events plus one term per (breakpoint, rate) while a car of that rate tapers: ~2 per breakpoint
# for a fleet of two car models, but one per tapering car for cars that all differ (distinct
# battery sizes in a replay), evaluated in chunks of _CHUNK terms so memory stays bounded.

_BLOCK = 20.0
_CHUNK = 2_000_000


class _SitePower:
    """Exact site power of charging segments ``[t0, t1)`` (seconds) drawing ``profile``.

    ``q``: sorted breakpoints (s); ``kw``: site power just after each (kW); ``flat``: its flat
    part; ``end``: the power just before the next breakpoint; ``kws``: the energy of each
    interval ``[q_j, q_j+1)`` (kW s). The last breakpoint's interval is empty (nothing charges).
    """

    def __init__(self, t0: np.ndarray, t1: np.ndarray, profile: dict[str, np.ndarray]) -> None:
        tc = np.minimum(t0 + profile["flat_hours"] * 3600.0, t1)  # flat part [t0, tc)
        te = np.minimum(tc + profile["taper_hours"] * 3600.0, t1)  # taper part [tc, te)
        self.q = q = np.unique(np.concatenate([t0, t1, tc, te]))
        self.m = m = len(q)
        self.dt = np.diff(q, append=q[-1:])  # the last interval is empty
        flat = (tc > t0) & (profile["flat_kw"] > 0)
        i0, ic = np.searchsorted(q, t0[flat]), np.searchsorted(q, tc[flat])
        p = profile["flat_kw"][flat]
        flat_kw = np.cumsum(np.bincount(i0, p, minlength=m) - np.bincount(ic, p, minlength=m)).astype(float)
        drawing = np.cumsum(np.bincount(i0, minlength=m) - np.bincount(ic, minlength=m))
        flat_kw[drawing == 0] = 0.0  # no rounding residue where no flat part runs
        self.flat = flat_kw
        self.kw, self.end, self.kws = flat_kw.copy(), flat_kw.copy(), flat_kw * self.dt
        taper = (te > tc) & (profile["taper_kw"] > 0)
        self._comp_n = np.zeros(0, dtype=np.int64)
        if taper.any():
            self._prepare(tc[taper], te[taper], profile["taper_kw"][taper], profile["decay_per_hour"][taper] / 3600.0)
            for pq, pkw, pk in self.pairs():
                decay = np.exp(-pk * self.dt[pq])
                self.kw += np.bincount(pq, pkw, minlength=m)
                self.end += np.bincount(pq, pkw * decay, minlength=m)
                self.kws += np.bincount(pq, pkw * -np.expm1(-pk * self.dt[pq]) / pk, minlength=m)
        self.end[-1:] = 0.0

    def _prepare(self, ta: np.ndarray, tb: np.ndarray, tp: np.ndarray, decay: np.ndarray) -> None:
        q, m = self.q, self.m
        self.rates, g = np.unique(decay, return_inverse=True)
        g = g.astype(np.int64)
        ia, ib = np.searchsorted(q, ta), np.searchsorted(q, tb)
        # the breakpoints where some segment of each group tapers: merge the group's intervals
        order = np.lexsort((ia, g))
        gs, ias = g[order], ia[order]
        reach = np.maximum.accumulate(gs * m + ib[order])  # restarts per group: groups are sorted
        new = np.ones(len(gs), dtype=bool)
        new[1:] = gs[1:] * m + ias[1:] > reach[:-1]
        first = np.flatnonzero(new)
        last = np.append(first[1:], len(gs)) - 1
        self._comp_g, self._comp_lo = gs[first], ias[first]
        self._comp_n = reach[last] - self._comp_g * m - self._comp_lo
        # running sums per (group, block), with carries at block starts
        self._base = q[0]
        self._nblock = int(np.floor((q[-1] - q[0]) * self.rates.max() / _BLOCK)) + 2
        self._stride = m + 1
        k = self.rates[g]
        ba, bb = self._block(ta, g), self._block(tb, g)
        span = bb - ba
        carry = np.repeat(np.arange(len(ta)), span)
        carry_blk = ba[carry] + 1 + np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
        code = np.concatenate([
            self._code(g, ba, ia + 1),
            self._code(g, bb, ib + 1),
            self._code(g[carry], carry_blk, 0),
        ])
        weight = np.concatenate([
            tp * np.exp(k * (ta - self._ref(ba, g))),
            -tp * np.exp(k * (ta - self._ref(bb, g))),
            tp[carry] * np.exp(k[carry] * (ta[carry] - self._ref(carry_blk, g[carry]))),
        ])
        self._ucode, inv = np.unique(code, return_inverse=True)
        summed = pd.Series(np.bincount(inv, weight, minlength=len(self._ucode)))
        self._running = summed.groupby(self._ucode // self._stride).cumsum().to_numpy()

    def _block(self, t: np.ndarray, grp: np.ndarray) -> np.ndarray:
        return np.floor((t - self._base) * self.rates[grp] / _BLOCK).astype(np.int64)

    def _ref(self, blk: np.ndarray, grp: np.ndarray) -> np.ndarray:
        return self._base + blk * _BLOCK / self.rates[grp]

    def _code(self, grp: np.ndarray, blk: np.ndarray, pos: np.ndarray | int) -> np.ndarray:
        return (grp * self._nblock + blk) * self._stride + pos

    def pairs(self, components: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The taper terms, in chunks of about ``_CHUNK``: (breakpoint index, taper power of one
        rate group there in kW, the group's decay in 1/s); all, or those of ``components``."""
        idx = np.arange(len(self._comp_n)) if components is None else components
        total = np.cumsum(self._comp_n[idx])
        start = 0
        while start < len(idx):
            done = total[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(total, done + _CHUNK, side="right")))
            part = idx[start:stop]
            n = self._comp_n[part]
            grp = np.repeat(self._comp_g[part], n)
            pq = np.repeat(self._comp_lo[part] - np.cumsum(n) + n, n) + np.arange(n.sum())
            blk = self._block(self.q[pq], grp)
            pos = np.searchsorted(self._ucode, self._code(grp, blk, pq + 1), side="right") - 1
            pk = self.rates[grp]
            pkw = np.maximum(np.exp(-pk * (self.q[pq] - self._ref(blk, grp))) * self._running[pos], 0.0)
            yield pq, pkw, pk
            start = stop

    def above(self, limit_kw: float) -> tuple[float, float]:
        """Seconds the site power was above ``limit_kw``, and the energy above it, kWh.

        Per interval between breakpoints the power is a constant plus decaying exponentials, so
        the integrals are closed form. Where a taper decays through the limit, the crossing time
        is solved by Newton's method (from the interval's start it converges monotonically on
        the convex, decreasing power) to 1e-6 s.
        """
        above = self.kw > limit_kw
        whole = above & (self.end >= limit_kw)
        seconds = float(self.dt[whole].sum())
        kws = float(((self.kws - limit_kw * self.dt)[whole]).sum())
        cross = np.flatnonzero(above & ~whole)
        if len(cross):
            # the taper terms of the crossing intervals (of the components that contain one)
            lo = self._comp_lo
            hit = np.flatnonzero(np.searchsorted(cross, lo) < np.searchsorted(cross, lo + self._comp_n))
            cj, ckw, ck = [], [], []
            for pq, pkw, pk in self.pairs(hit):
                keep = np.isin(pq, cross)
                cj.append(np.searchsorted(cross, pq[keep]))
                ckw.append(pkw[keep])
                ck.append(pk[keep])
            cj, ckw, ck = np.concatenate(cj), np.concatenate(ckw), np.concatenate(ck)
            c_flat, c_dt, t = self.flat[cross], self.dt[cross], np.zeros(len(cross))
            n = len(cross)
            for _ in range(200):
                decayed = ckw * np.exp(-ck * t[cj])
                f = c_flat + np.bincount(cj, decayed, minlength=n) - limit_kw
                slope = np.bincount(cj, ck * decayed, minlength=n)  # -dS/dt, > 0 while tapering
                with np.errstate(divide="ignore", invalid="ignore"):
                    step = np.where(slope > 0, np.maximum(f, 0.0) / slope, 0.0)
                t_new = np.minimum(t + step, c_dt)
                done = np.max(t_new - t) < 1e-6
                t = t_new
                if done:
                    break
            seconds += float(t.sum())
            taper = np.bincount(cj, ckw * -np.expm1(-ck * t[cj]) / ck, minlength=n)
            kws += float(((c_flat - limit_kw) * t + taper).sum())
        return seconds, kws / 3600.0


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
    site_limit_kw: float | None = None,
    demand_charge_gbp_per_kw_month: float | None = None,
    demand_window_minutes: int = 30,
) -> SimulationResult:
    """Assemble KPIs and tables. ``origin`` is simulated time 0 (= first signal slot).

    ``site_limit_kw``: the site's power limit for ``minutes_above_limit`` and
    ``energy_above_limit_kwh`` (None: those KPIs are NaN). ``demand_charge_gbp_per_kw_month``:
    the demand charge rate for ``demand_cost_gbp`` (None: no demand charge), applied to the
    highest site power averaged over ``demand_window_minutes`` in each calendar month.
    """
    for name, value in (("site_limit_kw", site_limit_kw),
                        ("demand_charge_gbp_per_kw_month", demand_charge_gbp_per_kw_month)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 or None (got {value!r})")
    window = demand_window_minutes
    if isinstance(window, bool) or int(window) != window or window <= 0:
        raise ValueError(f"demand_window_minutes must be a positive whole number (got {demand_window_minutes!r})")
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
    battery_kwh, grid_kwh = _piece_kwh(seg, seg_curves, pieces)
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

    # -- instantaneous site power, demand windows ------------------------------------------------
    site = _SitePower(seg["t0"], seg["t1"], power_profile_array(seg_curves, seg["soc0"]))
    at_ends = np.isin(site.q, np.concatenate([seg["t0"], seg["t1"]]))
    site_power = _site_power_frame(origin_ts, site.q[at_ends], site.kw[at_ends])
    peak_demand_kw, monthly_peaks_kw = _demand(seg, seg_curves, origin_ts, days, int(demand_window_minutes),
                                               slot_s, slot_energy)
    # missing values are math.nan, one object, so two equal runs still give equal KPI dicts
    # (dict comparison takes identical objects as equal; NaN == NaN is False)
    minutes_above, kwh_above = math.nan, math.nan
    if site_limit_kw is not None:
        seconds_above, kwh_above = site.above(float(site_limit_kw))
        minutes_above = seconds_above / 60.0
    fleet_kw = ts["fleet_kw"].to_numpy()

    # -- KPIs ----------------------------------------------------------------------------------
    total_energy = float(grid_kwh.sum())
    cost = float((grid_kwh * price).sum())
    fair = out_sessions["target_reachable"] & ~out_sessions["left_early"]
    demand_cost = float(demand_charge_gbp_per_kw_month or 0.0) * monthly_peaks_kw
    kpis = {
        "vehicles": int(len(vehicles)),
        "sessions": int(nsess),
        "vehicle_days": int(len(vehicles) * days),
        "energy_delivered_kwh": total_energy,
        "energy_to_batteries_kwh": float(battery_kwh.sum()),
        "cost_gbp": cost,
        "energy_cost_gbp": cost,
        "demand_cost_gbp": demand_cost,
        "total_cost_gbp": cost + demand_cost,
        "avg_price_gbp_per_kwh": cost / total_energy if total_energy > 0 else float("nan"),
        "carbon_kg": float((grid_kwh * carbon).sum() / 1000.0),
        "ready_by_met_share": float(met.mean()) if nsess else float("nan"),
        "ready_by_met_share_reachable": float(met[fair.to_numpy()].mean()) if fair.any() else float("nan"),
        "shortfall_kwh": float(shortfall.sum()),
        "shortfall_mean_kwh": float(shortfall.mean()) if nsess else math.nan,
        "shortfall_es95_kwh": _expected_shortfall(shortfall, 0.05),
        "peak_fleet_kw": float(fleet_kw.max()),
        "peak_site_kw_instant": float(site.kw.max(initial=0.0)),
        "ramp_fleet_kw_max": float(np.abs(np.diff(fleet_kw)).max()) if nslots > 1 else math.nan,
        "peak_demand_kw": peak_demand_kw,
        "minutes_above_limit": minutes_above,
        "energy_above_limit_kwh": kwh_above,
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
    return SimulationResult(scenario, policy, seed, kpis, out_sessions, ts, events, vehicles, charging, site_power)


def _expected_shortfall(values: np.ndarray, tail: float) -> float:
    """Mean of the worst ``tail`` share of ``values`` (the boundary value weighted by the
    fraction of it inside the tail), or the worst value when the tail is less than one."""
    n = len(values)
    if n == 0:
        return math.nan
    worst = np.sort(values)[::-1]
    size = tail * n
    if size <= 1.0:
        return float(worst[0])
    whole = int(np.floor(size))
    part = size - whole
    total = worst[:whole].sum() + (part * worst[whole] if part > 0 else 0.0)
    return float(total / size)


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
