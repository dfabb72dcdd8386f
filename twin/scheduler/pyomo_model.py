r"""Reference model of the charging problem in Pyomo, solved with HiGHS.

This is the readable statement of the problem; every fast path is tested against it.

Sets
    :math:`I` cars; :math:`P = \{(i, t) : a_{it} > 0\}` the (car, slot) pairs inside each window
    (:math:`a_{it}` is the overlap of ``[start_slot, end_slot)`` with slot :math:`t`).

Variables
    :math:`x_{it} \ge 0` grid energy (kWh); :math:`S_{it}` cumulative grid energy to the end of
    slot :math:`t` (kWh, for cars with taper, on/off control or a min-SoC); on/off cars also
    have binaries :math:`on_{it}` and its three modes :math:`yc_{it}` (at the power limit),
    :math:`yu_{it}` (at the taper limit), :math:`yf_{it}` (reaches the target), and
    :math:`start_{it}, done_{it} \in [0, 1]`.

With :math:`h` the slot length, :math:`r_i = \min(\text{max\_kw}, \text{vehicle\_max\_kw})`,
:math:`\kappa_i = \eta_i / B_i` and the end-of-slot SoC
:math:`soc_{it} = soc0_i + \kappa_i S_{it}`:

.. math::

    \min \sum_{(i,t) \in P} \Big(p_{it} + w_i \frac{c_{it}}{1000}\Big) x_{it}
        + \pi \sum_i \eta_i (E_i - S_{i,\text{end}}) + \sum_{(i,t)} \sigma_i\, start_{it}

    S_{it} = S_{i,t-1} + x_{it}, \quad S_{i,\text{end}} \le E_i
        = \max(target_i - soc0_i, 0) B_i / \eta_i                     \quad \text{(charge limit)}

    x_{it} \le a_{it} h r_i                                               \quad \text{(power)}

    x_{it} \le a_{it} h \big(V_i - b_i (soc_{it} - k_i)\big)           \quad \text{(taper, end of slot)}

    S_{it} \ge \min(\text{asap}_{it}, M_i)                               \quad \text{(min SoC)}

    \sum_i x_{it} \le \text{feeder}_t\, h                                \quad \text{(feeder)}

where :math:`\pi` is the shortfall penalty per battery kWh, :math:`b_i = (V_i - floor_i) / (1 -
k_i)`, :math:`\text{asap}` is charging at the limit from plug-in (capped at :math:`E_i`) and
:math:`M_i` the energy that reaches :math:`\min(min\_soc, target)`. For an on/off car, with
:math:`u_{it} = a_{it} h (V_i - b_i (soc_{it} - k_i))` its taper limit:

.. math::

    x \le a h r\, on, \quad on = yc + yu + yf, \quad x \ge a h r\, yc, \quad x \ge u - U (1 - yu),
    \quad S \ge E\, yf

    start_{it} \ge on_{it} - on_{i,t-1}, \quad done_{it} = done_{i,t-1} + yf_{i,t-1},
    \quad on + done \le 1, \quad \sum_t yf_{it} \le 1

    on_{i,t+j} + done_{i,t+j} \ge start_{it} \quad (1 \le j < \text{min\_run\_slots}_i,
    \; t + j \text{ in the window})

so an on/off car is either off or at its limit, except in the one slot where it reaches its
target; a run lasts ``min_run_slots`` unless the window ends or the target is reached.
"""

from __future__ import annotations

import time

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.appsi.base import TerminationCondition
from pyomo.contrib.appsi.solvers import highs as appsi_highs

from ._physics import min_soc_floor
from .errors import InfeasibleProblem, SolverFailed
from .problem import FleetProblem, Plan, evaluate_plan

__all__ = ["build_pyomo_model", "solve_pyomo"]


