"""Run one scenario under several policies and compare them; check KPI thresholds.

The comparison table has one column per policy and one row per KPI, plus:

``objective_gbp``
    cost + carbon weight × carbon (the quantity the planning policies minimise), GBP.
``savings_cost_gbp``, ``savings_cost_pct``, ``savings_carbon_kg``, ``savings_carbon_pct``
    versus ``uncontrolled`` (positive = better than charging on plug-in).
``savings_total_cost_gbp``, ``savings_total_cost_pct``
    the same for the total cost (energy and the site's demand charge).
``savings_vs_edf_cost_pct``, ``savings_vs_edf_total_cost_pct``
    energy and total cost saved versus ``edf``, earliest deadline first (a site's usual baseline).
``regret_cost_gbp``, ``regret_cost_pct``, ``regret_carbon_kg``, ``regret_carbon_pct``,
``regret_objective_pct``
    versus ``optimal``, the perfect-foresight bound (positive = worse than the bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from twin.results import KPI_DESCRIPTIONS, SimulationResult
from twin.scenario import Scenario, ScenarioError, check_policy
from twin.sim.run import as_scenario, simulate

__all__ = ["Comparison", "compare", "comparison_table", "check_thresholds", "DERIVED_DESCRIPTIONS"]

DERIVED_DESCRIPTIONS = {
    "objective_gbp": "cost + carbon weight × carbon, GBP (what smart and optimal minimise)",
    "savings_cost_gbp": "cost saved versus uncontrolled, GBP",
    "savings_cost_pct": "cost saved versus uncontrolled, %",
    "savings_carbon_kg": "carbon saved versus uncontrolled, kg",
    "savings_carbon_pct": "carbon saved versus uncontrolled, %",
    "savings_total_cost_gbp": "total cost (energy and demand charge) saved versus uncontrolled, GBP",
    "savings_total_cost_pct": "total cost (energy and demand charge) saved versus uncontrolled, %",
    "savings_vs_edf_cost_pct": "energy cost saved versus earliest deadline first (edf), %",
    "savings_vs_edf_total_cost_pct": "total cost (energy and demand charge) saved versus earliest deadline first (edf), %",
    "regret_cost_gbp": "cost above the perfect-foresight optimum, GBP",
    "regret_cost_pct": "cost above the perfect-foresight optimum, %",
    "regret_carbon_kg": "carbon above the perfect-foresight optimum, kg",
    "regret_carbon_pct": "carbon above the perfect-foresight optimum, %",
    "regret_objective_pct": "objective above the perfect-foresight optimum, %",
}


@dataclass
class Comparison:
    """Results per policy and the side-by-side ``table`` (see module docstring)."""

    scenario: Scenario
    results: dict[str, SimulationResult]
    table: pd.DataFrame


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else math.nan


def comparison_table(results: dict[str, SimulationResult], carbon_weight_gbp_per_kg: float = 0.0) -> pd.DataFrame:
    """KPIs of every policy side by side, with savings and regret rows."""
    if not results:
        raise ValueError("no results to compare")
    table = pd.DataFrame({p: pd.Series(r.kpis, dtype=float) for p, r in results.items()})
    table.loc["objective_gbp"] = table.loc["cost_gbp"] + carbon_weight_gbp_per_kg * table.loc["carbon_kg"]
    for row in DERIVED_DESCRIPTIONS:
        if row != "objective_gbp":
            table.loc[row] = math.nan
    if "uncontrolled" in table.columns:
        base = table["uncontrolled"]
        for p in table.columns:
            cost = base["cost_gbp"] - table.at["cost_gbp", p]
            carbon = base["carbon_kg"] - table.at["carbon_kg", p]
            table.loc[["savings_cost_gbp", "savings_cost_pct", "savings_carbon_kg", "savings_carbon_pct"], p] = [
                cost, _pct(cost, base["cost_gbp"]), carbon, _pct(carbon, base["carbon_kg"])
            ]
        if "total_cost_gbp" in table.index:
            for p in table.columns:
                total = base["total_cost_gbp"] - table.at["total_cost_gbp", p]
                table.loc[["savings_total_cost_gbp", "savings_total_cost_pct"], p] = [
                    total, _pct(total, base["total_cost_gbp"])]
    if "edf" in table.columns:
        edf = table["edf"]
        for p in table.columns:
            table.at["savings_vs_edf_cost_pct", p] = _pct(edf["cost_gbp"] - table.at["cost_gbp", p], edf["cost_gbp"])
            if "total_cost_gbp" in table.index:
                table.at["savings_vs_edf_total_cost_pct", p] = _pct(
                    edf["total_cost_gbp"] - table.at["total_cost_gbp", p], edf["total_cost_gbp"])
    if "optimal" in table.columns:
        best = table["optimal"]
        for p in table.columns:
            cost = table.at["cost_gbp", p] - best["cost_gbp"]
            carbon = table.at["carbon_kg", p] - best["carbon_kg"]
            objective = table.at["objective_gbp", p] - best["objective_gbp"]
            table.loc[["regret_cost_gbp", "regret_cost_pct", "regret_carbon_kg", "regret_carbon_pct",
                       "regret_objective_pct"], p] = [
                cost, _pct(cost, best["cost_gbp"]), carbon, _pct(carbon, best["carbon_kg"]),
                _pct(objective, best["objective_gbp"]),
            ]
    return table


def compare(scenario: Scenario | str | Path | dict[str, Any], policies: Sequence[str] = ("uncontrolled", "smart", "optimal"),
            *, seed: int | None = None, progress: Callable[[str, float], None] | None = None) -> Comparison:
    """Run ``scenario`` once per policy (same seed, same drivers, same prices) and compare."""
    sc = as_scenario(scenario)
    if not policies:
        raise ScenarioError("policies", ["give at least one policy"])
    for p in policies:
        check_policy(p, "policies")
    results = {}
    for p in policies:
        step = (lambda f, p=p: progress(p, f)) if progress is not None else None
        results[p] = simulate(sc, p, seed=seed, progress=step)
    return Comparison(sc, results, comparison_table(results, sc.control.carbon_weight_gbp_per_kg))


def check_thresholds(scenario: Scenario, table: pd.DataFrame) -> list[str]:
    """Each threshold of the scenario that ``table`` misses, as a readable line."""
    misses = []
    assert scenario.checks is not None
    for policy, limits in scenario.checks.thresholds.items():
        for kpi, bound in limits.items():
            if kpi not in table.index:
                known = ", ".join(sorted(set(KPI_DESCRIPTIONS) | set(DERIVED_DESCRIPTIONS)))
                misses.append(f"{policy}.{kpi}: unknown KPI (known: {known})")
                continue
            value = table.at[kpi, policy]
            if isinstance(value, float) and math.isnan(value):
                misses.append(f"{policy}.{kpi}: not available in this run")
            elif bound.min is not None and value < bound.min:
                misses.append(f"{policy}.{kpi} = {value:.6g}, below the minimum {bound.min:g}")
            elif bound.max is not None and value > bound.max:
                misses.append(f"{policy}.{kpi} = {value:.6g}, above the maximum {bound.max:g}")
    return misses
