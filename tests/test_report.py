"""Tests of the HTML comparison report (twin.report).

The report is written from real runs of the three policies on one small scenario, with the
comparison table built by the project's own :func:`twin.compare.comparison_table`. Tests that
need runs the twin would not produce (doctored sessions) build them explicitly and say so.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import twin
from twin.compare import DERIVED_DESCRIPTIONS, compare, comparison_table
from twin.report import write_report

POLICIES = ("uncontrolled", "smart", "optimal")
SEED = 3
CARBON_WEIGHT = 0.05
# Small (12 cars, 2 days; well under a second for all three policies) but not degenerate:
# with noisy forecasts smart lands between uncontrolled and the perfect-foresight optimum and
# misses a target, so every policy has its own column and a column mix-up would show.
SCENARIO = {
    "name": "report-check",
    "days": 2,
    "fleet": [{"count": 12}],
    "signals": {"forecast_error": {"price_relative_sd": 0.3, "carbon_relative_sd": 0.3}},
    "control": {"carbon_weight_gbp_per_kg": CARBON_WEIGHT},
}
TITLES = (
    "Fleet load against price and carbon",
    "State of charge and ready-by targets",
    "Savings versus uncontrolled",
    "Regret versus optimal",
)
FIGURE_IDS = ("fig-load", "fig-soc", "fig-savings", "fig-regret")
# the header comment plotly.js starts with, once per copy of the library
PLOTLY_BANNER = re.compile(r"\* plotly\.js v\d+\.\d+\.\d+")


@pytest.fixture(scope="module")
def comparison():
    return compare(SCENARIO, POLICIES, seed=SEED)


@pytest.fixture(scope="module")
def results(comparison) -> dict[str, twin.SimulationResult]:
    return comparison.results


@pytest.fixture(scope="module")
def table(comparison) -> pd.DataFrame:
    return comparison.table


def table_of(runs: dict[str, twin.SimulationResult]) -> pd.DataFrame:
    """The project's comparison table of ``runs``, as `compare` builds it for SCENARIO."""
    return comparison_table(runs, CARBON_WEIGHT)


