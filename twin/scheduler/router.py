"""Choosing a solver path: ``solve(problem, method="auto")``.

Paths (``method``)
------------------
``"independent"``
    Modulated cars without a binding feeder limit: cheapest fill plus the exact taper
    programme (:mod:`.independent`). Refuses on/off cars and a feeder limit that the
    independent plans break; cars the taper programme refuses go to ``"highs"`` per car.
``"onoff_dp"``
    On/off cars without a binding feeder limit: the exact per-car programme
    (:mod:`.onoff`). Refuses modulated cars and a feeder limit that the plans break.
``"feeder"``
    Modulated fleets under a feeder limit: min-cost flow, its feeder prices snapped to exact
    levels with the tied cars re-divided, and Dantzig–Wolfe decomposition when those plans do
    not certify (:mod:`.feeder`). Refuses on/off cars.
``"highs"``
    The whole model as one LP/MILP built as matrices for HiGHS (:mod:`.highs_model`).
``"pyomo"``
    The reference model (:mod:`.pyomo_model`).
``"auto"``
    Independent cars go to ``"independent"`` / ``"onoff_dp"`` (a plan that fits under the
    feeder limit is optimal for the coupled problem too); a binding feeder limit on a
    modulated fleet goes to ``"feeder"`` (its decomposition stage only for fleets of up to
    :data:`FEEDER_DECOMPOSITION_MAX_CARS` cars; fleets of up to :data:`FEEDER_LP_MAX_CARS`
    cars straight to ``"highs"``), and to ``"highs"`` when on/off cars are present; any
    refusal falls back to ``"highs"``.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import SolverRefused
from .feeder import solve_feeder_modulated
from .highs_model import build_highs_model, run_highs, solve_highs
from .independent import solve_independent_modulated
from .onoff import solve_onoff_independent
from .problem import FEASIBILITY_TOL_KWH, FleetProblem, Plan, evaluate_plan
from .pyomo_model import solve_pyomo

__all__ = ["solve", "METHODS"]

#: Accepted values of ``method``.
METHODS = ("auto", "independent", "onoff_dp", "feeder", "highs", "pyomo")

# Above this many cars, plans that the flow's levels do not certify go to the HiGHS LP rather
# than the decomposition: with a shared price most cars are marginal at the feeder's prices,
# the master then holds every car, and measured on the example fleet it is on par with the LP
# at 1k cars (1.5 s vs 1.8 s) but four times slower at 10k (140 s vs 35 s).
FEEDER_DECOMPOSITION_MAX_CARS = 2000
# Up to this many cars a modulated problem with a feeder limit goes straight to one LP: it
# solves in milliseconds (2.5 ms for one car, 60 ms for 30), less than the independent path's
# taper programme takes for one car (15 ms), while a decomposition that fails to certify can
# iterate for hundreds (0.4 s for one car under a per-slot cap, 0.3 s for 10 cars).
FEEDER_LP_MAX_CARS = 30


def _fits_feeder(p: FleetProblem, x: np.ndarray) -> bool:
    if p.feeder_kw is None:
        return True
    return bool((x.sum(axis=0) <= p.feeder_kw * p.slot_hours + FEASIBILITY_TOL_KWH).all())


def _independent(p: FleetProblem, *, allow_fallback: bool) -> tuple[np.ndarray, np.ndarray]:
    """Solve every car as if alone; returns energies and the path used per car."""
    if p.is_onoff.all():
        return solve_onoff_independent(p), np.full(p.n_cars, "onoff_dp", dtype=object)
    how = np.full(p.n_cars, "", dtype=object)
    if not p.is_onoff.any():
        mod = np.arange(p.n_cars)
        x, ok, used_dp = solve_independent_modulated(p)  # no copy of a large fleet's matrix
    else:
        mod = np.flatnonzero(~p.is_onoff)
        x = np.zeros((p.n_cars, p.n_slots))
        xm, ok, used_dp = solve_independent_modulated(p, mod)
        x[mod] = xm
    if mod.size:
        how[mod] = np.where(used_dp, "independent(taper dp)", "independent(cheapest fill)")
        bad = mod[~ok]
        if bad.size:
            if not allow_fallback:
                raise SolverRefused(f"{bad.size} cars have taper grids too long for the exact programme")
            sub = p.subset(bad)
            _, xb = run_highs(build_highs_model(sub))
            x[bad] = xb
            how[bad] = "highs"
    oo = np.flatnonzero(p.is_onoff)
    if oo.size:
        x[oo] = solve_onoff_independent(p, oo)
        how[oo] = "onoff_dp"
    return x, how


def _summary(how: np.ndarray) -> str:
    names = sorted({str(h).split("(")[0] for h in set(how.tolist())})
    return "+".join(names) if names else "independent"


def solve(problem: FleetProblem, method: str = "auto") -> Plan:
    """Solve ``problem`` exactly and return the :class:`Plan`.

    Parameters
    ----------
    problem : FleetProblem
    method : str
        One of :data:`METHODS` (see the module docstring). A fast path that cannot solve the
        input exactly raises :class:`~twin.scheduler.errors.SolverRefused` unless ``method`` is
        ``"auto"``, which then falls back.

    Returns
    -------
    Plan
        ``plan.method`` names the path(s) used and ``plan.car_method`` the path per car.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    p = problem
    t0 = time.perf_counter()

    def done(x: np.ndarray, name: str, how=None) -> Plan:
        # Every path hands back a fresh matrix: the plan takes it without a copy.
        return evaluate_plan(p, x, method=name, solve_seconds=time.perf_counter() - t0, car_method=how, copy=False)

    if method == "pyomo":
        return solve_pyomo(p)
    if method == "highs":
        return solve_highs(p)
    if method == "independent":
        if p.is_onoff.any():
            raise SolverRefused("on/off cars need the on/off programme or the MILP")
        x, how = _independent(p, allow_fallback=False)
        if not _fits_feeder(p, x):
            raise SolverRefused("the feeder limit binds: the cars are coupled")
        return done(x, "independent", how)
    if method == "onoff_dp":
        if not p.is_onoff.all():
            raise SolverRefused("modulated cars are not handled by the on/off programme")
        x = solve_onoff_independent(p)
        if not _fits_feeder(p, x):
            raise SolverRefused("the feeder limit binds: the cars are coupled")
        return done(x, "onoff_dp")
    if method == "feeder":
        x, info = solve_feeder_modulated(p)
        how = np.full(p.n_cars, f"feeder({info['stage']})", dtype=object)
        return done(x, f"feeder({info['stage']})", how)

    # auto
    if p.feeder_kw is None or p.is_onoff.any():
        x, how = _independent(p, allow_fallback=True)
        if _fits_feeder(p, x):
            return done(x, _summary(how), how)
        model = build_highs_model(p)
        _, x = run_highs(model)
        return done(x, "highs", np.full(p.n_cars, "highs", dtype=object))
    if p.n_cars <= FEEDER_LP_MAX_CARS and p.rate_kw.sum() > p.feeder_kw.min():
        # few cars that together could exceed the limit: one LP
        _, x = run_highs(build_highs_model(p))
        return done(x, "highs", np.full(p.n_cars, "highs", dtype=object))
    x, how = _independent(p, allow_fallback=True)
    if _fits_feeder(p, x):
        return done(x, _summary(how), how)
    try:
        x, info = solve_feeder_modulated(
            p, decomposition=p.n_cars <= FEEDER_DECOMPOSITION_MAX_CARS, independent=x
        )
        name = f"feeder({info['stage']})"
        return done(x, name, np.full(p.n_cars, name, dtype=object))
    except SolverRefused:
        pass
    _, x = run_highs(build_highs_model(p))
    return done(x, "highs", np.full(p.n_cars, "highs", dtype=object))
