"""The slot model as one LP/MILP built directly as sparse matrices for HiGHS (``highspy``).

This is the general exact path: any mix of modulated and on/off cars, with or without a feeder
limit. It builds the same model as :mod:`.pyomo_model` without per-element Python objects:
columns and rows are numpy blocks over the (car, slot) pairs inside the windows.

Columns, per (car, slot) pair in a window
    ``x`` grid energy (kWh); ``y`` cumulative energy to the end of the slot (kWh, only for cars
    with taper or on/off control); for on/off cars also the binaries ``on``, ``yc`` (at the
    power limit), ``yu`` (at the taper limit), ``yf`` (reaches the target) and the continuous
    ``start`` and ``done`` (target reached in an earlier slot).
Rows
    ``sum_t x <= E`` per car; ``y[t] = y[t-1] + x[t]``; taper
    ``(1 + alpha) x[t] + alpha y[t-1] <= A`` where the as-soon-as-possible trajectory can pass
    ``E_m``; feeder ``sum_i x[i, t] <= feeder_kw[t] * slot_hours`` where the fleet's limits can
    exceed it; and for on/off cars ``x <= cap on``, ``on = yc + yu + yf``, ``x >= cap yc``,
    ``(1 + alpha) x + alpha y[t-1] >= A yu``, ``y >= E yf``, ``start >= on[t] - on[t-1]``,
    ``done[t] = done[t-1] + yf[t-1]``, ``on + done <= 1``, ``sum yf <= 1`` and
    ``on[t+k] + done[t+k] >= start[t]`` for ``k < min_run_slots``.
Bounds
    The min-SoC trajectory fixes ``x`` in the slots before it is met and bounds the slot where
    it is met from below (equivalent to ``S[t] >= min(asap[t], min-SoC energy)`` because no
    plan can be ahead of the as-soon-as-possible trajectory).
"""

from __future__ import annotations

import os
import sys
import time

import highspy
import numpy as np

from ._physics import asap_levels, cached, cached_forced_prefix
from .errors import InfeasibleProblem, SolverFailed
from .problem import FleetProblem, Plan, evaluate_plan

__all__ = ["solve_highs", "HighsModel", "build_highs_model"]


class _Builder:
    def __init__(self) -> None:
        self.ncol = 0
        self.nrow = 0
        self.cl, self.cu, self.cc, self.ci = [], [], [], []
        self.rl, self.ru = [], []
        self.tr, self.tc, self.tv = [], [], []

    def cols(self, lower, upper, cost, integer=False) -> np.ndarray:
        lower = np.asarray(lower, float)
        k = lower.size
        idx = np.arange(self.ncol, self.ncol + k)
        self.ncol += k
        self.cl.append(lower)
        self.cu.append(np.broadcast_to(np.asarray(upper, float), (k,)).copy())
        self.cc.append(np.broadcast_to(np.asarray(cost, float), (k,)).copy())
        self.ci.append(np.full(k, 1 if integer else 0, np.int8))
        return idx

    def rows(self, lower, upper) -> np.ndarray:
        lower = np.broadcast_to(np.asarray(lower, float), np.shape(upper) if np.ndim(upper) else np.shape(lower))
        upper = np.broadcast_to(np.asarray(upper, float), lower.shape)
        k = lower.size
        idx = np.arange(self.nrow, self.nrow + k)
        self.nrow += k
        self.rl.append(lower.copy())
        self.ru.append(upper.copy())
        return idx

    def coef(self, r, c, v) -> None:
        r, c = np.broadcast_arrays(np.asarray(r, np.int64), np.asarray(c, np.int64))
        v = np.broadcast_to(np.asarray(v, float), r.shape)
        self.tr.append(r.ravel())
        self.tc.append(c.ravel())
        self.tv.append(v.ravel().copy())

    def to_lp(self) -> tuple[highspy.HighsLp, bool]:
        lp = highspy.HighsLp()
        lp.num_col_ = self.ncol
        lp.num_row_ = self.nrow
        cat = lambda xs, dt=float: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        lp.col_cost_ = cat(self.cc)
        lp.col_lower_ = cat(self.cl)
        lp.col_upper_ = cat(self.cu)
        lp.row_lower_ = cat(self.rl)
        lp.row_upper_ = cat(self.ru)
        r = cat(self.tr, np.int64)
        c = cat(self.tc, np.int64)
        v = cat(self.tv)
        keep = v != 0
        r, c, v = r[keep], c[keep], v[keep]
        order = np.lexsort((r, c))
        r, c, v = r[order], c[order], v[order]
        start = np.zeros(self.ncol + 1, np.int64)
        np.cumsum(np.bincount(c, minlength=self.ncol), out=start[1:])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = start.astype(np.int32)
        lp.a_matrix_.index_ = r.astype(np.int32)
        lp.a_matrix_.value_ = v
        integ = cat(self.ci, np.int8)
        is_mip = bool(integ.any())
        if is_mip:
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in integ]
        return lp, is_mip