@pytest.fixture(scope="module")
def report(results, table, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    out = write_report(results, table, path)
    assert out == path
    return path


def figure_spec(text: str, div_id: str) -> dict:
    """The plotly figure JSON embedded for ``div_id``."""
    m = re.search(r"var f = (\{.*?\});\nPlotly\.newPlot\(\"" + div_id + '"', text)
    assert m, f"no figure {div_id}"
    return json.loads(m.group(1))


def values(data) -> np.ndarray:
    """A trace's numbers: plotly stores numpy arrays as base64 ``{"dtype", "bdata"}``."""
    if isinstance(data, dict) and "bdata" in data:
        arr = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        return arr.reshape(data["shape"]) if "shape" in data else arr
    return np.asarray(data, dtype=float)


def kpi_rows(text: str) -> dict[str, str]:
    """The KPI table's rows by KPI name, in page order."""
    table = text[text.index('<table class="kpis"'):text.index("</table>")]
    return dict(re.findall(r'<tr data-kpi="([^"]+)"[^>]*>(.*?)</tr>', table))


def numbers(row: str) -> list[str]:
    """The numeric cells of one KPI row (not-applicable cells as "—"), in column order."""
    return re.findall(r'<td class="(?:num|na)"[^>]*>([^<]*)</td>', row)


def test_fixture_runs_the_three_real_policies(results, table):
    # the tests below mean something only if the columns really are different policies
    assert list(results) == list(POLICIES) == list(table.columns)
    assert all(r.policy == p and r.seed == SEED for p, r in results.items())
    assert table.at["plans", "uncontrolled"] == 0 and table.at["commands_sent", "uncontrolled"] == 0
    assert table.at["plans", "smart"] > 0 and table.at["plans", "optimal"] > 0
    cost = table.loc["cost_gbp"]
    assert cost["optimal"] < cost["smart"] < cost["uncontrolled"]
    assert table.at["ready_by_met_share", "smart"] < 1.0


def test_report_is_one_self_contained_file(report, results):
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert len(PLOTLY_BANNER.findall(text)) == 1
    assert text.count("Plotly.newPlot(") == len(FIGURE_IDS)
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    assert "@import" not in text and "fonts.googleapis" not in text
    # outside the plotly.js bundle there is no URL at all
    bundle_start = text.index("<script", text.index("<style>"))
    bundle_end = text.index("</script>", bundle_start)
    rest = text[:bundle_start] + text[bundle_end:]
    assert not re.search(r"https?://", rest)
    assert "report-check" in text
    for policy in results:
        assert f"<th>{policy}</th>" in text
    for title in TITLES:
        assert title in text
    for div_id in FIGURE_IDS:
        assert f'<div id="{div_id}"' in text
    assert "How to read this" in text


def test_header_and_kpi_table(report, results, table):
    text = report.read_text(encoding="utf-8")
    rows = kpi_rows(text)
    assert list(rows) == list(table.index)
    assert "objective_gbp" in rows and "savings_cost_gbp" in rows and "regret_objective_pct" in rows
    # every cell shows the table's own number, in the table's column order
    for kpi, fmt in (("cost_gbp", "{:,.2f}"), ("carbon_kg", "{:,.1f}"), ("objective_gbp", "{:,.2f}"),
                     ("savings_cost_gbp", "{:,.2f}"), ("savings_cost_pct", "{:,.1f}"),
                     ("regret_carbon_kg", "{:,.1f}"), ("regret_objective_pct", "{:,.1f}"),
                     ("avg_price_gbp_per_kwh", "{:,.4f}")):
        assert numbers(rows[kpi]) == [fmt.format(table.at[kpi, p]) for p in POLICIES], kpi
    # units from names, shares as percent, descriptions from KPI_DESCRIPTIONS / DERIVED_DESCRIPTIONS
    assert "<td>GBP</td>" in rows["cost_gbp"]
    assert "<td>kg CO2</td>" in rows["carbon_kg"]
    assert "<td>GBP/kWh</td>" in rows["avg_price_gbp_per_kwh"]
    assert "<td>%</td>" in rows["ready_by_met_share"]
    assert numbers(rows["ready_by_met_share"]) == [
        f"{table.at['ready_by_met_share', p] * 100:,.1f}" for p in POLICIES
    ]
    assert twin.KPI_DESCRIPTIONS["peak_fleet_kw"] in rows["peak_fleet_kw"]
    assert DERIVED_DESCRIPTIONS["regret_objective_pct"] in rows["regret_objective_pct"]
    assert '<tr data-kpi="savings_cost_gbp" class="derived">' in text
    assert '<tr data-kpi="cost_gbp">' in text
    assert numbers(rows["vehicles"]) == [f"{results['optimal'].kpis['vehicles']:,}"] * 3
    # one seed for all runs: named once
    assert f"<dt>Seed</dt><dd>{SEED}</dd>" in text and "Seeds" not in text


def test_figures_hold_every_policy(report, results, table):
    text = report.read_text(encoding="utf-8")
    load = figure_spec(text, "fig-load")
    names = [t["name"] for t in load["data"] if t.get("showlegend", True) is not False]
    assert names == list(results)
    # the runs share one seed, so their signals are the same and drawn once: one line per
    # policy, then one price and one carbon line
    assert [t["name"] for t in load["data"]] == [*results, "price", "carbon"]
    for t in load["data"][:len(results)]:
        np.testing.assert_allclose(values(t["y"]), results[t["name"]].timeseries["fleet_kw"])
    ts = results["uncontrolled"].timeseries
    np.testing.assert_allclose(values(load["data"][-2]["y"]), ts["price_gbp_per_kwh"])
    np.testing.assert_allclose(values(load["data"][-1]["y"]), ts["carbon_g_per_kwh"])
    soc = figure_spec(text, "fig-soc")
    cars = {a["text"] for a in soc["layout"]["annotations"]}
    assert len(cars) == 6
    assert {t["legendgroup"] for t in soc["data"]} == set(results)


@pytest.mark.parametrize(
    ("div_id", "prefix", "shown"),
    [("fig-savings", "savings", ["smart", "optimal"]), ("fig-regret", "regret", ["uncontrolled", "smart"])],
)
def test_savings_and_regret_bars_are_the_table(report, table, div_id, prefix, shown):
    fig = figure_spec(report.read_text(encoding="utf-8"), div_id)
    cost, carbon = fig["data"]
    assert list(cost["x"]) == list(carbon["x"]) == shown
    np.testing.assert_allclose(values(cost["y"]), table.loc[f"{prefix}_cost_gbp", shown].to_numpy(float))
    np.testing.assert_allclose(values(carbon["y"]), table.loc[f"{prefix}_carbon_kg", shown].to_numpy(float))
    assert cost["text"] == [f"{table.at[f'{prefix}_cost_pct', p]:+.1f} %" for p in shown]
    assert carbon["text"] == [f"{table.at[f'{prefix}_carbon_pct', p]:+.1f} %" for p in shown]
    if prefix == "savings":
        assert values(cost["y"])[0] == pytest.approx(table.at["savings_cost_gbp", "smart"])
        assert cost["text"][0] == f"{table.at['savings_cost_pct', 'smart']:+.1f} %"
        assert values(cost["y"])[0] > 0  # smart really is cheaper than charging on plug-in
    else:
        assert values(cost["y"])[1] == pytest.approx(table.at["regret_cost_gbp", "smart"])
        assert values(cost["y"])[1] > 0  # and dearer than the perfect-foresight bound


def test_runs_with_different_seeds_draw_their_own_signals(results, tmp_path):
    # a real smart run with another seed: other drivers and other price and carbon days
    other = twin.simulate(SCENARIO, "smart", seed=SEED + 1)
    mine, theirs = (r.timeseries["price_gbp_per_kwh"].to_numpy() for r in (results["uncontrolled"], other))
    n = min(len(mine), len(theirs))  # the horizon runs to the last departure, so lengths may differ
    assert not np.allclose(mine[:n], theirs[:n])
    runs = {**results, "smart": other}
    path = write_report(runs, table_of(runs), tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    load = figure_spec(text, "fig-load")
    # optimal shares uncontrolled's signals, so only smart adds a dotted line of its own
    assert [t["name"] for t in load["data"]] == [
        *runs, "price (uncontrolled)", "price (smart)", "carbon (uncontrolled)", "carbon (smart)"
    ]
    np.testing.assert_allclose(values(load["data"][4]["y"]), other.timeseries["price_gbp_per_kwh"])
    assert {t["line"]["dash"] for t in load["data"][3:]} == {"dot"}
    assert "<dt>Seeds</dt>" in text
    assert f"uncontrolled: {SEED}, smart: {SEED + 1}, optimal: {SEED}" in text


def test_missed_targets_are_marked(results, tmp_path):
    # real runs: with every car drawn, each run's missed sessions are its red crosses
    path = write_report(results, table_of(results), tmp_path / "all.html", sample_vehicles=50)
    soc = figure_spec(path.read_text(encoding="utf-8"), "fig-soc")
    assert len(soc["layout"]["annotations"]) == len(results["smart"].vehicles)
    for policy, res in results.items():
        crosses = sum(len(t["x"]) for t in soc["data"] if t["name"] == f"{policy}: missed target")
        assert crosses == int((~res.sessions["met_target"]).sum()), policy
    assert (~results["smart"].sessions["met_target"]).sum() > 0

    # doctored: a copy of the uncontrolled run labelled smart, with every session marked
    # missed, so the marking does not depend on which cars happen to be drawn
    base = results["uncontrolled"]
    sessions = base.sessions.copy()
    sessions["met_target"] = False
    runs = {"uncontrolled": base, "smart": dataclasses.replace(base, policy="smart", sessions=sessions)}
    path = write_report(runs, table_of(runs), tmp_path / "r.html", sample_vehicles=2)
    soc = figure_spec(path.read_text(encoding="utf-8"), "fig-soc")
    missed: dict[str, list[dict]] = {}
    for t in soc["data"]:
        if t["name"].endswith("missed target"):
            missed.setdefault(t["name"], []).append(t)
    assert set(missed) == {"uncontrolled: missed target", "smart: missed target"}
    assert not any(t.get("text") for t in missed["uncontrolled: missed target"])
    hovers = [h for t in missed["smart: missed target"] for h in t.get("text", [])]
    assert hovers and all("MISSED" in h for h in hovers)
    # one legend entry per policy for missed targets
    assert [t.get("showlegend") for t in missed["smart: missed target"]].count(True) == 1


def test_car_sample_is_seeded(results, table, tmp_path):
    def cars(**kw) -> list[str]:
        path = write_report(results, table, tmp_path / "r.html", **kw)
        soc = figure_spec(path.read_text(encoding="utf-8"), "fig-soc")
        return [a["text"] for a in soc["layout"]["annotations"]]

    assert cars(seed=5) == cars(seed=5)
    assert len(cars(sample_vehicles=3)) == 3
    # asking for more cars than there are draws every car once
    assert len(cars(sample_vehicles=50)) == 12
    path = write_report(results, table, tmp_path / "none.html", sample_vehicles=0)
    text = path.read_text(encoding="utf-8")
    assert "State of charge not shown" in text and '<div id="fig-soc"' not in text


def test_output_is_deterministic(results, table, tmp_path):
    a = write_report(results, table, tmp_path / "a.html", title="Same")
    b = write_report(results, table, tmp_path / "b.html", title="Same")
    assert a.read_bytes() == b.read_bytes()
    assert "<title>Same</title>" in a.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("policies", "present", "notes"),
    [
        (("smart", "optimal"), ("fig-regret",),
         ("Savings not shown: the 'uncontrolled' policy was not run",)),
        (("uncontrolled", "smart"), ("fig-savings",),
         ("Regret not shown: the 'optimal' policy was not run",)),
        (("smart",), (), ("the 'uncontrolled' policy was not run", "the 'optimal' policy was not run")),
        (("optimal",), (), ("'optimal' is the only policy",)),
    ],
)
def test_absent_reference_policies(results, tmp_path, policies, present, notes):
    runs = {p: results[p] for p in policies}
    cmp = table_of(runs)
    path = write_report(runs, cmp, tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    for div_id in ("fig-savings", "fig-regret"):
        assert (f'<div id="{div_id}"' in text) == (div_id in present)
    for note in notes:
        assert note in text
    assert '<div id="fig-load"' in text and '<div id="fig-soc"' in text
    # rows without their reference policy are NaN in the table and "not applicable" on the page
    rows = kpi_rows(text)
    for prefix, reference in (("savings", "uncontrolled"), ("regret", "optimal")):
        for kpi in (f"{prefix}_cost_gbp", f"{prefix}_carbon_pct"):
            if reference in runs:
                assert cmp.loc[kpi].notna().all()
                assert "—" not in numbers(rows[kpi])
            else:
                assert cmp.loc[kpi].isna().all()
                assert numbers(rows[kpi]) == ["—"] * len(runs)
                assert rows[kpi].count('title="not applicable"') == len(runs)


def test_columns_in_another_order_are_accepted(results, table, tmp_path):
    cmp = table[["optimal", "uncontrolled", "smart"]]
    text = write_report(results, cmp, tmp_path / "r.html").read_text(encoding="utf-8")
    assert re.search(r"<th>uncontrolled</th><th>smart</th><th>optimal</th>", text)
    # the numbers move with their columns
    assert numbers(kpi_rows(text)["cost_gbp"]) == [f"{table.at['cost_gbp', p]:,.2f}" for p in POLICIES]


def test_bad_inputs(results, table, tmp_path):
    cmp = table
    with pytest.raises(ValueError, match="results is empty"):
        write_report({}, cmp, tmp_path / "r.html")
    with pytest.raises(ValueError, match="missing: optimal"):
        write_report(results, cmp.drop(columns="optimal"), tmp_path / "r.html")
    with pytest.raises(ValueError, match="unexpected: greedy"):
        write_report(results, cmp.assign(greedy=1.0), tmp_path / "r.html")
    dup = pd.concat([cmp, cmp[["smart"]]], axis=1)
    with pytest.raises(ValueError, match="repeated"):
        write_report(results, dup, tmp_path / "r.html")
    with pytest.raises(ValueError, match="sample_vehicles"):
        write_report(results, cmp, tmp_path / "r.html", sample_vehicles=-1)
    with pytest.raises(TypeError, match="SimulationResult"):
        write_report({"smart": results["smart"].kpis}, cmp[["smart"]], tmp_path / "r.html")
    with pytest.raises(TypeError, match="DataFrame"):
        write_report(results, cmp.to_dict(), tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_renders_in_headless_chromium(report, table, tmp_path):
    browser = _chromium()
    if browser is None:
        reason = "chromium not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must provide it")
        pytest.skip(reason)
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", "--dump-dom", report.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]
    # every figure div was drawn by plotly: it holds its own SVG
    assert dom.count('class="plot-container plotly"') == len(FIGURE_IDS)
    starts = [dom.index(f'<div id="{div_id}"') for div_id in FIGURE_IDS]
    for div_id, a, b in zip(FIGURE_IDS, starts, starts[1:] + [len(dom)]):
        assert 'class="main-svg"' in dom[a:b], f"{div_id} was not rendered"
    assert dom.count('class="main-svg"') >= len(FIGURE_IDS)
    for title in TITLES:
        assert re.search(r'class="gtitle"[^>]*>' + re.escape(title), dom), title
    rows = re.findall(r'<tr data-kpi="([^"]+)"', dom)
    assert rows == list(table.index)
