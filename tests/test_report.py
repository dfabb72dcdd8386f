"""Tests of the HTML comparison report (twin.report)."""

from __future__ import annotations

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
from twin.report import write_report

SCENARIO = {"name": "report-check", "days": 2, "fleet": [{"count": 12}]}
TITLES = (
    "Fleet load against price and carbon",
    "State of charge and ready-by targets",
    "Savings versus uncontrolled",
    "Regret versus optimal",
)
FIGURE_IDS = ("fig-load", "fig-soc", "fig-savings", "fig-regret")
# the header comment plotly.js starts with, once per copy of the library
PLOTLY_BANNER = re.compile(r"\* plotly\.js v\d+\.\d+\.\d+")


def comparison_of(results: dict[str, twin.SimulationResult]) -> pd.DataFrame:
    """The comparison table the report expects, built from the runs' KPIs."""
    frame = pd.DataFrame({p: pd.Series(r.kpis, dtype=float) for p, r in results.items()})
    for kind, ref in (("savings", "uncontrolled"), ("regret", "optimal")):
        for what, unit in (("cost", "gbp"), ("carbon", "kg")):
            base = frame.loc[f"{what}_{unit}"]
            diff = pd.Series(np.nan, index=frame.columns)
            pct = diff.copy()
            if ref in frame.columns:
                diff = base[ref] - base if kind == "savings" else base - base[ref]
                pct = diff / base[ref] * 100.0
                diff[ref] = pct[ref] = np.nan
            frame.loc[f"{kind}_{what}_{unit}"] = diff
            frame.loc[f"{kind}_{what}_pct"] = pct
    return frame


@pytest.fixture(scope="module")
def results() -> dict[str, twin.SimulationResult]:
    # one policy exists so far; different seeds stand in for different policies
    return {
        policy: twin.simulate(SCENARIO, seed=seed)
        for policy, seed in (("uncontrolled", 1), ("smart", 2), ("optimal", 3))
    }


@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    out = write_report(results, comparison_of(results), path)
    assert out == path
    return path


def figure_spec(text: str, div_id: str) -> dict:
    """The plotly figure JSON embedded for ``div_id``."""
    m = re.search(r"var f = (\{.*?\});\nPlotly\.newPlot\(\"" + div_id + '"', text)
    assert m, f"no figure {div_id}"
    return json.loads(m.group(1))


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


def test_header_and_kpi_table(report, results):
    text = report.read_text(encoding="utf-8")
    table = text[text.index('<table class="kpis"'):text.index("</table>")]
    rows = dict(re.findall(r'<tr data-kpi="([^"]+)"[^>]*>(.*?)</tr>', table))
    expected = list(comparison_of(results).index)
    assert list(rows) == expected
    assert "savings_cost_gbp" in rows and "regret_carbon_pct" in rows
    # units from names, shares as percent, descriptions from KPI_DESCRIPTIONS
    assert "<td>GBP</td>" in rows["cost_gbp"]
    assert "<td>kg CO2</td>" in rows["carbon_kg"]
    assert "<td>GBP/kWh</td>" in rows["avg_price_gbp_per_kwh"]
    share = results["smart"].kpis["ready_by_met_share"] * 100
    assert f'<td class="num">{share:,.1f}</td>' in rows["ready_by_met_share"]
    assert twin.KPI_DESCRIPTIONS["peak_fleet_kw"] in rows["peak_fleet_kw"]
    assert f'<td class="num">{results["optimal"].kpis["vehicles"]:,}</td>' in rows["vehicles"]
    # savings of the baseline against itself do not apply
    assert 'title="not applicable">—</td>' in rows["savings_cost_gbp"]
    assert "Seeds" in text and "smart: 2" in text


def test_figures_hold_every_policy(report, results):
    text = report.read_text(encoding="utf-8")
    load = figure_spec(text, "fig-load")
    names = [t["name"] for t in load["data"] if t.get("showlegend", True) is not False]
    assert names == list(results)
    # runs with different seeds have different signals: one price and one carbon line each
    assert len(load["data"]) == 3 * len(results)
    soc = figure_spec(text, "fig-soc")
    cars = {a["text"] for a in soc["layout"]["annotations"]}
    assert len(cars) == 6
    assert {t["legendgroup"] for t in soc["data"]} == set(results)
    savings = figure_spec(text, "fig-savings")
    assert [list(t["x"]) for t in savings["data"]] == [["smart", "optimal"]] * 2


def test_same_signals_drawn_once(results, tmp_path):
    base = results["uncontrolled"]
    runs = {"uncontrolled": base, "smart": dataclasses.replace(base, policy="smart")}
    path = write_report(runs, comparison_of(runs), tmp_path / "r.html")
    load = figure_spec(path.read_text(encoding="utf-8"), "fig-load")
    assert [t["name"] for t in load["data"]] == ["uncontrolled", "smart", "price", "carbon"]


def test_missed_targets_are_marked(results, tmp_path):
    base = results["uncontrolled"]
    sessions = base.sessions.copy()
    sessions["met_target"] = False
    runs = {"uncontrolled": base, "smart": dataclasses.replace(base, policy="smart", sessions=sessions)}
    path = write_report(runs, comparison_of(runs), tmp_path / "r.html", sample_vehicles=2)
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


def test_car_sample_is_seeded(results, tmp_path):
    def cars(**kw) -> list[str]:
        path = write_report(results, comparison_of(results), tmp_path / "r.html", **kw)
        soc = figure_spec(path.read_text(encoding="utf-8"), "fig-soc")
        return [a["text"] for a in soc["layout"]["annotations"]]

    assert cars(seed=5) == cars(seed=5)
    assert len(cars(sample_vehicles=3)) == 3
    # asking for more cars than there are draws every car once
    assert len(cars(sample_vehicles=50)) == 12
    path = write_report(results, comparison_of(results), tmp_path / "none.html", sample_vehicles=0)
    text = path.read_text(encoding="utf-8")
    assert "State of charge not shown" in text and '<div id="fig-soc"' not in text


def test_output_is_deterministic(results, tmp_path):
    cmp = comparison_of(results)
    a = write_report(results, cmp, tmp_path / "a.html", title="Same")
    b = write_report(results, cmp, tmp_path / "b.html", title="Same")
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
    path = write_report(runs, comparison_of(runs), tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    for div_id in ("fig-savings", "fig-regret"):
        assert (f'<div id="{div_id}"' in text) == (div_id in present)
    for note in notes:
        assert note in text
    assert '<div id="fig-load"' in text and '<div id="fig-soc"' in text


def test_columns_in_another_order_are_accepted(results, tmp_path):
    cmp = comparison_of(results)[["optimal", "uncontrolled", "smart"]]
    text = write_report(results, cmp, tmp_path / "r.html").read_text(encoding="utf-8")
    assert re.search(r"<th>uncontrolled</th><th>smart</th><th>optimal</th>", text)


def test_bad_inputs(results, tmp_path):
    cmp = comparison_of(results)
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


def test_renders_in_headless_chromium(report, results, tmp_path):
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
    assert rows == list(comparison_of(results).index)