class HighsModel:
    """A built model: the HiGHS LP object plus the map from ``x`` columns to (car, slot)."""

    def __init__(self, lp, is_mip, x_cols, pairs, n_cars, n_slots, offset, car_rows):
        self.lp = lp
        self.is_mip = is_mip
        self.x_cols = x_cols
        self.pairs = pairs
        self.n_cars = n_cars
        self.n_slots = n_slots
        self.offset = offset
        self.car_rows = car_rows


def _taper_can_bind(p: FleetProblem) -> np.ndarray:
    """(N, T) mask of slots whose taper row may bind: the fastest trajectory passes ``E_m``."""
    asap = cached(p, "asap", asap_levels)
    return p.has_taper[:, None] & (asap > p.taper_free_kwh[:, None] - 1e-9) & (p.availability > 0)


def build_highs_model(p: FleetProblem, cars: np.ndarray | None = None, use_feeder: bool = True) -> HighsModel:
    """Build the slot model of ``cars`` (default all) as a HiGHS LP (MILP if any car is on/off)."""
    idx = np.arange(p.n_cars) if cars is None else np.asarray(cars, np.int64)
    T = p.n_slots
    fp = cached_forced_prefix(p)
    avail = p.availability[idx]
    ci, ti = np.nonzero(avail > 0)  # pairs, car-major then time
    gi = idx[ci]
    npair = ci.size
    b = _Builder()
    cap = p.cap_kwh[gi, ti]
    cost = p.unit_cost()[gi, ti] - p.shortfall_value[gi]
    lo = np.where(ti < fp.first_free[gi], fp.energy_kwh[gi, ti], 0.0)
    lo = np.where(ti == fp.first_free[gi], fp.lower_kwh[gi], lo)
    hi = np.where(ti < fp.first_free[gi], fp.energy_kwh[gi, ti], cap)
    hi = np.maximum(hi, lo)
    x = b.cols(lo, hi, cost)
    offset = float((p.shortfall_value[idx] * p.need_kwh[idx]).sum())
    # first / previous pair of the same car
    first = np.ones(npair, bool)
    first[1:] = ci[1:] != ci[:-1]
    prev = np.arange(npair) - 1
    # per car energy row
    car_rows = b.rows(np.full(idx.size, -np.inf), p.need_kwh[idx])
    b.coef(car_rows[ci], x, 1.0)
    onoff = p.is_onoff[gi]
    taper = p.has_taper[gi]
    need_y = taper | onoff
    yv = np.full(npair, -1)
    if need_y.any():
        py = np.flatnonzero(need_y)
        yv[py] = b.cols(np.zeros(py.size), p.need_kwh[gi[py]], 0.0)
        r = b.rows(np.zeros(py.size), np.zeros(py.size))
        b.coef(r, yv[py], 1.0)
        b.coef(r, x[py], -1.0)
        hp = ~first[py]
        b.coef(r[hp], yv[prev[py[hp]]], -1.0)
    alpha = p.taper_alpha[gi, ti]
    rhs = p.taper_rhs_kwh[gi, ti]
    bind = _taper_can_bind(p)[gi, ti] | (onoff & taper)
    pt = np.flatnonzero(taper & bind)
    if pt.size:
        r = b.rows(np.full(pt.size, -np.inf), rhs[pt])
        b.coef(r, x[pt], 1.0 + alpha[pt])
        hp = ~first[pt]
        b.coef(r[hp], yv[prev[pt[hp]]], alpha[pt[hp]])
    if use_feeder and p.feeder_kw is not None:
        lim = p.feeder_kw * p.slot_hours
        capsum = np.bincount(ti, weights=cap, minlength=T)
        slots = np.flatnonzero(capsum > lim)
        if slots.size:
            r = b.rows(np.full(slots.size, -np.inf), lim[slots])
            rmap = np.full(T, -1)
            rmap[slots] = r
            sel = rmap[ti] >= 0
            b.coef(rmap[ti[sel]], x[sel], 1.0)
    if onoff.any():
        po = np.flatnonzero(onoff)
        k = po.size
        on = b.cols(np.zeros(k), 1.0, 0.0, integer=True)
        yc = b.cols(np.zeros(k), 1.0, 0.0, integer=True)
        yf = b.cols(np.zeros(k), 1.0, 0.0, integer=True)
        yu = b.cols(np.zeros(k), np.where(taper[po], 1.0, 0.0), 0.0, integer=True)
        st = b.cols(np.zeros(k), 1.0, p.start_penalty_gbp[gi[po]])
        fo = first[po]
        dn = b.cols(np.zeros(k), np.where(fo, 0.0, 1.0), 0.0)
        pos = np.full(npair, -1)
        pos[po] = np.arange(k)
        capo = cap[po]
        # x <= cap * on
        r = b.rows(np.full(k, -np.inf), np.zeros(k))
        b.coef(r, x[po], 1.0)
        b.coef(r, on, -capo)
        # on = yc + yu + yf
        r = b.rows(np.zeros(k), np.zeros(k))
        b.coef(r, on, 1.0)
        b.coef(r, yc, -1.0)
        b.coef(r, yu, -1.0)
        b.coef(r, yf, -1.0)
        # x >= cap * yc
        r = b.rows(np.zeros(k), np.full(k, np.inf))
        b.coef(r, x[po], 1.0)
        b.coef(r, yc, -capo)
        # at the taper limit when yu: (1 + alpha) x + alpha y[t-1] >= A * yu
        tp = np.flatnonzero(taper[po])
        if tp.size:
            r = b.rows(np.zeros(tp.size), np.full(tp.size, np.inf))
            pp = po[tp]
            b.coef(r, x[pp], 1.0 + alpha[pp])
            hp = ~first[pp]
            b.coef(r[hp], yv[prev[pp[hp]]], alpha[pp[hp]])
            b.coef(r, yu[tp], -rhs[pp])
        # reaches the target when yf: y >= E * yf
        r = b.rows(np.zeros(k), np.full(k, np.inf))
        b.coef(r, yv[po], 1.0)
        b.coef(r, yf, -p.need_kwh[gi[po]])
        # start >= on[t] - on[t-1]
        r = b.rows(np.zeros(k), np.full(k, np.inf))
        b.coef(r, st, 1.0)
        b.coef(r, on, -1.0)
        nf = np.flatnonzero(~fo)
        b.coef(r[nf], on[nf - 1], 1.0)
        # done[t] = done[t-1] + yf[t-1]
        r = b.rows(np.zeros(nf.size), np.zeros(nf.size))
        b.coef(r, dn[nf], 1.0)
        b.coef(r, dn[nf - 1], -1.0)
        b.coef(r, yf[nf - 1], -1.0)
        # on + done <= 1
        r = b.rows(np.full(k, -np.inf), np.ones(k))
        b.coef(r, on, 1.0)
        b.coef(r, dn, 1.0)
        # sum yf <= 1 per car
        cars_o, inv = np.unique(ci[po], return_inverse=True)
        r = b.rows(np.full(cars_o.size, -np.inf), np.ones(cars_o.size))
        b.coef(r[inv], yf, 1.0)
        # minimum run: on[t+j] + done[t+j] >= start[t], j = 1 .. min_run - 1 within the window
        runs = p.min_run_slots[gi[po]]
        car_o = ci[po]
        for j in range(1, int(runs.max()) if k else 1):
            src = np.flatnonzero((np.arange(k) + j < k) & (runs > j))
            src = src[car_o[np.minimum(src + j, k - 1)] == car_o[src]]
            if not src.size:
                continue
            r = b.rows(np.zeros(src.size), np.full(src.size, np.inf))
            b.coef(r, on[src + j], 1.0)
            b.coef(r, dn[src + j], 1.0)
            b.coef(r, st[src], -1.0)
        del pos
    lp, is_mip = b.to_lp()
    return HighsModel(lp, is_mip, x, (ci, ti), idx.size, T, offset, car_rows)


