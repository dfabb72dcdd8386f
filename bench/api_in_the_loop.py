"""The API in the loop: what routing every OEM call through the heads and the emulators costs.

Runs ``scenarios/api_in_the_loop.yaml`` (200 cars on the Smartcar and Tesla Fleet APIs, 2 days,
hostile clouds) under ``smart`` twice per repeat, alternating: once direct (the controller calls
the simulated clouds) and once over HTTP (each call is an HTTP request through the OEM's head to
its emulator over ``httpx.ASGITransport``, in virtual time, on the asyncio host). It reports the
wall times, the HTTP/direct ratio (the figure to compare between machines), HTTP requests per
wall second, and checks that both runs sent the same commands and got the same KPIs.

    python bench/api_in_the_loop.py              # 3 repeats
    python bench/api_in_the_loop.py --repeats 1
    python bench/api_in_the_loop.py --profile    # where the HTTP run spends its time
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import yaml

from twin.sim.run import simulate

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "api_in_the_loop.yaml"


def scenarios() -> tuple[dict, dict]:
    http = yaml.safe_load(SCENARIO.read_text())
    direct = copy.deepcopy(http)
    direct["oem_transport"] = "direct"
    return direct, http


def commands(result) -> list[tuple]:
    ev = result.events[result.events["kind"] == "command"]
    return list(zip((ev["time"] - result.events["time"].iloc[0]).dt.total_seconds().round(3), ev["vehicle_id"],
                    ev["detail"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile one HTTP run (cProfile, top 25)")
    args = parser.parse_args()
    direct, http = scenarios()
    if args.profile:
        import cProfile
        import pstats

        cProfile.runctx("simulate(http, 'smart')", globals(), {"http": http, "simulate": simulate}, "/tmp/api.prof")
        pstats.Stats("/tmp/api.prof").sort_stats("cumulative").print_stats(25)
        return
    walls = {"direct": [], "http": []}
    same = True
    for _ in range(args.repeats):
        runs = {}
        for name, sc in (("direct", direct), ("http", http)):
            t = time.perf_counter()
            runs[name] = simulate(sc, "smart")
            walls[name].append(time.perf_counter() - t)
        a, b = runs["direct"], runs["http"]
        kpis = [k for k in a.kpis if k != "wall_seconds"]
        same &= commands(a) == commands(b) and all(
            a.kpis[k] == b.kpis[k] or a.kpis[k] != a.kpis[k] for k in kpis)
    ratios = [h / d for h, d in zip(walls["http"], walls["direct"])]
    requests = int(b.kpis["oem_calls"])
    print(f"scenario: {SCENARIO.name} (200 cars, 2 days, smart), {args.repeats} repeat(s), interleaved")
    print(f"  direct        median {statistics.median(walls['direct']):6.1f} s   {walls['direct']}")
    print(f"  over HTTP     median {statistics.median(walls['http']):6.1f} s   {walls['http']}")
    print(f"  HTTP / direct median {statistics.median(ratios):6.2f} x   (per repeat: "
          + ", ".join(f"{r:.2f}" for r in ratios) + ")")
    print(f"  OEM calls {requests:,} -> {requests / statistics.median(walls['http']):,.0f} HTTP requests per wall second")
    print(f"  same commands and KPIs as the direct run: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
