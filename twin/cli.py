"""The ``twin`` command line.

    twin run [SCENARIO] [--out DIR] [--seed N] [--policy NAME]
    twin compare SCENARIO [--policies uncontrolled,smart,optimal] [--report FILE] [--out DIR] [--seed N]
    twin check SCENARIO...
    twin schema [--out FILE]
    twin serve [--host H] [--port N] [--demo]
    twin emulate OEM [--host H] [--port N] [--scenario FILE] [--profile NAME] [--speed X] [--webhook-url URL] [--seed N]
"""

from __future__ import annotations

import math
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from twin.results import KPI_DESCRIPTIONS
from twin.scenario import ScenarioError, scenario_json_schema

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="chargetwin: simulate and control smart EV charging through OEM cloud APIs.",
)
# Output goes to terminals and CI logs alike: lines are never hard-wrapped, and when piped the
# tables get room for their description column.
out_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)
err_console = Console(stderr=True, soft_wrap=True)

# Runs shorter than this finish before a progress bar would help; longer ones show one.
_PROGRESS_AFTER_S = 2.0


def default_scenario_path() -> Path:
    """The scenario shipped inside the package (used when none is given)."""
    return Path(str(resources.files("twin") / "data" / "default.yaml"))


class _LazyProgress:
    """A progress bar that appears only once a run has taken longer than a couple of seconds."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.perf_counter()
        self.bar: Progress | None = None
        self.task = None

    def __call__(self, fraction: float) -> None:
        if self.bar is None:
            if time.perf_counter() - self.t0 < _PROGRESS_AFTER_S:
                return
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), console=err_console, transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=1.0)
        self.bar.update(self.task, completed=fraction)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fail(exc: ScenarioError) -> None:
    for line in str(exc).splitlines():
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _fmt(value: float) -> str:
    if isinstance(value, (bool, int)) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if math.isnan(value):
        return "n/a"
    if abs(value) < 1 and value != 0:
        return f"{value:.4f}"
    return f"{value:,.2f}"


def kpi_table(frame: pd.DataFrame) -> Table:
    """A KPI frame (rows: KPIs, columns: policies) as a console table."""
    from twin.compare import DERIVED_DESCRIPTIONS

    meaning = {**KPI_DESCRIPTIONS, **DERIVED_DESCRIPTIONS}
    table = Table(show_header=True, header_style="bold")
    table.add_column("KPI", no_wrap=True)
    for policy in frame.columns:
        table.add_column(str(policy), justify="right", no_wrap=True)
    table.add_column("meaning", style="dim")
    for name, row in frame.iterrows():
        table.add_row(str(name), *(_fmt(v) for v in row), meaning.get(str(name), ""))
    return table


@app.command()
def run(
    scenario: Annotated[Optional[Path], typer.Argument(help="scenario YAML (default: the shipped home-fleet week)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for kpis.json and the CSV tables")] = Path("out"),
    seed: Annotated[Optional[int], typer.Option(help="random seed (default: the scenario's)")] = None,
    policy: Annotated[Optional[str], typer.Option(help="control policy (default: the scenario's)")] = None,
) -> None:
    """Run a scenario in the twin; print KPIs and write kpis.json, sessions/timeseries/events CSVs."""
    from twin.sim.run import simulate

    path = scenario or default_scenario_path()
    bar = _LazyProgress(f"simulating {path.name}")
    try:
        result = simulate(path, policy, seed=seed, progress=bar)
    except ScenarioError as exc:
        bar.close()
        _fail(exc)
    bar.close()
    files = result.write(out)
    out_console.print(
        f"[bold]{result.scenario}[/] · policy [bold]{result.policy}[/] · seed {result.seed} · "
        f"{result.kpis['vehicles']} cars · {result.kpis['sessions']} sessions · {result.wall_seconds:.1f} s",
        highlight=False,
    )
    out_console.print(kpi_table(pd.DataFrame({result.policy: pd.Series(result.kpis, dtype=object)})))
    out_console.print("wrote " + ", ".join(str(f) for f in files), highlight=False)


@app.command()
def compare(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML")],
    policies: Annotated[str, typer.Option(help="comma-separated policies to run")] = "uncontrolled,smart,optimal",
    report: Annotated[Optional[Path], typer.Option(help="write a self-contained HTML report here")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="also write each policy's tables to DIR/POLICY/")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (default: the scenario's)")] = None,
) -> None:
    """Run a scenario under several policies; print KPIs side by side with savings and regret."""
    from twin.compare import compare as run_compare

    names = [p.strip() for p in policies.split(",") if p.strip()]
    bar = _LazyProgress(f"comparing {scenario.name}")
    try:
        result = run_compare(scenario, names, seed=seed,
                             progress=lambda p, f: bar((names.index(p) + f) / len(names)))
    except ScenarioError as exc:
        bar.close()
        _fail(exc)
    bar.close()
    first = next(iter(result.results.values()))
    out_console.print(
        f"[bold]{first.scenario}[/] · seed {first.seed} · {first.kpis['vehicles']} cars · "
        f"{first.kpis['sessions']} sessions · "
        + " · ".join(f"{p} {r.wall_seconds:.1f} s" for p, r in result.results.items()),
        highlight=False,
    )
    out_console.print(kpi_table(result.table))
    if out is not None:
        for policy, r in result.results.items():
            r.write(out / policy)
        result.table.to_csv(out / "comparison.csv", index_label="kpi")
        out_console.print(f"wrote {out}/<policy>/*.csv and {out}/comparison.csv", highlight=False)
    if report is not None:
        from twin.report import write_report

        path = write_report(result.results, result.table, report)
        out_console.print(f"wrote {path}", highlight=False)


@app.command()
def check(
    scenarios: Annotated[list[Path], typer.Argument(help="scenario YAML files that declare 'checks'")],
    seed: Annotated[Optional[int], typer.Option(help="random seed (default: each scenario's)")] = None,
) -> None:
    """Run scenarios and enforce the KPI thresholds they declare; exit 1 naming each miss."""
    from twin.compare import check_thresholds
    from twin.compare import compare as run_compare
    from twin.scenario import load_scenario

    missed = 0
    for path in scenarios:
        try:
            sc = load_scenario(path)
            if sc.checks is None:
                raise ScenarioError(str(path), ["declares no 'checks' (policies and thresholds) to enforce"])
            t0 = time.perf_counter()
            result = run_compare(sc, sc.checks.policies, seed=seed)
        except ScenarioError as exc:
            _fail(exc)
        misses = check_thresholds(sc, result.table)
        count = sum(len(v) for v in sc.checks.thresholds.values())
        took = time.perf_counter() - t0
        if misses:
            missed += len(misses)
            out_console.print(f"[bold red]FAIL[/] {path} ({count - len(misses)}/{count} thresholds met, {took:.1f} s)",
                              highlight=False)
            for line in misses:
                out_console.print(f"  missed: {line}", highlight=False)
        else:
            out_console.print(f"[bold green]ok[/]   {path} ({count} thresholds met, {took:.1f} s)", highlight=False)
    if missed:
        raise typer.Exit(code=1)


@app.command()
def schema(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Print (or write) the JSON Schema of scenario files."""
    text = scenario_json_schema()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