_banner_swallowed = False


def quiet_highs() -> highspy.Highs:
    """A HiGHS instance that prints nothing.

    HiGHS prints a copyright banner from its C++ constructor the first time a process creates
    one, before any option can be set; that first construction writes to /dev/null instead of
    the user's KPI tables.
    """
    global _banner_swallowed
    if _banner_swallowed:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _banner_swallowed = True
    h.setOptionValue("output_flag", False)
    return h


def run_highs(model: HighsModel, *, time_limit: float | None = None, mip_rel_gap: float = 1e-9) -> tuple[highspy.Highs, np.ndarray]:
    """Solve a built model; returns the solver and the (n, T) energy matrix."""
    h = quiet_highs()
    if model.is_mip:
        # Exactness: the default relative gap (1e-4) would accept plans 0.01 % above the optimum.
        h.setOptionValue("mip_rel_gap", mip_rel_gap)
        h.setOptionValue("mip_abs_gap", 1e-9)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    h.passModel(model.lp)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        raise InfeasibleProblem(
            "the constraints cannot all hold: min-SoC charging or window limits exceed the feeder limit"
        )
    if status != highspy.HighsModelStatus.kOptimal:
        raise SolverFailed(f"HiGHS stopped with status {h.modelStatusToString(status)}")
    sol = np.asarray(h.getSolution().col_value)
    ci, ti = model.pairs
    x = np.zeros((model.n_cars, model.n_slots))
    x[ci, ti] = sol[model.x_cols]
    return h, x


def solve_highs(problem: FleetProblem, cars: np.ndarray | None = None) -> Plan | np.ndarray:
    """Solve the whole fleet (or ``cars``, then returning only their energy rows) with HiGHS."""
    t0 = time.perf_counter()
    model = build_highs_model(problem, cars)
    _, x = run_highs(model)
    if cars is not None:
        return x
    return evaluate_plan(problem, x, method="highs", solve_seconds=time.perf_counter() - t0)
