"""Every shipped scenario loads, validates and runs."""

from pathlib import Path

import pytest

from twin import load_scenario, simulate
from twin.cli import default_scenario_path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml")) + [default_scenario_path()]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_scenario_runs(path):
    sc = load_scenario(path)
    r = simulate(sc)
    assert r.kpis["sessions"] > 0
    assert r.kpis["energy_delivered_kwh"] > 0
    assert r.kpis["ready_by_met_share_reachable"] >= 0.99
