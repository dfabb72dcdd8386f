"""HTML comparison report of twin runs under several policies.

:func:`write_report` turns the results of one scenario run under several policies (and the
comparison table built from their KPIs) into a single self-contained HTML file: plotly.js is
inlined once and nothing is fetched from the network, so the file opens offline and can be
attached to an e-mail or archived as a CI artefact.

The page has, in order:

1. a header: scenario, policies, seeds, simulated horizon, and the KPI comparison table
   (one row per KPI, one column per policy, unit and description per row);
2. *Fleet load against price and carbon*: fleet power per settlement slot for every policy,
   with the price and carbon-intensity signals in linked panels below it;
3. *State of charge and ready-by targets*: the SoC of a seeded sample of cars under every
   policy, with each session's ready-by target marked and missed targets flagged;
4. *Savings versus uncontrolled* and *Regret versus optimal*: cost and carbon bars per policy,
   each left out with a note when its reference policy was not run;
5. a short "how to read this" footer.

Everything drawn is already per settlement slot (or per session), so nothing is resampled: a
1,000-car week under three policies adds about 0.25 MB of figure data to the ~4.8 MB of
plotly.js.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from twin.compare import DERIVED_DESCRIPTIONS as _DERIVED_DESCRIPTIONS
from twin.domain import SOC_TOLERANCE
from twin.results import KPI_DESCRIPTIONS, SimulationResult, soc_trajectory

__all__ = ["write_report"]

#: reference policy for savings rows of the comparison table
BASELINE = "uncontrolled"
#: reference policy for regret rows of the comparison table
OPTIMUM = "optimal"

# Unit and number format by KPI-name suffix, most specific first. ``scale`` converts the stored
# value to the displayed one (shares are fractions 0..1 in code, percent on the page).
_UNITS: tuple[tuple[str, str, str, float], ...] = (
    ("_gbp_per_kwh", "GBP/kWh", "{:,.4f}", 1.0),
    ("_per_car_hour", "per car-hour", "{:,.3f}", 1.0),
    ("_pct", "%", "{:,.1f}", 1.0),
    ("_gbp", "GBP", "{:,.2f}", 1.0),
    ("_kwh", "kWh", "{:,.1f}", 1.0),
    ("_kw", "kW", "{:,.1f}", 1.0),
    ("_kg", "kg CO2", "{:,.1f}", 1.0),
)

_FIG_LOAD = "Fleet load against price and carbon"
_FIG_SOC = "State of charge and ready-by targets"
_FIG_SAVINGS = f"Savings versus {BASELINE}"
_FIG_REGRET = f"Regret versus {OPTIMUM}"

# Fixed colours for the policies the twin knows, so the same policy looks the same in every
# report; anything else takes the next colour of plotly's default palette.
_KNOWN_COLOURS = {BASELINE: "#7f7f7f", "smart": "#1f77b4", OPTIMUM: "#2ca02c"}
_PALETTE = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_MISSED_COLOUR = "#d62728"

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .15rem 1rem; margin: .8rem 0; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
table.kpis { border-collapse: collapse; font-size: .9rem; margin-top: .5rem; }
table.kpis th, table.kpis td { padding: .25rem .6rem; border-bottom: 1px solid #eee; text-align: left; }
table.kpis td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kpis td.na { text-align: right; color: #aaa; }
table.kpis thead th { border-bottom: 2px solid #999; }
table.kpis td.desc { color: #555; }
table.kpis tr.derived td { background: #fafafa; }
p.note { color: #555; font-size: .9rem; }
p.skipped { color: #8a6d3b; background: #fcf8e3; padding: .5rem .8rem; border-radius: 4px; }
footer { margin-top: 2.5rem; border-top: 1px solid #ddd; font-size: .9rem; color: #444; }
code { font-size: .85em; }
"""