def build_pyomo_model(problem: FleetProblem) -> pyo.ConcreteModel:
    """Build the reference model (see the module docstring) as a Pyomo ``ConcreteModel``."""
    p = problem
    h = p.slot_hours
    a = p.availability
    cost = p.unit_cost()
    floor = min_soc_floor(p)
    need = p.need_kwh
    b = p.taper_slope_kw
    onoff = p.is_onoff
    pairs = [(int(i), int(t)) for i, t in zip(*np.nonzero(a > 0))]
    by_car: dict[int, list[int]] = {}
    for i, t in pairs:
        by_car.setdefault(i, []).append(t)
    tracked = [i for i in by_car if p.has_taper[i] or onoff[i] or p.min_need_kwh[i] > 0]

    m = pyo.ConcreteModel("charging")
    m.P = pyo.Set(initialize=pairs, dimen=2, ordered=True)
    m.x = pyo.Var(m.P, domain=pyo.NonNegativeReals)
    m.Ptrack = pyo.Set(initialize=[(i, t) for i in tracked for t in by_car[i]], dimen=2, ordered=True)
    m.S = pyo.Var(m.Ptrack, domain=pyo.Reals)

    def prev(i, t):
        k = by_car[i].index(t)
        return None if k == 0 else by_car[i][k - 1]

    def level(i, t):
        """Cumulative energy to the end of slot t (kWh)."""
        return m.S[i, t]

    m.dynamics = pyo.Constraint(
        m.Ptrack,
        rule=lambda m, i, t: m.S[i, t] == (0 if prev(i, t) is None else m.S[i, prev(i, t)]) + m.x[i, t],
    )
    m.charge_limit = pyo.Constraint(
        list(by_car),
        rule=lambda m, i: sum(m.x[i, t] for t in by_car[i]) <= float(need[i]),
    )
    m.power = pyo.Constraint(m.P, rule=lambda m, i, t: m.x[i, t] <= float(a[i, t] * h * p.rate_kw[i]))

    def soc_end(i, t):
        return float(p.soc0[i]) + float(p.soc_per_kwh[i]) * level(i, t)

    def taper_limit(i, t):
        """The car's own limit over the available part of slot t at its end-of-slot SoC (kWh)."""
        return float(a[i, t] * h) * (float(p.vehicle_max_kw[i]) - float(b[i]) * (soc_end(i, t) - float(p.taper_knee_soc[i])))

    taper_pairs = [(i, t) for i, t in pairs if p.has_taper[i]]
    m.taper = pyo.Constraint(taper_pairs, rule=lambda m, i, t: m.x[i, t] <= taper_limit(i, t))
    floor_pairs = [(i, t) for i, t in pairs if p.min_need_kwh[i] > 0 and floor[i, t] > 0]
    m.min_soc = pyo.Constraint(floor_pairs, rule=lambda m, i, t: level(i, t) >= float(floor[i, t]))
    if p.feeder_kw is not None:
        slots = sorted({t for _, t in pairs})
        m.feeder = pyo.Constraint(
            slots,
            rule=lambda m, t: sum(m.x[i, t] for i in by_car if t in by_car[i]) <= float(p.feeder_kw[t] * h),
        )

    oo = [(i, t) for i, t in pairs if onoff[i]]
    start_cost = 0
    if oo:
        m.O = pyo.Set(initialize=oo, dimen=2, ordered=True)
        oo = m.O
        m.on = pyo.Var(oo, domain=pyo.Binary)
        m.yc = pyo.Var(oo, domain=pyo.Binary)
        m.yu = pyo.Var(oo, domain=pyo.Binary)
        m.yf = pyo.Var(oo, domain=pyo.Binary)
        m.start = pyo.Var(oo, bounds=(0, 1))
        m.done = pyo.Var(oo, bounds=(0, 1))
        cap = lambda i, t: float(a[i, t] * h * p.rate_kw[i])  # noqa: E731
        m.off_means_zero = pyo.Constraint(oo, rule=lambda m, i, t: m.x[i, t] <= cap(i, t) * m.on[i, t])
        m.one_mode = pyo.Constraint(oo, rule=lambda m, i, t: m.on[i, t] == m.yc[i, t] + m.yu[i, t] + m.yf[i, t])
        m.at_power_limit = pyo.Constraint(oo, rule=lambda m, i, t: m.x[i, t] >= cap(i, t) * m.yc[i, t])

        def at_taper_limit(m, i, t):
            if not p.has_taper[i]:
                return m.yu[i, t] == 0
            # Big-M: the taper limit is at most its value at SoC 0, a h (V + b k).
            big = float(a[i, t] * h * (p.vehicle_max_kw[i] + b[i] * p.taper_knee_soc[i]))
            return m.x[i, t] >= taper_limit(i, t) - big * (1 - m.yu[i, t])

        m.at_taper_limit = pyo.Constraint(oo, rule=at_taper_limit)
        m.reaches_target = pyo.Constraint(oo, rule=lambda m, i, t: level(i, t) >= float(need[i]) * m.yf[i, t])
        m.starts = pyo.Constraint(
            oo,
            rule=lambda m, i, t: m.start[i, t] >= m.on[i, t] - (0 if prev(i, t) is None else m.on[i, prev(i, t)]),
        )
        m.done_def = pyo.Constraint(
            oo,
            rule=lambda m, i, t: m.done[i, t] == (0 if prev(i, t) is None else m.done[i, prev(i, t)] + m.yf[i, prev(i, t)]),
        )
        m.off_when_done = pyo.Constraint(oo, rule=lambda m, i, t: m.on[i, t] + m.done[i, t] <= 1)
        m.one_finish = pyo.Constraint(
            sorted({i for i, _ in m.O}), rule=lambda m, i: sum(m.yf[i, t] for t in by_car[i]) <= 1
        )
        runs = []
        for i, t in oo:
            ts = by_car[i]
            k = ts.index(t)
            for j in range(1, int(p.min_run_slots[i])):
                if k + j < len(ts):
                    runs.append((i, t, ts[k + j]))
        if runs:
            m.R = pyo.Set(initialize=runs, dimen=3, ordered=True)
            m.min_run = pyo.Constraint(m.R, rule=lambda m, i, t, u: m.on[i, u] + m.done[i, u] >= m.start[i, t])
        start_cost = sum(float(p.start_penalty_gbp[i]) * m.start[i, t] for i, t in oo)

    energy_cost = sum(float(cost[i, t]) * m.x[i, t] for i, t in pairs)
    shortfall = sum(
        float(p.shortfall_value[i]) * (float(need[i]) - sum(m.x[i, t] for t in by_car[i])) for i in by_car
    )
    m.objective = pyo.Objective(expr=energy_cost + shortfall + start_cost, sense=pyo.minimize)
    return m


