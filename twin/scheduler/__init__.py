"""Charging scheduler: when each car charges, at least cost, within the slot model.

Analysts call :func:`plan_charging` with two tables; code that already works in slot units
builds a :class:`FleetProblem` and calls :func:`solve`, which picks an exact fast path
(cheapest fill with an exact taper programme, an on/off programme, and under a feeder limit a
min-cost flow whose prices are snapped to exact levels, certified by the Lagrangian bound, with
Dantzig–Wolfe decomposition behind it) and falls back to one HiGHS LP/MILP when a path refuses. :func:`solve_pyomo` solves the readable reference model.

Example
-------
>>> import pandas as pd
>>> from twin.scheduler import plan_charging
>>> slots = pd.date_range("2026-01-05 18:00", periods=48, freq="30min", tz="UTC")
>>> signals = pd.DataFrame({"price_gbp_per_kwh": [0.30] * 12 + [0.10] * 24 + [0.25] * 12}, index=slots)
>>> cars = pd.DataFrame({
...     "vehicle_id": ["EV1"], "plugged_in_at": [slots[0]], "ready_by": [slots[0] + pd.Timedelta("13h")],
...     "battery_kwh": [60.0], "soc": [0.3], "target_soc": [0.8], "min_soc": [0.2], "max_kw": [7.4],
... })
>>> result = plan_charging(cars, signals)
>>> round(float(result.summary.loc[0, "soc_at_ready_by"]), 3)
0.8
>>> result.summary.loc[0, "first_charge_at"]
Timestamp('2026-01-06 00:00:00+0000', tz='UTC')
"""

from .api import ChargingPlan, plan_charging
from .errors import InfeasibleProblem, SolverFailed, SolverRefused
from .examples import example_fleet
from .problem import FleetProblem, Plan, evaluate_plan, plan_violations
from .pyomo_model import build_pyomo_model, solve_pyomo
from .router import METHODS, solve

__all__ = [
    "ChargingPlan",
    "FleetProblem",
    "InfeasibleProblem",
    "METHODS",
    "Plan",
    "SolverFailed",
    "SolverRefused",
    "build_pyomo_model",
    "evaluate_plan",
    "example_fleet",
    "plan_charging",
    "plan_violations",
    "solve",
    "solve_pyomo",
]
