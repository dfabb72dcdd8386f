"""Fast exact path for modulated fleets under a feeder limit.

The feeder row ``sum_i x[i, t] <= feeder_kw[t] * slot_hours`` is the only thing coupling the
cars, and it binds in a few slots. The path has four stages:

1. **Independent optimum.** Solve every car alone (:mod:`.independent`); if the fleet's load
   fits under the feeder, that is the optimum.
2. **Transportation problem.** Without taper each car's LP is a transportation problem, and the
   fleet is a min-cost flow: source → car (its need), car → slot (capacity
   ``a * slot_hours * max_kw``, cost ``price + weight * carbon / 1000``), car → sink (the
   shortfall, cost ``penalty * efficiency``), slot → sink (the feeder). OR-Tools'
   ``SimpleMinCostFlow`` solves it with network algorithms in a fraction of an LP's time. It
   needs integers: energies in whole Wh with capacities rounded **down** (rounding to the
   nearest Wh can overshoot a limit) and costs in nano-GBP per Wh. Its plans ignore the taper
   and lose up to a Wh per arc; what the later stages use is its feeder prices
   (:func:`flow_prices`, from complementary slackness).
3. **Levels.** With a price shared by all cars, the feeder fills a group of slots until their
   cost plus feeder price is one value, a *level*, set by a slot the feeder does not fill (or
   by a car's shortfall value). The flow's prices are snapped to the exact level; each car's
   own optimum at those prices is computed exactly (taper included); the cars whose taper
   cannot bind and that draw part of their energy at the level only care how much they draw
   there, so a second min-cost flow (in 1e-12 kWh units) re-divides that energy among the
   level's slots so that the full slots fill exactly. The plans are accepted only when their
   objective equals the Lagrangian lower bound at the snapped prices to :data:`GAP_TOL`: then
   they are optimal, whatever was assumed on the way. This is the stage that solves large
   fleets: most cars are tied on the level, which defeats a decomposition.
4. **Dantzig–Wolfe decomposition**, when the levels do not certify (per-car prices, a level
   set by a taper-bound car, ...). A master LP (HiGHS) chooses, for each car, a convex
   combination of that car's plans subject to the feeder rows; its duals price the feeder,
   and each car's best plan at those prices (the exact independent path again, taper
   included) is added when it improves the master. When no car's plan improves, the master's
   solution is the LP optimum of the whole fleet (to HiGHS' tolerances), and every car's plan
   is a convex combination of its own feasible plans, hence feasible.

The master has one row per *active* car and one per slot the feeder can bind in; at an optimal
basis at most as many cars as there are binding feeder slots mix several plans.

Performance: on the example fleet (:func:`twin.scheduler.example_fleet`) the levels certify
and 10k cars take about 1.5 s (the HiGHS LP: about 35 s). The decomposition is slow when
many cars are marginal (about as long as the LP at 1k cars, four times longer at 10k), which
is why the router sends large fleets that the levels do not certify to the LP.
"""

from __future__ import annotations

import highspy
import numpy as np
from ortools.graph.python import min_cost_flow

from ._physics import cached_forced_prefix
from .errors import InfeasibleProblem, SolverRefused
from .highs_model import quiet_highs
from .independent import solve_independent_modulated
from .problem import FEASIBILITY_TOL_KWH, FleetProblem

__all__ = ["solve_feeder_modulated", "transportation_flow"]