def write_report(
    results: dict[str, SimulationResult],
    comparison: pd.DataFrame,
    path: str | Path,
    *,
    title: str | None = None,
    sample_vehicles: int = 6,
    seed: int = 0,
) -> Path:
    """Write a self-contained HTML report comparing runs of a scenario under several policies.

    Parameters
    ----------
    results : dict of str to SimulationResult
        Runs keyed by the policy label to show (``"uncontrolled"``, ``"smart"``,
        ``"optimal"``, ...). The order is the order of columns, lines and bars.
    comparison : pandas.DataFrame
        KPI comparison indexed by KPI name with one column per key of `results`: every KPI of
        the runs plus the ``savings_*`` rows (versus ``"uncontrolled"``) and ``regret_*`` rows
        (versus ``"optimal"``), NaN where not applicable. ``*_pct`` rows are percentages
        (12.5 means 12.5 %); ``*_share`` rows are fractions 0..1 and are shown as percent.
    path : str or pathlib.Path
        File to write; parent directories are created.
    title : str, optional
        Page title; default ``"chargetwin report: <scenario>"``.
    sample_vehicles : int, default 6
        Number of cars whose state of charge is drawn. They are drawn from the cars present
        in every run, preferring cars with sessions in every run.
    seed : int, default 0
        Seed of the car sample, so the same inputs give the same page.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        If `results` is empty, if the columns of `comparison` are not the keys of `results`,
        or if `sample_vehicles` is negative.
    TypeError
        If a value of `results` is not a :class:`~twin.results.SimulationResult` or
        `comparison` is not a DataFrame.
    """
    _check_inputs(results, comparison, sample_vehicles)
    policies = list(results)
    comparison = comparison.loc[:, policies]
    colours = _policy_colours(policies)

    scenarios = _unique(r.scenario for r in results.values())
    page_title = title or f"chargetwin report: {', '.join(scenarios)}"

    sections = [_header(page_title, results, comparison)]
    sections.append(_section("Fleet load", _figure_div("fig-load", _load_figure(results, colours)),
                             _LOAD_NOTE))
    soc_fig, soc_note = _soc_figure(results, colours, sample_vehicles, seed)
    sections.append(_section("State of charge", _figure_div("fig-soc", soc_fig) if soc_fig else "",
                             soc_note, skipped=soc_fig is None))
    parts = []
    for div_id, fig_title, prefix, reference in (
        ("fig-savings", _FIG_SAVINGS, "savings", BASELINE),
        ("fig-regret", _FIG_REGRET, "regret", OPTIMUM),
    ):
        fig, note = _delta_figure(comparison, colours, fig_title, prefix, reference)
        skipped = f'<p class="skipped">{html.escape(note, quote=False)}</p>'
        parts.append(_figure_div(div_id, fig) if fig else skipped)
    sections.append(_section("Savings and regret", "\n".join(parts), _DELTA_NOTE))
    sections.append(_FOOTER)

    doc = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(page_title)}</title>",
            f"<style>{_CSS}</style>",
            # plotly.js, inlined once; every figure below uses it
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head>",
            "<body>",
            *sections,
            "</body>",
            "</html>",
        ]
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out


# -- checks and small helpers ----------------------------------------------------------------


def _check_inputs(results: Mapping[str, SimulationResult], comparison: pd.DataFrame,
                  sample_vehicles: int) -> None:
    if not results:
        raise ValueError("results is empty: pass at least one policy's SimulationResult")
    for name, res in results.items():
        if not isinstance(res, SimulationResult):
            raise TypeError(f"results['{name}'] is a {type(res).__name__}, not a SimulationResult")
    if not isinstance(comparison, pd.DataFrame):
        raise TypeError(f"comparison must be a pandas DataFrame, got {type(comparison).__name__}")
    columns = [str(c) for c in comparison.columns]
    policies = [str(p) for p in results]
    if comparison.columns.has_duplicates or set(comparison.columns) != set(results):
        missing = [p for p in policies if p not in columns]
        extra = [c for c in columns if c not in policies]
        raise ValueError(
            "comparison columns must be the policies of results "
            f"({', '.join(policies)}); got {', '.join(columns) or 'none'}"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unexpected: {', '.join(extra)}" if extra else "")
            + ("; repeated columns" if comparison.columns.has_duplicates else "")
        )
    if sample_vehicles < 0:
        raise ValueError(f"sample_vehicles must be 0 or more, got {sample_vehicles}")


