"""Analysts' notebooks run top to bottom and show what they promise."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"
POLICIES = ("uncontrolled", "smart", "optimal")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def execute(nb: nbformat.NotebookNode, name: str, cwd: Path) -> None:
    """Run ``nb`` in place; a cell error fails the test naming the cell, its source and the error."""
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = [
            (i, c, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"
        ]
        if failed:
            i, cell, err = failed[0]
            where, source, tb = f"cell {i}", cell.source, "\n".join(err.get("traceback", []))
        else:
            where, source, tb = "a cell", "(not found)", exc.traceback
        pytest.fail(
            f"{name}: {where} raised {exc.ename}: {exc.evalue}\n"
            f"--- cell source ---\n{source}\n--- traceback ---\n{ANSI.sub('', tb)}",
            pytrace=False,
        )


def outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def check_policy_comparison(nb: nbformat.NotebookNode) -> None:
    # the KPI table of the first code cell: one row per KPI picked, one column per policy
    tables = [o["data"]["text/html"] for o in outputs(nb)
              if o.output_type == "execute_result" and "<table" in o.get("data", {}).get("text/html", "")]
    kpi = [t for t in tables if "<th>cost_gbp</th>" in t]
    assert kpi, f"no KPI table among {len(tables)} table outputs"
    for name in ("cost_gbp", "carbon_kg", "savings_cost_pct", "regret_objective_pct", *POLICIES):
        assert f"<th>{name}</th>" in kpi[0], name
    # the fleet-load figure, as a Plotly figure output with a line per policy and the price
    figures = [o["data"][PLOTLY_MIME] for o in outputs(nb) if PLOTLY_MIME in o.get("data", {})]
    assert figures, f"no {PLOTLY_MIME} output"
    fig = figures[0]
    assert fig["layout"]["title"]["text"] == "Fleet load by policy"
    traces = {t["name"]: t for t in fig["data"]}
    assert set(traces) == {*POLICIES, "price (GBP/MWh)"}
    for t in traces.values():
        y = t["y"]
        assert (y.get("bdata") if isinstance(y, dict) else len(y)), f"trace {t['name']} has no points"
    # and the session summary of the last cell
    assert any("median_wait_h" in o.get("data", {}).get("text/html", "") for o in outputs(nb)), "no session summary"


# What each notebook must show besides running cleanly; a new notebook gets an entry here.
PROMISES = {"policy_comparison.ipynb": check_policy_comparison}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    assert path.name in PROMISES, f"say in PROMISES what {path.name} must output"
    nb = nbformat.read(path, as_version=4)
    execute(nb, path.name, tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    # every code cell ran, once, top to bottom
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for o in outputs(nb) if o.output_type == "error"]
    PROMISES[path.name](nb)


def test_a_failing_cell_fails_with_its_source_and_error(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("y = x + 1\nraise ValueError(f'bad value {y}')"),
        nbformat.v4.new_code_cell("z = 3"),
    ])
    with pytest.raises(pytest.fail.Exception) as info:
        execute(nb, "broken.ipynb", tmp_path)
    msg = str(info.value)
    assert "broken.ipynb: cell 1 raised ValueError: bad value 2" in msg
    assert "raise ValueError(f'bad value {y}')" in msg
    assert "\x1b[" not in msg
    assert nb.cells[2].execution_count is None
