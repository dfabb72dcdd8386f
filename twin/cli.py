"""The ``twin`` command line.

    twin run [SCENARIO] [--out DIR] [--seed N] [--policy NAME]
    twin schema [--out FILE]
"""

from __future__ import annotations

import math
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from twin.results import KPI_DESCRIPTIONS, SimulationResult
from twin.scenario import ScenarioError, scenario_json_schema

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="chargetwin: simulate and control smart EV charging through OEM cloud APIs.",
)
out_console = Console()
err_console = Console(stderr=True)

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
    if isinstance(value, bool) or isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "n/a"
    if abs(value) < 1 and value != 0:
        return f"{value:.4f}"
    return f"{value:,.2f}"


def kpi_table(results: list[SimulationResult]) -> Table:
    """KPIs of one or more runs side by side."""
    table = Table(show_header=True, header_style="bold")
    table.add_column("KPI")
    for r in results:
        table.add_column(r.policy, justify="right")
    table.add_column("meaning", style="dim")
    for name in results[0].kpis:
        table.add_row(name, *(_fmt(r.kpis[name]) for r in results), KPI_DESCRIPTIONS.get(name, ""))
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
    out_console.print(kpi_table([result]))
    out_console.print("wrote " + ", ".join(str(f) for f in files), highlight=False)


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


if __name__ == "__main__":  # pragma: no cover
    app()