@app.command()
def emulate(
    oem: Annotated[str, typer.Argument(help="the OEM API to serve: a registered head (smartcar, tesla)")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free one)")] = 8080,
    scenario: Annotated[Optional[Path], typer.Option(
        help="serve this scenario's cars of the OEM and replay their sessions (default: 4 built-in cars)")] = None,
    profile: Annotated[Optional[str], typer.Option(
        help="the scenario's OEM profile to serve (default: its only one with api: OEM)")] = None,
    speed: Annotated[float, typer.Option(help="emulated seconds per wall-clock second")] = 1.0,
    webhook_url: Annotated[Optional[str], typer.Option(
        help="POST each signed webhook delivery here (APIs with webhooks: smartcar)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (default: the scenario's, or 1)")] = None,
) -> None:
    """Serve one OEM's cloud API emulator on HTTP, for testing an integration, until Ctrl-C."""
    from twin.emulate import EmulatorError, serve

    try:
        serve(oem, host=host, port=port, scenario=scenario, profile=profile, speed=speed, webhook_url=webhook_url,
              seed=seed, announce=lambda text: out_console.print(text, markup=False, highlight=False))
    except (ScenarioError, EmulatorError) as exc:
        _fail(exc)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    demo: Annotated[bool, typer.Option(help="start both OEM emulators in-process with a small fleet")] = False,
) -> None:
    """Run the live control server (uvicorn): a SQLite file and an in-process event bus unless
    CHARGETWIN_DATABASE_URL / CHARGETWIN_BUS_URL say otherwise (see the README)."""
    import uvicorn

    from server.app import create_app
    from server.settings import Settings, SettingsError

    try:
        # redirects (OAuth callbacks) go to where this server listens unless the environment says
        settings = Settings(demo=demo) if "CHARGETWIN_PUBLIC_URL" in os.environ else Settings(
            demo=demo, public_url=f"http://{host}:{port}")
        application = create_app(settings)
    except (SettingsError, ValueError) as exc:
        _fail(exc)
    if demo:
        from server.demo import DEMO_EMAIL, DEMO_PASSWORD

        out_console.print(f"chargetwin demo on http://{host}:{port} (API docs: http://{host}:{port}/docs)\n"
                          f"  sign in: POST /auth/token username={DEMO_EMAIL} password={DEMO_PASSWORD}\n"
                          f"  emulated time runs {settings.demo_speed:g}x; four cars plug in over the first minutes",
                          markup=False, highlight=False)
    uvicorn.run(application, host=host, port=port, log_level="info")


if __name__ == "__main__":  # pragma: no cover
    app()
