"""Fast exact path for independent modulated cars (no feeder limit).

Without a feeder limit the fleet problem splits into one LP per car. Each is solved in two
vectorised stages:

1. **Cheapest fill.** Drop the taper: the LP is then a fractional knapsack whose exact answer
   fills the cheapest available slots (by ``price + weight * carbon / 1000``) up to the need,
   after the min-SoC prefix. When the slot cost is shared by all cars, one ``argsort`` of the
   ``T`` slots serves every car. Slots costing more than the shortfall value
   ``penalty * efficiency`` are never filled.
2. **Taper.** A relaxation optimum that also satisfies the taper rows is optimal. Cars whose
   fill breaks a taper row (charge above the knee where the car's limit is below
   ``max_kw``) go to the exact dynamic programme of :mod:`._taper_dp`.

Cars the programme refuses are returned with ``ok = False`` so that the caller can route
exactly those cars to an LP.
"""

from __future__ import annotations

import numpy as np

from ._blocks import _map_blocks
from ._physics import cached_forced_prefix, cumsum_rows, step_up
from .problem import FEASIBILITY_TOL_KWH, FleetProblem
from ._taper_dp import solve_taper_cars

__all__ = ["solve_independent_modulated"]

# Cars are processed in blocks so that the (cars x slots) work arrays stay in a few MB of cache
# and peak memory stays flat at 100k cars.
CHUNK_CARS = 8192


def _fill(cap: np.ndarray, need: np.ndarray, order: np.ndarray | None, cost: np.ndarray, out=None) -> np.ndarray:
    """Fill ``need`` (n,) into capacities ``cap`` (n, T) cheapest first (into ``out`` if given).

    ``order`` is one slot order for all cars (shared cost) or ``None`` to sort ``cost`` (n, T)
    per car.
    """
    if order is None:
        order_m = np.argsort(cost, axis=1, kind="stable")
        cs = np.take_along_axis(cap, order_m, axis=1)
    else:
        cs = cap[:, order]
    cum = cumsum_rows(cs)
    take = np.clip(need[:, None] - (cum - cs), 0.0, cs)
    if out is None:
        out = np.empty_like(cap)
    if order is None:
        np.put_along_axis(out, order_m, take, axis=1)
    else:
        out[:, order] = take
    return out


