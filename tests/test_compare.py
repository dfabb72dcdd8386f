"""Comparing policies and enforcing KPI thresholds (`twin compare`, `twin check`)."""

import math

import pytest
from typer.testing import CliRunner

import twin
from twin.cli import app
from twin.compare import comparison_table

runner = CliRunner()
SMALL = {"days": 2, "seed": 3, "fleet": [{"name": "c", "count": 8}]}


def test_savings_and_regret_rows_are_computed_against_the_right_columns():
    a = twin.simulate(SMALL)
    b = twin.simulate({**SMALL, "signals": {"price": {"shape": "flat"}, "carbon": {"shape": "flat"}}})
    table = comparison_table({"uncontrolled": a, "optimal": b, "smart": a}, carbon_weight_gbp_per_kg=0.1)
    ca, cb = a.kpis["cost_gbp"], b.kpis["cost_gbp"]
    assert table.at["objective_gbp", "smart"] == pytest.approx(ca + 0.1 * a.kpis["carbon_kg"])
    assert table.at["savings_cost_gbp", "optimal"] == pytest.approx(ca - cb)
    assert table.at["savings_cost_pct", "optimal"] == pytest.approx(100 * (ca - cb) / ca)
    assert table.at["savings_cost_gbp", "uncontrolled"] == 0
    assert table.at["regret_cost_pct", "smart"] == pytest.approx(100 * (ca - cb) / cb)
    assert table.at["regret_cost_gbp", "optimal"] == 0
    only = comparison_table({"smart": a})
    assert math.isnan(only.at["regret_cost_pct", "smart"]) and math.isnan(only.at["savings_cost_pct", "smart"])


def checks_file(tmp_path, thresholds):
    lines = ["days: 2", "seed: 3", "fleet:", "  - {name: c, count: 8}", "checks:", "  policies: [uncontrolled]",
             "  thresholds:", "    uncontrolled:"]
    lines += [f"      {k}: {v}" for k, v in thresholds.items()]
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_passes_when_every_threshold_is_met(tmp_path):
    path = checks_file(tmp_path, {"ready_by_met_share": "{min: 0.9}", "commands_sent": "{max: 0}"})
    res = runner.invoke(app, ["check", str(path)])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output and "2 thresholds met" in res.output


def test_check_fails_naming_each_threshold_missed(tmp_path):
    r = twin.simulate(SMALL)
    path = checks_file(tmp_path, {"ready_by_met_share": "{min: 0.9}", "cost_gbp": "{max: 1}",
                                  "energy_delivered_kwh": "{min: 1000000}"})
    res = runner.invoke(app, ["check", str(path)])
    assert res.exit_code == 1
    assert "FAIL" in res.output and "1/3 thresholds met" in res.output
    assert f"missed: uncontrolled.cost_gbp = {r.kpis['cost_gbp']:.6g}, above the maximum 1" in res.output
    assert "missed: uncontrolled.energy_delivered_kwh" in res.output and "below the minimum 1e+06" in res.output


def test_check_rejects_unknown_kpi_and_missing_checks(tmp_path):
    res = runner.invoke(app, ["check", str(checks_file(tmp_path, {"happiness": "{min: 1}"}))])
    assert res.exit_code == 1 and "uncontrolled.happiness: unknown KPI" in res.output
    plain = tmp_path / "plain.yaml"
    plain.write_text("days: 1\nfleet:\n  - {count: 2}\n")
    res = runner.invoke(app, ["check", str(plain)])
    assert res.exit_code == 2 and "declares no 'checks'" in res.stderr


def test_thresholds_for_a_policy_that_is_not_run_are_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("days: 1\nfleet:\n  - {count: 2}\nchecks:\n  policies: [uncontrolled]\n"
                    "  thresholds:\n    smart:\n      cost_gbp: {max: 1}\n")
    res = runner.invoke(app, ["check", str(path)])
    assert res.exit_code == 2
    assert "thresholds for 'smart', which is not in policies ['uncontrolled']" in res.stderr


def test_compare_prints_side_by_side_and_writes_tables(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("days: 2\nseed: 3\nfleet:\n  - {name: c, count: 8}\n")
    res = runner.invoke(app, ["compare", str(path), "--policies", "uncontrolled", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "savings_cost_pct" in res.output
    assert (tmp_path / "o" / "uncontrolled" / "sessions.csv").exists()
    assert (tmp_path / "o" / "comparison.csv").read_text().startswith("kpi,uncontrolled")
    res = runner.invoke(app, ["compare", str(path), "--policies", "uncontrolled,clever"])
    assert res.exit_code == 2 and "unknown policy 'clever'" in res.stderr


def test_compare_writes_the_html_report_for_all_three_policies(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("days: 2\nseed: 3\nfleet:\n  - {name: c, count: 10}\n")
    report = tmp_path / "r.html"
    res = runner.invoke(app, ["compare", str(path), "--report", str(report)])
    assert res.exit_code == 0, res.output
    html = report.read_text()
    for policy in ("uncontrolled", "smart", "optimal"):
        assert policy in html
    assert "regret_objective_pct" in res.output


def test_total_cost_and_edf_savings_rows():
    site = {"site": {"feeder_kw": 20.0, "demand_charge_gbp_per_kw_month": 10.0}}
    a = twin.simulate({**SMALL, **site}, "uncontrolled")
    e = twin.simulate({**SMALL, **site}, "edf")
    table = comparison_table({"uncontrolled": a, "edf": e, "smart": a})
    ta, te = a.kpis["total_cost_gbp"], e.kpis["total_cost_gbp"]
    assert a.kpis["demand_cost_gbp"] > 0 and ta == pytest.approx(a.kpis["cost_gbp"] + a.kpis["demand_cost_gbp"])
    assert table.at["savings_total_cost_pct", "edf"] == pytest.approx(100 * (ta - te) / ta)
    assert table.at["savings_vs_edf_total_cost_pct", "smart"] == pytest.approx(100 * (te - ta) / te)
    assert table.at["savings_vs_edf_cost_pct", "uncontrolled"] == pytest.approx(
        100 * (e.kpis["cost_gbp"] - a.kpis["cost_gbp"]) / e.kpis["cost_gbp"])
    assert math.isnan(comparison_table({"uncontrolled": a}).at["savings_vs_edf_cost_pct", "uncontrolled"])