def solve_pyomo(problem: FleetProblem, *, time_limit: float | None = None) -> Plan:
    """Solve the reference model with HiGHS (through Pyomo's ``appsi_highs`` interface)."""
    t0 = time.perf_counter()
    p = problem
    m = build_pyomo_model(p)
    solver = appsi_highs.Highs()
    # Exactness: HiGHS' default MIP gap (1e-4) would accept on/off plans 0.01 % above optimal.
    solver.highs_options = {"mip_rel_gap": 1e-9, "mip_abs_gap": 1e-9}
    solver.config.stream_solver = False
    solver.config.load_solution = False
    if time_limit is not None:
        solver.config.time_limit = time_limit
    res = solver.solve(m)
    cond = res.termination_condition
    if cond == TerminationCondition.infeasible:
        raise InfeasibleProblem(
            "the constraints cannot all hold: min-SoC charging or window limits exceed the feeder limit"
        )
    if cond != TerminationCondition.optimal:
        raise SolverFailed(f"HiGHS (via Pyomo) stopped with {cond}")
    res.solution_loader.load_vars()
    x = np.zeros((p.n_cars, p.n_slots))
    for (i, t), v in m.x.items():
        x[i, t] = pyo.value(v)
    return evaluate_plan(p, x, method="pyomo", solve_seconds=time.perf_counter() - t0)
