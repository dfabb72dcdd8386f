"""Scheduler benchmark: fast exact paths against their baselines, run side by side.

    python bench/scheduler.py            # full run (several minutes: Pyomo and the feeder LPs at 10k)
    python bench/scheduler.py --quick    # smoke run on small fleets

Instances come from :func:`twin.scheduler.example_fleet` with fixed seeds: 96 fifteen-minute
slots, an Agile-like shared price, plug-in 18:00 +- 2 h, ready-by 07:00 +- 1 h, 40-100 kWh,
7-11 kW, a taper from SoC 0.8 (so cars aiming above it have a binding taper) and, for the
feeder cases, a flat limit that the independent optimum exceeds in ten slots. Each fast answer
is checked against its baseline's objective to 1e-6 relative.

The last case is the ``smart`` policy's plan per plug-in: one on/off car, 20-40 half-hour
slots, a start penalty, sometimes slots priced out by a feeder. It times whole calls
(``solve(FleetProblem(...))``, construction included) with the per-car programme against the
same calls with the programme vectorised over cars, and checks that the plans are identical.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from twin.scheduler import FleetProblem, evaluate_plan, example_fleet, plan_violations, solve  # noqa: E402
from twin.scheduler.onoff import _solve_block  # noqa: E402

# Relative agreement required between a fast path's objective and its baseline's.
REL_TOL = 1e-6


def timed(fn, *args):
    # Each case starts from a collected heap: Pyomo's 10k-car models leave millions of objects.
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def agree(a, b) -> bool:
    return abs(a - b) <= REL_TOL * max(1.0, abs(a), abs(b))


def smart_like_plans(count: int, seed: int) -> list[dict]:
    """``FleetProblem`` arguments shaped like the smart policy's plan of one plug-in.

    Matched to the plans of ``bench/twin_speed.py``'s smart run (1,000 cars, a week): 15-35
    slots to ready-by, SoC 0.3-0.78 at plug-in towards 0.8 (now and then 0.9), so a car needs
    a few slots' charge (median 2.5, up to 15).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        T = int(rng.integers(15, 36))
        price = rng.normal(0.2, 0.08, T)
        if rng.random() < 0.2:
            price = np.where(rng.random(T) < 0.3, 1e4, price)  # slots a feeder cannot take
        vehicle_kw = float(rng.choice([7.4, 11.0]))
        out.append(dict(
            slot_hours=0.5, battery_kwh=[float(rng.uniform(40.0, 100.0))], soc0=[float(rng.uniform(0.3, 0.78))],
            target_soc=[float(rng.choice([0.8, 0.9], p=[0.9, 0.1]))], min_soc=[0.2], start_slot=[float(rng.uniform(0.0, 1.0))],
            end_slot=[float(T - rng.uniform(0.0, 1.0))], max_kw=[min(7.0, vehicle_kw)], vehicle_max_kw=[vehicle_kw],
            efficiency=[0.9], taper_knee_soc=[float(rng.uniform(0.8, 0.85))], taper_floor_kw=[1.5],
            price_gbp_per_kwh=price, carbon_g_per_kwh=rng.uniform(50.0, 300.0, T), carbon_weight_gbp_per_kg=0.0,
            mode="onoff", start_penalty_gbp=0.02, min_run_slots=1, vehicle_ids=["ev"],
        ))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small fleets, seconds not minutes")
    args = ap.parse_args(argv)
    q = args.quick
    rows = []
    targets = []

    def row(case, fast_name, fast_s, base_name, base_s, ok, note=""):
        ratio = f"{base_s / fast_s:8.1f}x" if base_s and fast_s else "        "
        rows.append((case, fast_name, fast_s, base_name, base_s, ratio, ok, note))

    # Warm up imports, numpy and HiGHS so that the first timed case is not charged for them.
    solve(example_fleet(200, seed=99), "auto")
    solve(example_fleet(50, seed=99, feeder=True), "auto")

    # ---- independent, modulated: Pyomo vs the fast path
    for n in ((200, 1000) if q else (1000, 10000)):
        p = example_fleet(n, seed=1)
        fast, tf = timed(solve, p, "auto")
        ref, tr = timed(solve, p, "pyomo")
        ok = agree(fast.objective_total_gbp, ref.objective_total_gbp) and not plan_violations(p, fast.energy_kwh)
        dp = int((fast.car_method == "independent(taper dp)").sum())
        row(f"independent N={n}", fast.method, tf, "pyomo+highs", tr, ok, f"{dp} cars via taper DP")
    n_big = 10000 if q else 100000
    # A fresh process pays ~1.5 s of first-touch page faults on its first 100k-car arrays; warm
    # the allocator with another fleet of the same size, then time a fresh instance.
    solve(example_fleet(n_big, seed=2), "auto")
    p = example_fleet(n_big, seed=1)
    fast, tf = timed(solve, p, "auto")
    ok = not plan_violations(p, fast.energy_kwh)
    row(f"independent N={n_big}", fast.method, tf, "-", None, ok, "limits checked")
    if not q:
        targets.append(("100k independent < 1 s", tf < 1.0, tf, "s"))

    # ---- feeder limit: min-cost flow + levels (decomposition as fallback) vs the plain highspy LP
    for n_f in ((300,) if q else (1000, 10000)):
        p = example_fleet(n_f, seed=3, feeder=True)
        fast, tf = timed(solve, p, "feeder")
        base, tb = timed(solve, p, "highs")
        ok = agree(fast.objective_total_gbp, base.objective_total_gbp) and not plan_violations(p, fast.energy_kwh)
        binding = int(np.isclose(fast.energy_kwh.sum(axis=0) / p.slot_hours, p.feeder_kw, rtol=1e-6).sum())
        row(f"feeder N={n_f}", fast.method, tf, "highspy LP", tb, ok, f"limit binds in {binding} slots")
        if n_f >= 10000:
            auto, ta = timed(solve, p, "auto")
            row(f"feeder N={n_f}", f"auto -> {auto.method}", ta, "-", None,
                agree(auto.objective_total_gbp, base.objective_total_gbp))
            targets.append(("10k with feeder < 5 s", min(ta, tf) < 5.0, min(ta, tf), "s"))
    if not q:
        # The fast path alone at 100k (the LP would take the better part of an hour).
        p = example_fleet(100000, seed=3, feeder=True)
        fast, tf = timed(solve, p, "auto")
        row("feeder N=100000", fast.method, tf, "-", None, not plan_violations(p, fast.energy_kwh), "limits checked")

    # ---- on/off with start penalty: the per-car programme vs per-car HiGHS MILPs
    # (the cars are independent, so the fleet MILP splits into one small MILP per car; one
    # fleet-wide MILP is far slower). The baseline runs on the first cars of the fleet.
    n_o = 100 if q else 1000
    p = example_fleet(n_o, seed=5, mode="onoff", start_penalty_gbp=0.15, min_run_slots=2)
    fast, tf = timed(solve, p, "auto")
    n_ob = 10 if q else 30
    t0 = time.perf_counter()
    base_obj = np.array([solve(p.subset(np.array([i])), "highs").objective_total_gbp for i in range(n_ob)])
    tb = time.perf_counter() - t0
    ok = all(agree(a, b) for a, b in zip(fast.objective_gbp[:n_ob], base_obj))
    ok &= not plan_violations(p, fast.energy_kwh)
    row(f"onoff N={n_o}", fast.method, tf, "highspy MILPs", tb * n_o / n_ob, ok,
        f"{int(fast.starts.sum())} starts; MILP timed on {n_ob} cars, scaled to {n_o}")
    if not q:
        targets.append(("onoff 1k with start penalty < 10 s", tf < 10.0, tf, "s"))

    # ---- one on/off car per call, as the smart policy plans each plug-in
    n_s = 500 if q else 2000
    plans = smart_like_plans(n_s, seed=11)
    for kw in plans[:20]:
        solve(FleetProblem(**kw))
    gc.collect()
    t0 = time.perf_counter()
    fast = [solve(FleetProblem(**kw)) for kw in plans]
    tf = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = []
    for kw in plans:
        p = FleetProblem(**kw)
        base.append(evaluate_plan(p, _solve_block(p, np.arange(p.n_cars)), method="onoff_dp"))
    tb = time.perf_counter() - t0
    ok = all(np.array_equal(a.energy_kwh, b.energy_kwh) for a, b in zip(fast, base))
    row(f"onoff N=1 x{n_s}", fast[0].method, tf, "block DP", tb, ok,
        f"{1e3 * tf / n_s:.3f} ms per call vs {1e3 * tb / n_s:.3f} ms; identical plans")
    targets.append(("single-car on/off call < 0.5 ms", tf / n_s < 0.5e-3, 1e3 * tf / n_s, "ms"))

    w = max(len(r[1]) for r in rows)
    print(f"{'case':<22} {'fast path':<{w}} {'fast s':>8}  {'baseline':<13} {'base s':>8} {'ratio':>9}  {'=base':<5} note")
    for case, fn, fs, bn, bs, ratio, ok, note in rows:
        bs_txt = f"{bs:8.3f}" if bs is not None else "       -"
        print(f"{case:<22} {fn:<{w}} {fs:8.3f}  {bn:<13} {bs_txt} {ratio}  {'yes' if ok else 'NO':<5} {note}")
    print()
    if targets:
        print("targets:")
        for name, met, t, unit in targets:
            print(f"  {name:<36} {t:7.3f} {unit:<2}  {'met' if met else 'MISSED'}")
    all_ok = all(r[6] for r in rows)
    print(f"\nall fast answers equal their baselines to {REL_TOL:g} relative: {'yes' if all_ok else 'NO'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
