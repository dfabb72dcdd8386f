"""Exact path for independent on/off cars: a dynamic programme per car, vectorised over cars.

An on/off car is either off or drawing its limit ``min(max_kw, L(soc))`` over the available
part of the slot, except in the slot where it reaches its target. Its level after a set of
on-slots is therefore fixed by how many fully available slots were on, plus whether the first
(possibly partly available) window slot was on; the last window slot is the last step. The
programme's state at a slot boundary is

* ``phi``: whether the first window slot was on (two level grids);
* ``i``: how many fully available slots have been on, giving the level ``F[phi][i]``;
* ``rho``: length of the current run, capped at ``min_run_slots`` (0 = off);

plus an absorbing *done* state once the target is reached. Off is allowed when no run is in
progress or the run already lasted ``min_run_slots``; a start (``rho = 0`` and on) costs
``start_penalty_gbp``. Min-SoC slots must be on. The programme runs backwards over the slots
(cost-to-go), then the plan is read forwards from the stored decisions. It is exact: every
feasible on/off pattern is a path of the programme, with its true cost.
"""

from __future__ import annotations

import numpy as np

from ._physics import step_up
from .independent import cached_forced_prefix
from .problem import FleetProblem

__all__ = ["solve_onoff_independent"]

# Cars per block: the decision array is slots x cars x grid x run-states bytes.
CHUNK_CARS = 512

_INF = np.inf


def solve_onoff_independent(problem: FleetProblem, cars: np.ndarray | None = None) -> np.ndarray:
    """Exact plans of on/off cars ignoring any feeder limit; returns (n, T) energies (kWh)."""
    p = problem
    idx = np.arange(p.n_cars) if cars is None else np.asarray(cars, np.int64)
    out = np.zeros((idx.size, p.n_slots))
    for lo in range(0, idx.size, CHUNK_CARS):
        out[lo:lo + CHUNK_CARS] = _solve_block(p, idx[lo:lo + CHUNK_CARS])
    return out


