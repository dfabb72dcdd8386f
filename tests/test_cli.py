"""The `twin` command: runs, files written, and clear one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twin.cli import app
from twin.scenario import scenario_json_schema

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


SMALL = "days: 2\nseed: 3\nfleet:\n  - name: c\n    count: 5\n"


def test_run_writes_all_tables_and_prints_kpis(tmp_path):
    res = runner.invoke(app, ["run", str(write(tmp_path, SMALL)), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    for name in ("kpis.json", "sessions.csv", "timeseries.csv", "events.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    meta = json.loads((tmp_path / "out" / "kpis.json").read_text())
    assert meta["policy"] == "uncontrolled" and meta["kpis"]["vehicles"] == 5
    assert "energy_delivered_kwh" in res.output


def test_outputs_are_byte_identical_for_the_same_seed(tmp_path):
    sc = write(tmp_path, SMALL)
    for d in ("a", "b", "c"):
        seed = ["--seed", "4"] if d == "c" else []
        assert runner.invoke(app, ["run", str(sc), "--out", str(tmp_path / d), *seed]).exit_code == 0
    for name in ("kpis.json", "sessions.csv", "timeseries.csv", "events.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "sessions.csv").read_bytes() != (tmp_path / "c" / "sessions.csv").read_bytes()


BAD = {
    "missing field": (
        "fleet:\n  - name: c\n",
        "fleet[0].count: required field is missing",
    ),
    "wrong type": (
        SMALL.replace("count: 5", "count: five"),
        "fleet[0].count: input should be a valid integer",
    ),
    "wrong unit (W for kW)": (
        SMALL + "    vehicle: {max_ac_kw: 7400}\n",
        "fleet[0].vehicle.max_ac_kw: 7400 kW is implausibly large (at most 50); it looks like W",
    ),
    "percent for a fraction": (
        SMALL + "    preferences: {target_soc: 80}\n",
        "fleet[0].preferences.target_soc: target_soc is a fraction 0..1, got 80; did you mean 0.8?",
    ),
    "negative battery": (
        SMALL + "    vehicle: {battery_kwh: -60}\n",
        "fleet[0].vehicle.battery_kwh: input should be greater than 0 (got -60)",
    ),
    "unknown policy in file": (
        SMALL + "policy: smartish\n",
        "policy: unknown policy 'smartish'; choose one of: uncontrolled",
    ),
    "misspelt field": (
        SMALL + "sead: 4\n",
        "sead: unknown field",
    ),
    "naive start": (
        SMALL + "start: 2026-01-12T00:00:00\n",
        "start: start needs a timezone",
    ),
    "not yaml": (
        "fleet: [\n",
        "not valid YAML",
    ),
    "departure window after next plug-in": (
        SMALL + "    behaviour: {departure: {mean: '16:00', earliest: '15:00', latest: '20:00'}}\n",
        "departure.latest must come before the next day's plug_in.earliest",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_scenario_gives_one_clear_line_and_exit_2(tmp_path, case):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_unknown_policy_option(tmp_path):
    res = runner.invoke(app, ["run", str(write(tmp_path, SMALL)), "--policy", "smrt"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: policy: unknown policy 'smrt'; choose one of: uncontrolled, edf, smart, smart_onoff, optimal"


SESSIONS_YAML = "sessions:\n  csv: sessions.csv\n"


@pytest.mark.parametrize(
    "csv, expected",
    [
        ("vehicle_id,arrival,departure,energy_kwh\na,2026-01-12T18:00Z,2026-01-12T07:00Z,10\n",
         "line 2: departure 2026-01-12 07:00:00+00:00 is not after arrival 2026-01-12 18:00:00+00:00"),
        ("vehicle_id,arrival,departure\na,2026-01-12T18:00Z,2026-01-13T07:00Z\n",
         "missing column(s) energy_kwh"),
        ("vehicle_id,arrival,departure,energy_kwh\na,yesterday,2026-01-13T07:00Z,10\n",
         "line 2: arrival: not a time ('yesterday')"),
        ("vehicle_id,arrival,departure,energy_kwh\na,2026-01-12T18:00,2026-01-13T07:00Z,10\n",
         "line 2: arrival: no timezone"),
        ("vehicle_id,arrival,departure,energy_kwh,battery_kwh\na,2026-01-12T18:00Z,2026-01-13T07:00Z,10,-5\n",
         "line 2: battery_kwh must be in (0, 300] kWh (got -5)"),
        ("vehicle_id,arrival,departure,energy_kwh\na,2026-01-12T18:00Z,2026-01-13T07:00Z,10\n"
         "a,2026-01-13T06:00Z,2026-01-13T09:00Z,10\n",
         "line 3: vehicle a arrives at 2026-01-13 06:00:00+00:00 before leaving (line 2)"),
        ("\x00\x01\xff garbage", "session CSV"),
    ],
)
def test_bad_session_csv(tmp_path, csv, expected):
    (tmp_path / "sessions.csv").write_bytes(csv.encode("latin-1"))
    res = runner.invoke(app, ["run", str(write(tmp_path, SESSIONS_YAML)), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert "sessions.csv" in lines[0] and expected in lines[0]


def test_missing_session_csv(tmp_path):
    res = runner.invoke(app, ["run", str(write(tmp_path, SESSIONS_YAML))])
    assert res.exit_code == 2
    assert "session CSV not found" in res.stderr


def test_missing_scenario_file(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2
    assert res.stderr.strip().endswith("nope.yaml: cannot read file: No such file or directory")


def test_committed_json_schema_is_current():
    assert (ROOT / "scenarios" / "scenario.schema.json").read_text() == scenario_json_schema()


def test_console_script_runs_default_scenario(tmp_path):
    """The real `twin` executable with no scenario runs the shipped default."""
    exe = Path(sys.executable).with_name("twin")
    res = subprocess.run([str(exe), "run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "kpis.json").read_text())
    assert meta["scenario"] == "home-fleet-default"
    assert meta["kpis"]["vehicles"] == 200 and meta["kpis"]["vehicle_days"] == 1400