def _unique(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _policy_colours(policies: list[str]) -> dict[str, str]:
    spare = itertools.cycle(_PALETTE)
    return {p: _KNOWN_COLOURS[p] if p in _KNOWN_COLOURS else next(spare) for p in policies}


def _naive_utc(values: pd.Series) -> pd.Series:
    """Timestamps as naive UTC: plotly.js has no time zones and would mis-read offsets."""
    s = pd.to_datetime(values)
    return s.dt.tz_convert("UTC").dt.tz_localize(None) if s.dt.tz is not None else s


def _kpi_unit(name: str) -> tuple[str, str, float]:
    """Unit, format and display scale of a KPI, from its name."""
    if name.endswith("_share") or "_share_" in name:
        return "%", "{:,.1f}", 100.0
    for suffix, unit, fmt, scale in _UNITS:
        if name.endswith(suffix):
            return unit, fmt, scale
    return "", "", 1.0


def _format_value(value: object, fmt: str, scale: float) -> str | None:
    """Display text of one table cell, or None when not applicable."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    x *= scale
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if fmt:
        return fmt.format(x)
    return f"{x:,.0f}" if x == round(x) else f"{x:,.3g}"


# -- page parts ------------------------------------------------------------------------------


def _header(page_title: str, results: Mapping[str, SimulationResult], comparison: pd.DataFrame) -> str:
    first = next(iter(results.values()))
    seeds = _unique(r.seed for r in results.values())
    seed_text = (
        str(seeds[0]) if len(seeds) == 1
        else ", ".join(f"{html.escape(p)}: {r.seed}" for p, r in results.items())
    )
    ts = first.timeseries
    meta = [
        ("Scenario", ", ".join(html.escape(s) for s in _unique(r.scenario for r in results.values()))),
        ("Policies", ", ".join(f"<strong>{html.escape(p)}</strong>" for p in results)),
        ("Seed" if len(seeds) == 1 else "Seeds", seed_text),
    ]
    if len(ts):
        start, end = ts["slot_start"].iloc[0], ts["slot_start"].iloc[-1]
        slot = ts["slot_start"].diff().dropna()
        slot_text = f", {int(slot.iloc[0].total_seconds() // 60)}-minute slots" if len(slot) else ""
        meta.append(("Horizon", f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC{slot_text}"))
    meta.append(("Vehicles", f"{len(first.vehicles):,}"))
    rows = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)
    return (
        f"<header>\n<h1>{html.escape(page_title)}</h1>\n<dl class=\"meta\">\n{rows}\n</dl>\n"
        f"<h2>Key performance indicators</h2>\n{_kpi_table(comparison)}\n</header>"
    )


def _kpi_table(comparison: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(p))}</th>" for p in comparison.columns)
    lines = [
        '<table class="kpis" id="kpi-table">',
        f"<thead><tr><th>KPI</th><th>unit</th>{head}<th>description</th></tr></thead>",
        "<tbody>",
    ]
    for name, row in comparison.iterrows():
        key = str(name)
        unit, fmt, scale = _kpi_unit(key)
        cells = []
        for value in row:
            text = _format_value(value, fmt, scale)
            cells.append(
                '<td class="na" title="not applicable">—</td>' if text is None
                else f'<td class="num">{html.escape(text)}</td>'
            )
        description = KPI_DESCRIPTIONS.get(key) or _DERIVED_DESCRIPTIONS.get(key, "")
        derived = ' class="derived"' if key in _DERIVED_DESCRIPTIONS else ""
        lines.append(
            f'<tr data-kpi="{html.escape(key)}"{derived}>'
            f'<th scope="row"><code>{html.escape(key)}</code></th><td>{html.escape(unit)}</td>'
            f"{''.join(cells)}<td class=\"desc\">{html.escape(description)}</td></tr>"
        )
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _section(heading: str, body: str, note: str, *, skipped: bool = False) -> str:
    note_html = f'<p class="{"skipped" if skipped else "note"}">{html.escape(note, quote=False)}</p>'
    return f"<section>\n<h2>{html.escape(heading)}</h2>\n{note_html}\n{body}\n</section>"


def _figure_div(div_id: str, fig: go.Figure) -> str:
    """A div and the script drawing ``fig`` into it with the page's single plotly.js."""
    spec = json.loads(fig.to_json())
    # "<" escaped so no label can close the script element early
    payload = json.dumps(spec, separators=(",", ":")).replace("<", "\\u003c")
    config = json.dumps(_PLOT_CONFIG)
    return (
        f'<div id="{div_id}" class="figure"></div>\n'
        f'<script type="text/javascript">(function () {{ var f = {payload};\n'
        f'Plotly.newPlot("{div_id}", f.data, f.layout, {config}); }})();</script>'
    )


_LOAD_NOTE = (
    "Top: average fleet power in each settlement slot under each policy. Below, on the same "
    "time axis: the actual price and grid carbon intensity the runs were settled at. Drag to "
    "zoom; all three panels follow."
)
_DELTA_NOTE = (
    f"Savings are measured against {BASELINE} charging (positive: cheaper or cleaner). Regret "
    f"is the gap to the {OPTIMUM} plan computed with perfect foresight (positive: worse than "
    "it). Bar labels give the same difference in percent."
)
_FOOTER = f"""<footer>
<h2>How to read this</h2>
<ul>
<li>Every number comes from the twin: the same cars, trips and signals replayed under each
policy, so differences between columns are due to the policy alone (unless the seeds differ).</li>
<li>Cost and carbon are settled at the actual price and carbon intensity of each slot, not at
the forecasts the controller planned with.</li>
<li>A ready-by target is met when the car's state of charge is within
{SOC_TOLERANCE * 100:g} percentage point of the target at the ready-by time, or at departure if the
driver left earlier. A "—" in the table means the KPI does not apply to that policy (for
example savings of {BASELINE} against itself).</li>
<li>The KPI table and the fleet-load chart cover the whole fleet; the state-of-charge panels
show a sample of cars only.</li>
<li>Charts are interactive: hover for values, drag to zoom, double-click to reset, click a
legend entry to hide a policy.</li>
</ul>
</footer>"""


# -- figures ---------------------------------------------------------------------------------


def _load_figure(results: Mapping[str, SimulationResult], colours: dict[str, str]) -> go.Figure:
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.04, row_heights=[0.56, 0.22, 0.22],
    )
    for policy, res in results.items():
        ts = res.timeseries
        fig.add_trace(
            go.Scatter(
                x=_naive_utc(ts["slot_start"]), y=ts["fleet_kw"].to_numpy(dtype=float),
                name=policy, legendgroup=policy, mode="lines", line={"color": colours[policy], "shape": "hv"},
                hovertemplate="%{y:,.1f} kW<extra>" + html.escape(policy) + "</extra>",
            ),
            row=1, col=1,
        )
    # The signals are the same for every run of one scenario and seed; when they are not
    # (runs with different seeds) each run's signals are drawn, dotted, in its colour.
    signal_runs = _distinct_signals(results)
    for row, column, label, unit_fmt in (
        (2, "price_gbp_per_kwh", "price", "%{y:.4f} GBP/kWh"),
        (3, "carbon_g_per_kwh", "carbon", "%{y:,.0f} gCO2/kWh"),
    ):
        for policy in signal_runs:
            ts = results[policy].timeseries
            shared = len(signal_runs) == 1
            fig.add_trace(
                go.Scatter(
                    x=_naive_utc(ts["slot_start"]), y=ts[column].to_numpy(dtype=float),
                    name=label if shared else f"{label} ({policy})", showlegend=False,
                    mode="lines",
                    line={"color": "#444" if shared else colours[policy], "shape": "hv",
                          "width": 1.2, "dash": "solid" if shared else "dot"},
                    hovertemplate=f"{unit_fmt}<extra>{label if shared else html.escape(policy)}</extra>",
                ),
                row=row, col=1,
            )
    fig.update_yaxes(title_text="fleet power (kW)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="price<br>(GBP/kWh)", row=2, col=1)
    fig.update_yaxes(title_text="carbon<br>(gCO2/kWh)", rangemode="tozero", row=3, col=1)
    fig.update_xaxes(title_text="time (UTC)", row=3, col=1)
    fig.update_layout(
        title={"text": _FIG_LOAD}, template="plotly_white", height=700, hovermode="x unified",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        margin={"t": 90, "r": 20, "l": 70, "b": 50},
    )
    return fig


def _distinct_signals(results: Mapping[str, SimulationResult]) -> list[str]:
    """Policies whose price/carbon series differ from every earlier policy's."""
    kept: list[str] = []
    cols = ["slot_start", "price_gbp_per_kwh", "carbon_g_per_kwh"]
    for policy, res in results.items():
        ts = res.timeseries[cols].reset_index(drop=True)
        if not any(ts.equals(results[k].timeseries[cols].reset_index(drop=True)) for k in kept):
            kept.append(policy)
    return kept


def _sample_cars(results: Mapping[str, SimulationResult], n: int, seed: int) -> list[str]:
    """``n`` cars present in every run, drawn with ``seed``; cars with sessions in every run first."""
    runs = list(results.values())
    common = set(runs[0].vehicles["vehicle_id"])
    for res in runs[1:]:
        common &= set(res.vehicles["vehicle_id"])
    with_sessions = set(common)
    for res in runs:
        with_sessions &= set(res.sessions["vehicle_id"])
    rng = np.random.default_rng(seed)
    preferred = sorted(with_sessions)
    picked = list(rng.choice(preferred, size=min(n, len(preferred)), replace=False)) if preferred else []
    rest = sorted(common - with_sessions)
    if len(picked) < n and rest:
        picked += list(rng.choice(rest, size=min(n - len(picked), len(rest)), replace=False))
    return sorted(str(v) for v in picked)


def _trajectory_with_gaps(res: SimulationResult, vehicle_id: str) -> tuple[pd.Series, np.ndarray]:
    """SoC of one car with a break at each plug-in, so time spent driving is not drawn."""
    traj = soc_trajectory(res, vehicle_id).sort_values("time", kind="stable", ignore_index=True)
    if traj.empty:
        return pd.Series([], dtype="datetime64[ns]"), np.array([])
    times = _naive_utc(traj["time"])
    arrivals = _naive_utc(res.sessions.loc[res.sessions["vehicle_id"] == vehicle_id, "arrival"]).sort_values()
    cuts = np.searchsorted(times.to_numpy(), arrivals.to_numpy()[1:], side="left")
    x = pd.Series(np.insert(times.to_numpy(), cuts, np.datetime64("NaT")))
    y = np.insert(traj["soc"].to_numpy(dtype=float), cuts, np.nan)
    return x, y


def _soc_figure(results: Mapping[str, SimulationResult], colours: dict[str, str],
                sample_vehicles: int, seed: int) -> tuple[go.Figure | None, str]:
    cars = _sample_cars(results, sample_vehicles, seed)
    if not cars:
        reason = ("no cars were requested (sample_vehicles=0)" if sample_vehicles == 0
                  else "no car is present in every run")
        return None, f"State of charge not shown: {reason}."
    ncols = 1 if len(cars) == 1 else 2
    nrows = math.ceil(len(cars) / ncols)
    fig = make_subplots(
        rows=nrows, cols=ncols, shared_xaxes="all", shared_yaxes="all",
        subplot_titles=cars, horizontal_spacing=0.06,
        vertical_spacing=min(0.08, 0.3 / max(nrows - 1, 1)),
    )
    # one legend entry per policy and kind, on the first trace of that kind that has points
    in_legend: set[tuple[str, str]] = set()

    def first(policy: str, kind: str, npoints: int) -> bool:
        if npoints == 0 or (policy, kind) in in_legend:
            return False
        in_legend.add((policy, kind))
        return True

    for i, vid in enumerate(cars):
        row, col = i // ncols + 1, i % ncols + 1
        for policy, res in results.items():
            colour = colours[policy]
            x, y = _trajectory_with_gaps(res, vid)
            fig.add_trace(
                go.Scatter(
                    x=x, y=y, mode="lines", name=policy, legendgroup=policy, line={"color": colour},
                    showlegend=first(policy, "line", len(y)), connectgaps=False,
                    hovertemplate="SoC %{y:.1%}<extra>" + html.escape(policy) + "</extra>",
                ),
                row=row, col=col,
            )
            s = res.sessions[res.sessions["vehicle_id"] == vid]
            ready = _naive_utc(s["ready_by"])
            deadline = _naive_utc(s[["ready_by", "departure"]].min(axis=1))
            hover = [
                f"session {r.session_id}<br>target {r.target_soc:.0%} by {rb:%a %H:%M}"
                f"<br>SoC then {r.soc_at_ready_by:.1%}{' (left early)' if r.left_early else ''}"
                f"<br>{'met' if r.met_target else 'MISSED'}"
                for r, rb in zip(s.itertuples(), ready)
            ]
            fig.add_trace(
                go.Scatter(
                    x=ready, y=s["target_soc"].to_numpy(dtype=float), mode="markers",
                    name=f"{policy}: ready-by target", legendgroup=policy,
                    showlegend=first(policy, "target", len(s)),
                    marker={"symbol": "triangle-up-open", "size": 10, "color": colour,
                            "line": {"width": 2}},
                    text=hover, hovertemplate="%{text}<extra>" + html.escape(policy) + "</extra>",
                ),
                row=row, col=col,
            )
            missed = ~s["met_target"].to_numpy(dtype=bool)
            fig.add_trace(
                go.Scatter(
                    x=deadline[missed], y=s["soc_at_ready_by"].to_numpy(dtype=float)[missed],
                    mode="markers",
                    name=f"{policy}: missed target", legendgroup=policy,
                    showlegend=first(policy, "missed", int(missed.sum())),
                    marker={"symbol": "x", "size": 11, "color": _MISSED_COLOUR,
                            "line": {"width": 1.5, "color": colour}},
                    text=[h for h, m in zip(hover, missed) if m],
                    hovertemplate="%{text}<extra>" + html.escape(policy) + "</extra>",
                ),
                row=row, col=col,
            )
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    fig.update_yaxes(title_text="SoC", col=1)
    fig.update_layout(
        title={"text": _FIG_SOC}, template="plotly_white", height=max(360, 230 * nrows + 140),
        legend={"orientation": "v", "yanchor": "top", "y": 1.0, "x": 1.02, "tracegroupgap": 8},
        margin={"t": 90, "r": 20, "l": 60, "b": 40}, hovermode="closest",
    )
    note = (
        f"{len(cars)} car{'s' if len(cars) != 1 else ''} drawn at random (seed {seed}) from those "
        "in every run. "
        "Lines: state of charge while plugged in (gaps are time away from the charger). "
        "Triangles: each session's target SoC at its ready-by time. Red crosses: sessions that "
        "missed their target, at the SoC reached by ready-by (or departure if earlier)."
    )
    return fig, note


def _delta_figure(comparison: pd.DataFrame, colours: dict[str, str], fig_title: str, prefix: str,
                  reference: str) -> tuple[go.Figure | None, str]:
    """Cost and carbon bars of the ``savings_*`` or ``regret_*`` rows, or a note why not."""
    what = "Savings" if prefix == "savings" else "Regret"
    if reference not in comparison.columns:
        return None, f"{what} not shown: the '{reference}' policy was not run."
    policies = [p for p in comparison.columns if p != reference]
    if not policies:
        return None, f"{what} not shown: '{reference}' is the only policy."
    rows = [f"{prefix}_cost_gbp", f"{prefix}_carbon_kg"]
    absent = [r for r in rows if r not in comparison.index]
    if absent:
        return None, f"{what} not shown: the comparison has no {', '.join(absent)} row."
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["cost (GBP)", "carbon (kg CO2)"], horizontal_spacing=0.12
    )
    for col, (row, pct_row, unit) in enumerate(
        ((rows[0], f"{prefix}_cost_pct", "GBP"), (rows[1], f"{prefix}_carbon_pct", "kg CO2")), start=1
    ):
        values = pd.to_numeric(comparison.loc[row, policies], errors="coerce").to_numpy(dtype=float)
        pct = (
            pd.to_numeric(comparison.loc[pct_row, policies], errors="coerce").to_numpy(dtype=float)
            if pct_row in comparison.index else np.full(len(policies), np.nan)
        )
        labels = ["" if math.isnan(p) else f"{p:+.1f} %" for p in pct]
        fig.add_trace(
            go.Bar(
                x=policies, y=values, marker={"color": [colours[p] for p in policies]},
                text=labels, textposition="outside", cliponaxis=False, showlegend=False,
                customdata=labels,
                hovertemplate="%{x}: %{y:,.2f} " + unit + " (%{customdata})<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_yaxes(title_text=unit, zeroline=True, zerolinecolor="#888", row=1, col=col)
    fig.update_layout(
        title={"text": fig_title}, template="plotly_white", height=380, bargap=0.45,
        margin={"t": 80, "r": 20, "l": 70, "b": 40},
    )
    return fig, ""
