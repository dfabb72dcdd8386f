"""Peak against savings for a range of anti-herding and early-departure settings.

Runs ``scenarios/home_agile.yaml`` (or SCENARIO) under ``uncontrolled`` and under ``smart`` with
each setting below layered on the file's own ``control`` and ``site`` sections, and prints a
Markdown table: cost saving versus uncontrolled, the fleet's slot-average peak, the largest
slot-to-slot ramp and the ready-by share over all sessions.

    python examples/herding_tradeoff.py [SCENARIO] [--jobs 2]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

import twin
from twin.scenario import parse_scenario

#: (label, control overrides, site overrides); None removes a setting from the file
SETTINGS = [
    ("plan to the declared ready-by, no load price", {"departure_quantile": 0.0, "capacity_price_gbp_per_kwh": 0.0},
     {"capacity_kw": None}),
    ("departure learning (q 0.01, prior 90 min)", {"capacity_price_gbp_per_kwh": 0.0}, {"capacity_kw": None}),
    ("peak weight 0.05 GBP/kWh", {"peak_weight_gbp_per_kwh": 0.05, "capacity_price_gbp_per_kwh": 0.0},
     {"capacity_kw": None}),
    ("peak weight 0.10 GBP/kWh", {"peak_weight_gbp_per_kwh": 0.10, "capacity_price_gbp_per_kwh": 0.0},
     {"capacity_kw": None}),
    ("peak weight 0.15 GBP/kWh", {"peak_weight_gbp_per_kwh": 0.15, "capacity_price_gbp_per_kwh": 0.0},
     {"capacity_kw": None}),
    ("capacity 3,600 kW, no departure learning", {"departure_quantile": 0.0}, {"capacity_kw": 3600}),
    ("capacity 3,400 kW", {}, {"capacity_kw": 3400}),
    ("capacity 3,600 kW (the file)", {}, {}),
    ("capacity 3,700 kW, prior 120 min", {"departure_prior_min": 120}, {"capacity_kw": 3700}),
]


def _run(args: tuple[str, str, dict, dict]) -> tuple[str, dict]:
    path, policy, control, site = args
    raw = yaml.safe_load(Path(path).read_text())
    for section, changes in (("control", control), ("site", site)):
        part = dict(raw.get(section) or {})
        for k, v in changes.items():
            if v is None:
                part.pop(k, None)
            else:
                part[k] = v
        raw[section] = part
    result = twin.simulate(parse_scenario(raw, source=path, base_dir=Path(path).parent), policy)
    return policy, result.kpis


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default="scenarios/home_agile.yaml")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    jobs = [(a.scenario, "uncontrolled", {}, {})] + [(a.scenario, "smart", c, s) for _, c, s in SETTINGS]
    with ProcessPoolExecutor(a.jobs) as pool:
        out = list(pool.map(_run, jobs))
    base = out[0][1]
    print("| smart setting | cost saving | fleet peak kW | ramp kW | ready-by, all sessions |")
    print("| --- | --- | --- | --- | --- |")
    rows = [("uncontrolled", base)] + [(label, k) for (label, _, _), (_, k) in zip(SETTINGS, out[1:])]
    for label, k in rows:
        saving = 100.0 * (base["cost_gbp"] - k["cost_gbp"]) / base["cost_gbp"]
        print(f"| {label} | {saving:.1f} % | {k['peak_fleet_kw']:,.0f} | {k['ramp_fleet_kw_max']:,.0f} | "
              f"{100 * k['ready_by_met_share']:.2f} % ({k['sessions'] - round(k['ready_by_met_share'] * k['sessions'])} "
              f"of {k['sessions']:,} short) |")


if __name__ == "__main__":
    main()