def _solve_block(p: FleetProblem, g: np.ndarray) -> np.ndarray:
    n, T = g.size, p.n_slots
    x = np.zeros((n, T))
    first, last = p.window
    ws, we = first[g], last[g]
    need = p.need_kwh[g]
    live = (ws >= 0) & (need > 0)
    if not live.any():
        return x
    rows = np.arange(n)
    wsc, wec = np.maximum(ws, 0), np.maximum(we, 0)
    q = p.unit_cost()[g] - p.shortfall_value[g][:, None]
    sp = p.start_penalty_gbp[g]
    R = p.min_run_slots[g]
    Rmax = int(R[live].max())
    fp = cached_forced_prefix(p)
    cols = np.arange(T)[None, :]
    forced = (cols < fp.first_free[g][:, None]) & (fp.energy_kwh[g] > 0)
    forced |= (cols == fp.first_free[g][:, None]) & (fp.lower_kwh[g] > 0)[:, None]
    cap, alpha, rhs, taper = p.cap_kwh[g], p.taper_alpha[g], p.taper_rhs_kwh[g], p.has_taper[g]
    h = p.slot_hours
    cap1 = h * p.rate_kw[g]
    alpha1 = h * p.taper_slope_kw[g] * p.soc_per_kwh[g]
    rhs1 = h * (p.vehicle_max_kw[g] - p.taper_slope_kw[g] * (p.soc0[g] - p.taper_knee_soc[g]))

    # ---- level grids: F[phi][:, i] after i fully available on-slots (capped at the target)
    top0 = np.minimum(step_up(np.zeros(n), cap[rows, wsc], alpha[rows, wsc], rhs[rows, wsc], taper), need)
    starts = [np.zeros(n), top0]
    n_int = np.maximum(we - ws - 1, 0)
    width = int(n_int[live].max()) + 1
    F = []
    for phi in range(2):
        lv = np.empty((n, width + 1))
        lv[:, 0] = starts[phi]
        for i in range(width):
            lv[:, i + 1] = np.minimum(step_up(lv[:, i], cap1, alpha1, rhs1, taper), need)
        F.append(lv)
    # reach[phi][:, i]: being on at level i reaches the target
    reach = [f[:, 1:] >= need[:, None] for f in F]
    step = [np.diff(f, axis=1) for f in F]
    done0 = [f[:, 0] >= need for f in F]

    rho = np.arange(Rmax + 1)
    can_stop = (rho[None, :] == 0) | (rho[None, :] >= R[:, None])  # (n, Rmax+1)
    is_off = (rho == 0)[None, :]
    nxt_rho = np.minimum(rho + 1, Rmax)[None, :]
    nxt_rho = np.minimum(nxt_rho, R[:, None])  # (n, Rmax+1): run length saturates at R
    start_cost = np.where(is_off, sp[:, None], 0.0)  # (n, Rmax+1)

    # ---- terminal slot we (cost-to-go from the start of we)
    qL = q[rows, wec]
    capL, alL, rhL = cap[rows, wec], alpha[rows, wec], rhs[rows, wec]
    C = []
    D_last = []
    for phi in range(2):
        lv = F[phi][:, :width]  # levels reachable before we
        eL = np.minimum(step_up(lv, capL[:, None], alL[:, None], rhL[:, None], taper[:, None]), need[:, None]) - lv
        on_cost = qL[:, None, None] * eL[:, :, None] + start_cost[:, None, :]
        off_ok = ~forced[rows, wec][:, None, None] & can_stop[:, None, :]
        off_cost = np.where(off_ok, 0.0, _INF)
        single = (we == ws)[:, None, None]
        on_cost = np.where(single, _INF, on_cost)  # single-slot windows are handled at ws
        c = np.minimum(off_cost, on_cost)
        C.append(c)
        D_last.append(on_cost < off_cost)

    # ---- backward over the fully available slots we-1 .. ws+1
    t_lo = int(ws[live].min()) + 1
    t_hi = int(we[live].max()) - 1
    dec = [np.zeros((max(t_hi - t_lo + 1, 0), n, width, Rmax + 1), bool) for _ in range(2)]
    for t in range(t_hi, t_lo - 1, -1):
        act = live & (t > ws) & (t < we)
        if not act.any():
            continue
        qt = q[:, t][:, None, None]
        fz = forced[:, t][:, None, None]
        for phi in range(2):
            c = C[phi]
            # on: one step along the grid, run grows; reaching the target ends in "done" (0)
            nxt = np.empty_like(c)
            nxt[:, :-1, :] = np.take_along_axis(
                c[:, 1:, :], np.broadcast_to(nxt_rho[:, None, :], (n, width - 1, Rmax + 1)), axis=2
            ) if width > 1 else nxt[:, :-1, :]
            nxt[:, -1, :] = _INF
            nxt = np.where(reach[phi][:, :width, None], 0.0, nxt)
            on = qt * step[phi][:, :width, None] + start_cost[:, None, :] + nxt
            off = np.where(~fz & can_stop[:, None, :], c[:, :, :1], _INF)
            off = np.broadcast_to(off, c.shape)
            take_on = on < off
            newc = np.where(take_on, on, off)
            a3 = act[:, None, None]
            dec[phi][t - t_lo] = take_on & a3
            C[phi] = np.where(a3, newc, c)

    # ---- first slot ws: off (phi 0, level 0) or on (phi 1, or done)
    q0 = q[rows, wsc]
    f_ws = forced[rows, wsc]
    off_val = np.where(f_ws, _INF, C[0][:, 0, 0])
    on_tail = np.where(done0[1], 0.0, C[1][rows, 0, np.minimum(1, R)])
    on_val = q0 * top0 + sp + on_tail
    single = we == ws
    on_val = np.where(single, q0 * top0 + sp, on_val)
    off_val = np.where(single & f_ws, _INF, off_val)
    first_on = on_val < off_val

    # ---- read the plan forwards
    phi = first_on.astype(np.int64)
    i = np.zeros(n, np.int64)
    r = np.where(first_on, np.minimum(1, R), 0)
    done = first_on & done0[1]
    x[rows[live & first_on], wsc[live & first_on]] = top0[live & first_on]
    for t in range(t_lo, t_hi + 1):
        act = live & ~done & (t > ws) & (t < we)
        if not act.any():
            continue
        for ph in range(2):
            sel = act & (phi == ph)
            if not sel.any():
                continue
            rr = rows[sel]
            on = dec[ph][t - t_lo][rr, i[rr], r[rr]]
            ro = rr[on]
            x[ro, t] = step[ph][ro, i[ro]]
            reached = reach[ph][ro, i[ro]]
            r[ro] = nxt_rho[ro, r[ro]]
            i[ro] += 1
            done[ro[reached]] = True
            r[rr[~on]] = 0
    sel = live & ~done & (we > ws)
    for ph in range(2):
        s2 = sel & (phi == ph)
        if not s2.any():
            continue
        rr = rows[s2]
        on = D_last[ph][rr, i[rr], r[rr]]
        ro = rr[on]
        lv = F[ph][ro, i[ro]]
        x[ro, wec[ro]] = np.minimum(step_up(lv, capL[ro], alL[ro], rhL[ro], taper[ro]), need[ro]) - lv
    x[~live] = 0.0
    return x