def solve_independent_modulated(
    problem: FleetProblem,
    cars: np.ndarray | None = None,
    extra_cost_gbp_per_kwh: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve each car's LP exactly as if no feeder limit applied.

    Parameters
    ----------
    problem : FleetProblem
    cars : ndarray of int, optional
        Which cars to solve (default all). Every car is treated as modulated.
    extra_cost_gbp_per_kwh : ndarray, shape (T,), optional
        Cost added to every car's slot cost (GBP/kWh); used by the feeder decomposition to
        price the feeder limit.

    Returns
    -------
    energy : ndarray, shape (n, T)
        Grid energy per selected car and slot (kWh).
    ok : ndarray of bool, shape (n,)
        ``False`` where the exact method refused the car (its row of ``energy`` is zero).
    used_dp : ndarray of bool, shape (n,)
        Whether the taper programme produced the car's plan.
    """
    p = problem
    idx = np.arange(p.n_cars) if cars is None else np.asarray(cars, dtype=np.int64)
    n, T = idx.size, p.n_slots
    energy = np.zeros((n, T))
    ok = np.ones(n, bool)
    used_dp = np.zeros(n, bool)
    if n == 0:
        return energy, ok, used_dp
    fp = cached_forced_prefix(p)
    shared = p.unit_cost_shared
    extra = None if extra_cost_gbp_per_kwh is None else np.asarray(extra_cost_gbp_per_kwh, float)
    order = None
    if shared is not None:
        c_shared = shared if extra is None else shared + extra
        order = np.argsort(c_shared, kind="stable")
    _, last_all = p.window
    cols = np.arange(T)[None, :]
    dp_rows: list[np.ndarray] = []
    any_forced = not fp.nothing_forced and bool(np.any(fp.energy_kwh[idx]) or np.any(fp.lower_kwh[idx]))
    contiguous = idx.size == 0 or (idx[-1] - idx[0] + 1 == idx.size and bool((np.diff(idx) == 1).all()))
    sv_all = p.shortfall_value[idx]
    # With shared costs all below every car's shortfall value, no slot is ever excluded.
    all_worth = shared is not None and float(c_shared.max()) < float(sv_all.min())

    def first_pass(lo):
        # Slices (views) rather than index arrays (copies) when the cars are a contiguous range.
        sl = slice(idx[lo], idx[min(lo + CHUNK_CARS, n) - 1] + 1) if contiguous else idx[lo:lo + CHUNK_CARS]
        m = min(lo + CHUNK_CARS, n) - lo
        sl_idx = idx[lo:lo + CHUNK_CARS]
        if shared is not None:
            cost = np.broadcast_to(c_shared, (m, T))
        else:
            cost = p.unit_cost()[sl]
            if extra is not None:
                cost = cost + extra
        sv = sv_all[lo:lo + m]
        worth = None if all_worth else cost < sv[:, None]
        ff = fp.first_free[sl]
        lb = fp.lower_kwh[sl]
        _, cap, _, _ = p.limit_rows(sl, taper=False)
        rows = np.arange(m)
        if any_forced:
            fixed = fp.energy_kwh[sl].copy()
            has_free = ff < T
            ffc = np.minimum(ff, T - 1)
            fixed[rows[has_free], ffc[has_free]] += lb[has_free]
            free_cap = np.where(cols > ff[:, None], cap, 0.0)
            free_cap[rows[has_free], ffc[has_free]] = np.maximum(cap[rows[has_free], ffc[has_free]] - lb[has_free], 0.0)
            rest = np.maximum(p.need_kwh[sl] - fixed.sum(axis=1), 0.0)
        else:
            fixed = None
            free_cap = cap
            rest = p.need_kwh[sl]
        if worth is not None:
            free_cap = np.where(worth, free_cap, 0.0)
        x = _fill(free_cap, rest, order, cost, out=energy[lo:lo + m])
        if fixed is not None:
            x += fixed
        # Taper rows: x[t] * (1 + alpha) + alpha * S[t-1] <= A, i.e. x + alpha * S[t] <= A.
        # They can only bind for a car whose final level passes E_m.
        bad = np.zeros(m, bool)
        chk = np.flatnonzero(p.has_taper[sl] & (x.sum(axis=1) > p.taper_free_kwh[sl]))
        if chk.size:
            xc = x[chk]
            cum = np.cumsum(xc, axis=1)
            _, _, alpha, rhs = p.limit_rows(sl_idx[chk])
            bad[chk] = (xc + alpha * cum > rhs + 1e-9).any(axis=1)
        if bad.any():
            b = np.flatnonzero(bad)
            gi = sl_idx[b]
            u0 = ff[b]
            uL = last_all[gi]
            single = u0 >= uL
            if single.any():
                # One free slot left: take as much as the limit and the target allow, if it pays.
                bs, gs = b[single], gi[single]
                u = np.minimum(u0[single], T - 1)
                base = fp.level_kwh[gs]
                _, _, alpha_s, rhs_s = p.limit_rows(gs)
                rs = np.arange(bs.size)
                top = step_up(base, cap[bs, u], alpha_s[rs, u], rhs_s[rs, u], True)
                top = np.minimum(top, p.need_kwh[gs])
                pays = np.ones(bs.size, bool) if worth is None else worth[bs, u]
                xs = fp.energy_kwh[gs].copy()
                xs[np.arange(bs.size), u] = np.where(pays, top - base, lb[bs])
                x[bs] = xs
            multi = ~single
            if multi.any():
                dp_rows.append(lo + b[multi])

    _map_blocks(first_pass, list(range(0, n, CHUNK_CARS)))
    if dp_rows:
        rows_dp = np.sort(np.concatenate(dp_rows))
        _solve_dp_cars(p, idx, rows_dp, energy, ok, used_dp, c_shared if shared is not None else None, extra)
    return energy, ok, used_dp


# Taper programmes are run on blocks of this many cars, grouped by the length of their taper
# grids so that the padded state arrays stay narrow.
DP_CHUNK_CARS = 4096


def _solve_dp_cars(p, idx, rows_dp, energy, ok, used_dp, c_shared, extra) -> None:
    """Run :func:`solve_taper_cars` on ``idx[rows_dp]`` and write their plans in place."""
    T = p.n_slots
    cols = np.arange(T)[None, :]
    fp = cached_forced_prefix(p)
    _, last_all = p.window
    gi_all = idx[rows_dp]
    h = p.slot_hours
    alpha1_all = h * p.taper_slope_kw[gi_all] * p.soc_per_kwh[gi_all]
    # Proxy for the grid length: taper steps from E_m to the target (contraction towards s*).
    s_star = p.taper_knee_soc[gi_all] + p.vehicle_max_kw[gi_all] / np.maximum(p.taper_slope_kw[gi_all], 1e-12)
    d_m = p.rate_kw[gi_all] / np.maximum(p.taper_slope_kw[gi_all], 1e-12)
    d_e = np.maximum(s_star - p.target_soc[gi_all], 1e-12)
    est = np.ceil(np.log(np.maximum(d_m / d_e, 1.0)) / np.log1p(np.maximum(alpha1_all, 1e-12)))
    # Blocks group cars by grid length (coarsely) and then by window, so that both the padded
    # state arrays and the set of distinct head cases per block stay small.
    order = np.lexsort((last_all[gi_all], fp.first_free[gi_all], np.floor(est / 3.0)))
    blocks = [order[lo:lo + DP_CHUNK_CARS] for lo in range(0, order.size, DP_CHUNK_CARS)]

    def run(sel):
        r = rows_dp[sel]
        gm = idx[r]
        if c_shared is not None:
            cost = np.broadcast_to(c_shared, (gm.size, T))
        else:
            cost = p.unit_cost()[gm]
            if extra is not None:
                cost = cost + extra
        sv = p.shortfall_value[gm]
        q = np.where(cost < sv[:, None], cost - sv[:, None], 0.0)
        q_offset = None
        limits = p.limit_rows(gm)
        avail = limits[0]
        if c_shared is not None:
            # Shared slot costs: heads can be shared if no window slot costs more than the
            # shortfall value (then every car ranks its slots the same way).
            in_win = avail > 0
            if not (in_win & (cost >= sv[:, None])).any():
                q_offset = sv
        u0 = fp.first_free[gm]
        cap1 = h * p.rate_kw[gm]
        rhs1 = h * (p.vehicle_max_kw[gm] - p.taper_slope_kw[gm] * (p.soc0[gm] - p.taper_knee_soc[gm]))
        xf, okm = solve_taper_cars(
            q, avail, u0, last_all[gm], fp.lower_kwh[gm], fp.level_kwh[gm],
            cap1, alpha1_all[sel], rhs1, p.need_kwh[gm], p.taper_free_kwh[gm], q_offset,
        )
        xm = np.where(cols < u0[:, None], fp.energy_kwh[gm], 0.0) + xf
        okm &= _feasible(p, gm, xm, limits)
        energy[r] = np.where(okm[:, None], xm, 0.0)
        ok[r[~okm]] = False
        used_dp[r] = okm

    _map_blocks(run, blocks)


def _feasible(p: FleetProblem, cars: np.ndarray, x: np.ndarray, limits=None) -> np.ndarray:
    """Per-car check of a plan against power, taper, window, target and min-SoC limits.

    ``limits`` is ``p.limit_rows(cars)`` when the caller already has it.
    """
    tol = FEASIBILITY_TOL_KWH
    _, cap, alpha, rhs = p.limit_rows(cars) if limits is None else limits
    cum = np.cumsum(x, axis=1)
    fp = cached_forced_prefix(p)
    ok = (x >= -tol).all(axis=1)
    ok &= (x <= cap + tol).all(axis=1)
    lhs = x + alpha * cum
    ok &= ~(p.has_taper[cars][:, None] & (lhs > rhs + tol)).any(axis=1)
    ok &= (cum[:, -1] <= p.need_kwh[cars] + tol)
    if fp.nothing_forced:
        return ok & (cum >= -tol).all(axis=1)
    floor = np.cumsum(fp.energy_kwh[cars], axis=1)
    T = x.shape[1]
    rows = np.arange(cars.size)
    ffc = np.minimum(fp.first_free[cars], T - 1)
    has = fp.first_free[cars] < T
    lbcum = np.where(np.arange(T)[None, :] >= ffc[:, None], (floor[rows, -1] + fp.lower_kwh[cars] * has)[:, None], floor)
    ok &= (cum >= lbcum - tol).all(axis=1)
    return ok