# Wh per kWh: the flow works in whole watt-hours.
WH_PER_KWH = 1000.0
# Integer cost unit: 1e-9 GBP per Wh (i.e. 1e-6 GBP/kWh resolution on prices). With the
# default 100 GBP/kWh penalty the largest cost is ~1e8 per Wh, and 1e5 cars x 100 kWh of flow
# keep the total below 2**63.
COST_UNITS_PER_GBP_PER_KWH = 1e6
# The decomposition stops when the Lagrangian bound is within this fraction of the master's
# objective (far below the 1e-6 relative agreement asked of every fast path).
GAP_TOL = 1e-9
# Plans whose reduced cost is above -this (GBP) are not worth adding to the master.
REDUCED_COST_TOL_GBP = 1e-12
# A safety net: past this many pricing rounds the path refuses and the caller uses the LP.
MAX_ROUNDS = 200
# Binding slots whose cost plus feeder price agree to this much (GBP/kWh) form one level (the
# flow's costs are whole micro-GBP per kWh).
LEVEL_TOL_GBP_PER_KWH = 5e-6
# Price nudge (GBP/kWh) that breaks a taper-bound car's ties towards a level's full slots.
TIE_BREAK_GBP_PER_KWH = 1e-9


def _car_objective(p: FleetProblem, cars: np.ndarray, x: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """Objective of modulated plans ``x`` (n, T) of ``cars``: cost, carbon value, shortfall (GBP)."""
    c = p.unit_cost()[cars]
    if extra is not None:
        c = c + extra
    return (c * x).sum(axis=1) + p.shortfall_value[cars] * (p.need_kwh[cars] - x.sum(axis=1))


def _forced(p: FleetProblem) -> np.ndarray:
    fp = cached_forced_prefix(p)
    T = p.n_slots
    x = fp.energy_kwh.copy()
    has = fp.first_free < T
    rows = np.flatnonzero(has)
    x[rows, fp.first_free[rows]] += fp.lower_kwh[rows]
    return x


def transportation_flow(p: FleetProblem, return_info: bool = False):
    """Min-cost-flow plans of the fleet with the taper ignored (kWh, (N, T)).

    Capacities and needs are rounded down to whole Wh, so the plans respect every power,
    target and feeder limit of the real data (the taper excepted); they are within a Wh per
    arc of the relaxation's optimum.
    """
    N, T = p.n_cars, p.n_slots
    forced = _forced(p)
    fp = cached_forced_prefix(p)
    cols = np.arange(T)[None, :]
    free_cap = np.where(cols > fp.first_free[:, None], p.cap_kwh, 0.0)
    free_cap = np.where(cols == fp.first_free[:, None], np.maximum(p.cap_kwh - forced, 0.0), free_cap)
    rest = np.maximum(p.need_kwh - forced.sum(axis=1), 0.0)
    supply = np.floor(rest * WH_PER_KWH).astype(np.int64)
    cap_wh = np.floor(free_cap * WH_PER_KWH + 1e-9).astype(np.int64)
    cost = np.rint(p.unit_cost() * COST_UNITS_PER_GBP_PER_KWH).astype(np.int64)
    sv = np.rint(p.shortfall_value * COST_UNITS_PER_GBP_PER_KWH).astype(np.int64)
    feeder_room = p.feeder_kw * p.slot_hours - forced.sum(axis=0)
    if (feeder_room < -FEASIBILITY_TOL_KWH * max(1.0, N ** 0.5)).any():
        t = int(np.argmin(feeder_room))
        raise InfeasibleProblem(
            f"min-SoC charging alone draws {forced[:, t].sum() / p.slot_hours:.3f} kW in slot {t}, "
            f"above the feeder limit of {p.feeder_kw[t]:.3f} kW"
        )
    slot_cap = np.floor(np.maximum(feeder_room, 0.0) * WH_PER_KWH).astype(np.int64)
    ci, ti = np.nonzero((cap_wh > 0) & (cost < sv[:, None]))
    sink = N + T
    tails = np.concatenate([ci, np.arange(N), N + np.arange(T)]).astype(np.int32)
    heads = np.concatenate([N + ti, np.full(N, sink), np.full(T, sink)]).astype(np.int32)
    caps = np.concatenate([cap_wh[ci, ti], supply, slot_cap]).astype(np.int64)
    costs = np.concatenate([cost[ci, ti], sv, np.zeros(T, np.int64)]).astype(np.int64)
    mcf = min_cost_flow.SimpleMinCostFlow()
    arcs = mcf.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    nodes = np.arange(N + T + 1, dtype=np.int32)
    sup = np.zeros(N + T + 1, np.int64)
    sup[:N] = supply
    sup[sink] = -supply.sum()
    mcf.set_nodes_supplies(nodes, sup)
    status = mcf.solve()
    if status != mcf.OPTIMAL:
        raise SolverRefused(f"min-cost flow ended with status {status}")
    all_flows = np.asarray(mcf.flows(np.asarray(arcs, dtype=np.int32)))
    flows = all_flows[: ci.size]
    x = forced.copy()
    x[ci, ti] += flows / WH_PER_KWH
    if not return_info:
        return x
    short = all_flows[ci.size: ci.size + N]
    slot_flow = all_flows[ci.size + N:]
    info = dict(ci=ci, ti=ti, flow=flows, cap=cap_wh[ci, ti], cost=cost, sv=sv, short=short,
                slot_full=slot_flow >= slot_cap)
    return x, info


def flow_prices(p: FleetProblem, info: dict) -> np.ndarray | None:
    """Feeder prices (GBP/kWh per slot) under which the flow's plans are optimal, or ``None``.

    Complementary slackness of the flow gives difference constraints on the slot prices
    ``beta``: a car with flow in slot ``t`` and spare capacity in slot ``s`` needs
    ``c_t + beta_t <= c_s + beta_s``; flow in ``t`` needs ``c_t + beta_t <= penalty``; a car
    that falls short with spare capacity in ``s`` needs ``c_s + beta_s >= penalty``; a slot with
    feeder room has ``beta = 0``, and ``beta >= 0``. Shortest paths over the ``T + 1`` nodes give a
    solution (in the flow's integer costs, so the system is consistent). Only for costs
    shared by all cars (then the pair constraints do not depend on the car).
    """
    shared = p.unit_cost_shared
    if shared is None:
        return None
    N, T = p.n_cars, p.n_slots
    ci, ti, flow, cap = info["ci"], info["ti"], info["flow"], info["cap"]
    cost = info["cost"][0] if info["cost"].ndim == 2 else info["cost"]
    sv = info["sv"]
    has_flow = np.zeros((N, T), np.float32)
    has_room = np.zeros((N, T), np.float32)
    has_flow[ci[flow > 0], ti[flow > 0]] = 1.0
    has_room[ci[flow < cap], ti[flow < cap]] = 1.0
    big = np.inf
    W = np.full((T + 1, T + 1), big)
    pair = (has_room.T @ has_flow) > 0  # pair[s, t]: some car has room in s and flow in t
    cs = cost.astype(float)
    W[1:, 1:] = np.where(pair, cs[:, None] - cs[None, :], big)
    # root -> t: beta_t <= sv_i - c_t for cars with flow in t; 0 where the feeder has room
    lim = np.where(has_flow > 0, sv[:, None].astype(float), big).min(axis=0) - cs
    lim = np.where(info["slot_full"], lim, np.minimum(lim, 0.0))
    W[0, 1:] = lim
    # t -> root: beta_t >= 0, and beta_s >= sv_i - c_s for short cars with room in s
    short_room = has_room[info["short"] > 0]
    sv_short = sv[info["short"] > 0].astype(float)
    low = np.where(short_room > 0, sv_short[:, None], -big).max(axis=0) - cs if sv_short.size else np.full(T, -big)
    W[1:, 0] = np.minimum(0.0, -low)
    np.fill_diagonal(W, 0.0)
    for k in range(T + 1):
        np.minimum(W, W[:, k:k + 1] + W[k:k + 1, :], out=W)
    if (np.diag(W) < 0).any():
        return None
    beta = W[0, 1:]
    if not np.isfinite(beta).all():
        beta = np.where(np.isfinite(beta), beta, 0.0)
    return np.maximum(beta, 0.0) / COST_UNITS_PER_GBP_PER_KWH


def _levels(p: FleetProblem, beta0: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Snap the flow's feeder prices to exact *levels*.

    Under a binding feeder the cars move energy between the full slots until those slots cost
    the same with their feeder price added: a level. The flow's prices show the levels up to
    its integer cost unit. A level is set by a slot the feeder does not fill whose cost lies on
    it (cars are indifferent between it and the full slots) or, when the feeder leaves cars
    short, by the shortfall value of a car that is indifferent between charging and falling
    short. The level is snapped to that exact value and the full slots' prices to
    ``level - cost``. Returns the snapped prices and, per level, its full slots, the slots that
    set it and the cars that set it (either may be empty).
    """
    c = p.unit_cost_shared
    T = p.n_slots
    beta = np.zeros(T)
    bind = np.flatnonzero(beta0 > 0)
    if bind.size == 0:
        return beta, []
    m0 = c + beta0
    sv = p.shortfall_value
    order = bind[np.argsort(m0[bind], kind="stable")]
    levels = []
    for band in np.split(order, np.flatnonzero(np.diff(m0[order]) > LEVEL_TOL_GBP_PER_KWH) + 1):
        lam = float(m0[band].mean())
        near = np.flatnonzero((beta0 == 0) & (np.abs(c - lam) <= LEVEL_TOL_GBP_PER_KWH))
        near_cars = np.flatnonzero(np.abs(sv - lam) <= LEVEL_TOL_GBP_PER_KWH)
        setters, setter_cars = near[:0], near_cars[:0]
        if near.size:
            lam = float(c[near[np.argmin(np.abs(c[near] - lam))]])
            setters = near[c[near] == lam]
        elif near_cars.size:
            lam = float(sv[near_cars[np.argmin(np.abs(sv[near_cars] - lam))]])
            setter_cars = near_cars[sv[near_cars] == lam]
        beta[band] = np.maximum(lam - c[band], 0.0)
        levels.append((np.sort(band), setters, setter_cars))
    return beta, levels


def _route(supply: np.ndarray, cap: np.ndarray, room: np.ndarray, full: np.ndarray, optional: np.ndarray) -> np.ndarray | None:
    """Place each car's ``supply`` (kWh) in a level's slots, filling the ``full`` slots' room.

    A min-cost flow in fine integer units (cost -1 per unit in a full slot, 0 in a setting
    slot) routes every car's energy within its slot capacities ``cap`` (k, L) and the slots'
    ``room`` (L,); cars marked ``optional`` may leave part of theirs unplaced (they are
    indifferent to falling short). The units lost to rounding are then placed greedily.
    ``None`` when the energy does not fit.
    """
    k, L = cap.shape
    if (room < -FEASIBILITY_TOL_KWH).any():
        return None
    room = np.maximum(room, 0.0)
    # As fine as int64 allows (the flow and its cost stay below 2**62), at most 1e-12 kWh.
    unit = min(1e12, 4e18 / max(1.0, float(supply.sum() + room.sum())))
    ci, li = np.nonzero(cap > 0)
    oc = np.flatnonzero(optional)
    sink = k + L
    tails = np.concatenate([ci, k + np.arange(L), oc]).astype(np.int32)
    heads = np.concatenate([k + li, np.full(L + oc.size, sink)]).astype(np.int32)
    caps = np.floor(np.concatenate([cap[ci, li], room, supply[oc]]) * unit).astype(np.int64)
    costs = np.concatenate([np.zeros(ci.size, np.int64), np.where(full, -1, 0), np.zeros(oc.size)]).astype(np.int64)
    sup = np.zeros(sink + 1, np.int64)
    sup[:k] = np.floor(supply * unit).astype(np.int64)
    sup[sink] = -sup[:k].sum()
    mcf = min_cost_flow.SimpleMinCostFlow()
    arcs = mcf.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    mcf.set_nodes_supplies(np.arange(sink + 1, dtype=np.int32), sup)
    if mcf.solve() != mcf.OPTIMAL:
        return None
    y = np.zeros((k, L))
    y[ci, li] = np.asarray(mcf.flows(np.asarray(arcs[: ci.size], dtype=np.int32))) / unit
    short = np.where(optional, 0.0, np.maximum(supply - y.sum(axis=1), 0.0))
    spare = room - y.sum(axis=0)
    for j in np.argsort(full, kind="stable"):  # setting slots first
        add = np.minimum(short, np.maximum(cap[:, j] - y[:, j], 0.0))
        cum = np.cumsum(add)
        add = np.clip(spare[j] - (cum - add), 0.0, add)
        y[:, j] += add
        short -= add
        spare[j] -= add.sum()
    return y


def _spread_ties(p: FleetProblem, x0: np.ndarray, levels, flexible: np.ndarray) -> np.ndarray | None:
    """Re-divide, level by level, the energy of the tied cars among the level's slots.

    A car whose taper cannot bind and that uses part of a level only cares how much it draws
    there, not in which of the level's slots: that amount stays as in ``x0`` and is routed so
    that the feeder-limited slots fill up (:func:`_route`). A car that sets the level with its
    shortfall value may draw anything up to its remaining need there.
    """
    fp = cached_forced_prefix(p)
    lim = p.feeder_kw * p.slot_hours
    x = x0.copy()
    for band, setters, setter_cars in levels:
        slots = np.concatenate([band, setters])
        # The level's slots must lie past each car's min-SoC prefix (no lower bound on them).
        lo = slots.min()
        clean = flexible & ((fp.first_free < lo) | ((fp.first_free == lo) & (fp.lower_kwh <= 0.0)))
        if not clean[setter_cars].all():
            return None
        cap = p.cap_kwh[:, slots]
        used = x[:, slots].sum(axis=1)
        tied = clean & (used > 1e-12) & (used < cap.sum(axis=1) - 1e-12)
        tied[setter_cars] = True
        tc = np.flatnonzero(tied)
        supply = used[tc]
        optional = np.isin(tc, setter_cars)
        elsewhere = x[tc].sum(axis=1) - supply
        supply[optional] = np.minimum(cap[tc[optional]].sum(axis=1), np.maximum(p.need_kwh[tc[optional]] - elsewhere[optional], 0.0))
        room = lim[slots] - x[:, slots].sum(axis=0) + x[np.ix_(tc, slots)].sum(axis=0)
        y = _route(supply, cap[tc], room, np.isin(slots, band), optional)
        if y is None:
            return None
        x[np.ix_(tc, slots)] = y
    return x


def recover_at_levels(p: FleetProblem, beta0: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Exact plans from the flow's feeder prices, certified by the Lagrangian bound.

    At the snapped prices (:func:`_levels`) every car's own optimum is computed exactly
    (:mod:`.independent`, taper included); the cars whose taper cannot bind and that are tied
    on a level are then re-divided among its slots (:func:`_spread_ties`). Cars with a binding
    taper keep their own optimum, first with ties broken towards the feeder-limited slots, then
    as solved. The plans are returned when their objective is within :data:`GAP_TOL` of the
    Lagrangian lower bound at those prices, with the gap (GBP); otherwise ``None``.
    """
    if p.unit_cost_shared is None:
        return None  # levels are a property of a price shared by all cars
    beta, levels = _levels(p, beta0)
    if not levels:
        return None
    N = p.n_cars
    cars = np.arange(N)
    lim = p.feeder_kw * p.slot_hours
    own, ok, _ = solve_independent_modulated(p, extra_cost_gbp_per_kwh=beta)
    if not ok.all():
        return None
    lower = float(_car_objective(p, cars, own, beta).sum() - (beta * lim).sum())
    flexible = p.need_kwh <= p.taper_free_kwh + FEASIBILITY_TOL_KWH
    starts = []
    rigid = np.flatnonzero(~flexible)
    if rigid.size:
        nudged = beta.copy()
        for band, _, _ in levels:
            nudged[band] -= TIE_BREAK_GBP_PER_KWH
        xr, ok, _ = solve_independent_modulated(p, rigid, extra_cost_gbp_per_kwh=nudged)
        if ok.all():
            x = own.copy()
            x[rigid] = xr
            starts.append(x)
    starts.append(own)
    for x0 in starts:
        x = _spread_ties(p, x0, levels, flexible)
        if x is None or (x.sum(axis=0) > lim + FEASIBILITY_TOL_KWH).any():
            continue
        gap = float(_car_objective(p, cars, x).sum()) - lower
        if gap <= GAP_TOL * max(1.0, abs(lower)):
            return x, max(gap, 0.0)
    return None


class _Master:
    """The Dantzig–Wolfe master LP over the *active* cars, kept in HiGHS between rounds.

    Rows: the feeder rows (slots where it can bind), whose capacity is the limit less the load
    of the inactive cars (held at one plan each), then one convexity row per active car.
    """

    def __init__(self, p: FleetProblem, rows_t: np.ndarray):
        self.p = p
        self.rows_t = rows_t
        self.K = rows_t.size
        self.h = quiet_highs()
        # Rows and columns are only ever added, so the previous basis stays primal feasible:
        # primal simplex without presolve continues from it instead of starting over.
        self.h.setOptionValue("presolve", "off")
        self.h.setOptionValue("simplex_strategy", 4)
        lp = highspy.HighsLp()
        lp.num_col_ = 0
        lp.num_row_ = self.K
        lp.row_lower_ = np.full(self.K, -np.inf)
        lp.row_upper_ = p.feeder_kw[rows_t] * p.slot_hours
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.zeros(1, np.int32)
        self.h.passModel(lp)
        self.row_of = np.full(p.n_cars, -1, np.int64)
        self.nrow = self.K
        self.car = np.zeros(0, np.int64)
        self.plans: list[np.ndarray] = []

    def set_capacity(self, cap_kwh: np.ndarray) -> None:
        idx = np.arange(self.K, dtype=np.int32)
        self.h.changeRowsBounds(self.K, idx, np.full(self.K, -np.inf), cap_kwh[self.rows_t])

    def activate(self, cars: np.ndarray) -> None:
        k = cars.size
        if k == 0:
            return
        self.h.addRows(k, np.ones(k), np.ones(k), 0, np.zeros(k, np.int32), np.zeros(0, np.int32), np.zeros(0))
        self.row_of[cars] = self.nrow + np.arange(k)
        self.nrow += k

    def add(self, cars: np.ndarray, x: np.ndarray, cost: np.ndarray) -> None:
        k = cars.size
        if k == 0:
            return
        sub = x[:, self.rows_t]
        nz = sub > 0
        cnt = 1 + nz.sum(axis=1)
        start = np.zeros(k + 1, np.int64)
        np.cumsum(cnt, out=start[1:])
        idx = np.empty(start[-1], np.int32)
        val = np.empty(start[-1])
        idx[start[:-1]] = self.row_of[cars]
        val[start[:-1]] = 1.0
        r, c = np.nonzero(nz)
        offs = start[r] + np.cumsum(nz, axis=1)[r, c]
        idx[offs] = c
        val[offs] = sub[r, c]
        self.h.addCols(k, cost, np.zeros(k), np.full(k, np.inf), start[-1], start[:-1].astype(np.int32), idx, val)
        self.car = np.concatenate([self.car, cars])
        self.plans.append(x)

    def solve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.car.size == 0:
            return np.zeros(0), np.zeros(self.p.n_cars), np.zeros(self.K)
        self.h.run()
        st = self.h.getModelStatus()
        if st == highspy.HighsModelStatus.kInfeasible:
            raise _MasterInfeasible
        if st != highspy.HighsModelStatus.kOptimal:
            raise SolverRefused(f"master LP stopped with status {self.h.modelStatusToString(st)}")
        sol = self.h.getSolution()
        dual = np.asarray(sol.row_dual)
        lam = np.asarray(sol.col_value)
        conv = np.zeros(self.p.n_cars)
        act = np.flatnonzero(self.row_of >= 0)
        conv[act] = dual[self.row_of[act]]
        return lam, conv, dual[: self.K]

    def objective(self) -> float:
        if self.car.size == 0:
            return 0.0
        return float(self.h.getInfo().objective_function_value)

    def combine(self, lam: np.ndarray) -> np.ndarray:
        out = np.zeros((self.p.n_cars, self.p.n_slots))
        if self.plans:
            X = np.concatenate(self.plans, axis=0)
            np.add.at(out, self.car, lam[:, None] * X)
        return out


class _MasterInfeasible(Exception):
    pass


def solve_feeder_modulated(
    p: FleetProblem,
    *,
    use_flow: bool = True,
    use_levels: bool = True,
    decomposition: bool = True,
    independent: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Exact plans of a modulated fleet under its feeder limit.

    The min-cost flow's feeder prices (:func:`flow_prices`) are first snapped to levels and
    the tied cars re-divided (:func:`recover_at_levels`); when the Lagrangian bound certifies
    those plans, they are returned. Otherwise (and with ``decomposition``) the Dantzig–Wolfe
    rounds start: cars start at their best plan under the flow's prices; only cars that the
    flow shows to be marginal, or whose taper the flow ignored, enter the master at first. Each
    round prices every car at the master's feeder duals; a held car whose plan is no longer its
    best joins the master. The rounds stop when the Lagrangian bound certifies the master's
    solution to :data:`GAP_TOL`.

    ``independent`` may pass the fleet's exact independent optimum when the caller already has
    it. Returns the (N, T) energies (kWh) and a dict with ``rounds``, ``stage``
    (``"independent"`` when the limit does not bind, ``"flow+levels"`` or ``"flow+dw"``),
    ``active`` (cars in the master) and ``gap_gbp``.

    Raises
    ------
    SolverRefused
        If a car's exact independent path refuses, the levels do not certify and
        ``decomposition`` is off, or the decomposition does not converge.
    InfeasibleProblem
        If min-SoC charging alone exceeds the feeder.
    """
    if p.feeder_kw is None:
        raise SolverRefused("no feeder limit")
    if p.is_onoff.any():
        raise SolverRefused("on/off cars need the MILP")
    N, T = p.n_cars, p.n_slots
    cars = np.arange(N)
    lim = p.feeder_kw * p.slot_hours
    tol = FEASIBILITY_TOL_KWH
    x0 = independent
    if x0 is None:
        x0, ok, _ = solve_independent_modulated(p)
        if not ok.all():
            raise SolverRefused("the exact independent path refused some cars")
    if (x0.sum(axis=0) <= lim + tol).all():
        return x0, {"rounds": 0, "stage": "independent", "active": 0, "gap_gbp": 0.0}
    forced = _forced(p)
    if (forced.sum(axis=0) > lim + tol * max(1.0, N ** 0.5)).any():
        t = int(np.argmax(forced.sum(axis=0) - lim))
        raise InfeasibleProblem(
            f"min-SoC charging alone draws {forced[:, t].sum() / p.slot_hours:.3f} kW in slot {t}, "
            f"above the feeder limit of {p.feeder_kw[t]:.3f} kW"
        )
    rows_t = np.flatnonzero(p.cap_kwh.sum(axis=0) > lim)
    beta = np.zeros(T)
    xf = b0 = None
    held = x0
    if use_flow:
        xf, info = transportation_flow(p, return_info=True)
        b0 = flow_prices(p, info)
        if b0 is not None and use_levels:
            got = recover_at_levels(p, b0)
            if got is not None:
                return got[0], {"rounds": 0, "stage": "flow+levels", "active": 0, "gap_gbp": got[1]}
    if not decomposition:
        raise SolverRefused("the flow's feeder prices did not certify the plans, and decomposition is off")
    if b0 is not None:
        beta = b0
        held, ok, _ = solve_independent_modulated(p, extra_cost_gbp_per_kwh=beta)
        if not ok.all():
            raise SolverRefused("the exact independent path refused some cars")
    cum = None
    taper_ok = np.ones(N, bool)
    if xf is not None:
        cum = np.cumsum(xf, axis=1)
        taper_ok = ~(p.has_taper[:, None] & (xf + p.taper_alpha * cum > p.taper_rhs_kwh + tol)).any(axis=1)
    # Active at first: cars whose taper the flow ignored and that use a slot with a feeder row.
    if xf is not None:
        # The flow's plans are optimal at its prices for cars it models exactly (ties between
        # feeder slots are split as the flow split them); the others start at their own best.
        held = np.where(taper_ok[:, None], xf, held)
    on_rows = (held[:, rows_t] > 0).any(axis=1)
    active0 = on_rows & ~taper_ok if xf is not None else on_rows
    master = _Master(p, rows_t)
    active = np.zeros(N, bool)

    def activate(new: np.ndarray) -> None:
        active[new] = True
        master.activate(new)
        master.add(new, forced[new], _car_objective(p, new, forced[new]))
        master.add(new, held[new], _car_objective(p, new, held[new]))
        if xf is not None:
            f = new[taper_ok[new]]
            master.add(f, xf[f], _car_objective(p, f, xf[f]))
        master.set_capacity(lim - held[~active].sum(axis=0))

    activate(np.flatnonzero(active0))
    for rnd in range(1, MAX_ROUNDS + 1):
        try:
            lam, conv_dual, feed_dual = master.solve()
        except _MasterInfeasible:
            # The held plans leave too little room: bring every car using a feeder slot in.
            more = np.flatnonzero(~active & on_rows)
            if more.size == 0:
                raise InfeasibleProblem("the feeder limit cannot hold together with min-SoC charging") from None
            activate(more)
            continue
        beta = np.zeros(T)
        beta[rows_t] = np.maximum(-feed_dual, 0.0)
        xn, ok, _ = solve_independent_modulated(p, extra_cost_gbp_per_kwh=beta)
        if not ok.all():
            raise SolverRefused("the exact independent path refused some cars")
        priced = _car_objective(p, cars, xn, beta)
        current = np.where(active, conv_dual, _car_objective(p, cars, held, beta))
        rc = np.minimum(priced - current, 0.0)
        held_cost = _car_objective(p, np.flatnonzero(~active), held[~active]).sum()
        upper = master.objective() + held_cost
        # Lagrangian bound: upper + sum of reduced costs <= optimum <= upper.
        gap = -rc.sum()
        if gap <= GAP_TOL * max(1.0, abs(upper)):
            x = master.combine(lam)
            x[~active] = held[~active]
            return x, {"rounds": rnd, "stage": "flow+dw", "active": int(active.sum()), "gap_gbp": float(gap)}
        improve = rc < -REDUCED_COST_TOL_GBP
        new_active = np.flatnonzero(improve & ~active)
        old = np.flatnonzero(improve & active)
        master.add(old, xn[old], _car_objective(p, old, xn[old]))
        if new_active.size:
            activate(new_active)
            master.add(new_active, xn[new_active], _car_objective(p, new_active, xn[new_active]))
    raise SolverRefused(f"the decomposition did not converge in {MAX_ROUNDS} rounds")
