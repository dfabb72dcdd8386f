"""Shared builders for the scheduler tests: random problems and brute force for on/off cars."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
from hypothesis import strategies as st

from twin.scheduler import FleetProblem
from twin.scheduler._physics import min_soc_floor, step_up

REL = 1e-6


def rel_close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def assert_checked_share(counts: Counter, share: float, at_least: int = 3) -> None:
    """Fail unless ``counts["checked"]`` is at least ``at_least`` and ``share`` of ``counts["attempts"]``.

    Property tests that ``assume()`` away some of their examples count how many examples they
    were called with (``attempts``) and how many got through to the assertions (``checked``),
    so that a generator drifting into mostly rejected cases fails instead of passing on a
    handful of examples.
    """
    attempts, checked = counts["attempts"], counts["checked"]
    print(f"checked {checked} of {attempts} examples ({checked / max(attempts, 1):.0%})")
    assert checked >= max(at_least, share * attempts), (
        f"only {checked} of {attempts} examples were checked (need at least {at_least} and {share:.0%})"
    )


@st.composite
def problems(
    draw,
    *,
    max_cars: int = 4,
    max_slots: int = 12,
    taper: bool | None = None,
    per_car_price: bool | None = None,
    carbon: bool | None = None,
    min_soc: bool | None = None,
    feeder: bool = False,
    mode: str = "modulated",
) -> FleetProblem:
    """A small random fleet; flags fix a feature on/off (``None`` lets hypothesis choose)."""
    n = draw(st.integers(1, max_cars))
    T = draw(st.integers(2, max_slots))
    choose = lambda flag: draw(st.booleans()) if flag is None else flag  # noqa: E731
    use_taper, car_price, use_carbon, use_min = choose(taper), choose(per_car_price), choose(carbon), choose(min_soc)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    slot_hours = draw(st.sampled_from([0.25, 0.5, 1.0]))
    start = rng.uniform(0, T - 1, n)
    end = np.minimum(start + rng.uniform(0.5, T, n), T)
    if draw(st.booleans()):
        start, end = np.floor(start), np.minimum(np.ceil(end), T)
    soc0 = rng.uniform(0.05, 0.9, n)
    target = np.clip(soc0 + rng.uniform(-0.1, 0.7, n), 0.0, 1.0)
    max_kw = rng.uniform(2.0, 11.0, n)
    prices = draw(st.sampled_from(["normal", "ties", "negative"]))
    shape = (n, T) if car_price else (T,)
    if prices == "ties":
        price = rng.choice([0.1, 0.2, 0.3], shape)
    elif prices == "negative":
        price = rng.normal(0.0, 0.15, shape)
    else:
        price = rng.normal(0.2, 0.1, shape)
    kw = dict(
        slot_hours=slot_hours, battery_kwh=rng.uniform(15, 90, n), soc0=soc0, target_soc=target,
        start_slot=start, end_slot=end, max_kw=max_kw, price_gbp_per_kwh=price,
        vehicle_max_kw=max_kw * rng.choice([1.0, 1.5], n), efficiency=rng.uniform(0.85, 1.0, n),
        mode=mode,
    )
    if use_taper:
        kw["taper_knee_soc"] = rng.uniform(0.3, 0.9, n)
        kw["taper_floor_kw"] = rng.uniform(0.5, 3.0, n)
    if use_carbon:
        kw["carbon_g_per_kwh"] = rng.uniform(50, 300, T)
        kw["carbon_weight_gbp_per_kg"] = rng.uniform(0.0, 0.5, n) if draw(st.booleans()) else 0.2
    if use_min:
        kw["min_soc"] = np.clip(soc0 + rng.uniform(-0.1, 0.3, n), 0.0, 1.0)
    if feeder:
        kw["feeder_kw"] = rng.uniform(0.2, 0.8, T) * max_kw.sum()
    if mode == "onoff":
        kw["start_penalty_gbp"] = draw(st.sampled_from([0.0, 0.05, 0.5]))
        kw["min_run_slots"] = draw(st.integers(1, 3))
    return FleetProblem(**kw)


def brute_force_onoff(p: FleetProblem, i: int) -> tuple[float, np.ndarray]:
    """Cheapest on/off pattern for car ``i`` by enumeration, simulating the slot model.

    A car that is on draws its limit at its SoC, except in the slot where it reaches its target;
    runs shorter than ``min_run_slots`` are allowed only at the end of the window or when they
    end by reaching the target; min-SoC slots must follow the as-soon-as-possible trajectory.
    """
    win = np.flatnonzero(p.availability[i] > 0)
    floor = min_soc_floor(p)[i]
    need, R = p.need_kwh[i], int(p.min_run_slots[i])
    best, best_x = np.inf, None
    for pattern in itertools.product((0, 1), repeat=win.size):
        x = np.zeros(p.n_slots)
        level, eff, reached = 0.0, [], None
        for k, t in enumerate(win):
            if pattern[k] and reached is None:
                top = min(step_up(level, p.cap_kwh[i, t], p.taper_alpha[i, t], p.taper_rhs_kwh[i, t], p.has_taper[i]), need)
                x[t], level = top - level, top
                eff.append(1)
                if level >= need - 1e-12:
                    reached = k
            else:
                eff.append(0)
        if (np.cumsum(x) < floor - 1e-9).any():
            continue
        starts, k, ok = 0, 0, True
        while k < len(eff):
            if eff[k]:
                j = k
                while j < len(eff) and eff[j]:
                    j += 1
                starts += 1
                if j - k < R and j != len(eff) and reached != j - 1:
                    ok = False
                k = j
            else:
                k += 1
        if not ok:
            continue
        cost = (
            float((p.unit_cost()[i] * x).sum())
            + p.shortfall_value[i] * (need - x.sum())
            + p.start_penalty_gbp[i] * starts
        )
        if cost < best - 1e-12:
            best, best_x = cost, x
    return best, best_x


@st.composite
def onoff_plans(draw, *, max_cars: int = 3, max_slots: int = 40) -> FleetProblem:
    """On/off fleets shaped like the ``smart`` policy's plans (single-slot runs allowed).

    Fractional plug-in and ready-by, a shared or per-car price, sometimes slots blocked at
    1e4 GBP/kWh (a feeder that cannot take the car), ties, a carbon weight, min-SoC targets,
    taper knees near the top and start penalties from none to dear.
    """
    n = draw(st.integers(1, max_cars))
    T = draw(st.integers(1, max_slots))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    start = rng.uniform(0, T, n) * rng.choice([0.0, 1.0], n, p=[0.2, 0.8])
    end = np.minimum(start + rng.uniform(0.0, T, n), T)
    if draw(st.booleans()):
        start, end = np.floor(start), np.minimum(np.ceil(end), T)
    soc0 = rng.uniform(0.0, 0.95, n)
    shape = (n, T) if draw(st.booleans()) else (T,)
    prices = draw(st.sampled_from(["normal", "ties", "flat", "blocked", "negative"]))
    if prices == "ties":
        price = rng.choice([0.1, 0.2, 0.3], shape)
    elif prices == "flat":
        price = np.full(shape, 0.2)
    elif prices == "negative":
        price = rng.normal(0.0, 0.15, shape)
    else:
        price = rng.normal(0.2, 0.1, shape)
    if prices == "blocked":
        price = np.where(rng.random(shape) < 0.3, 1e4, price)
    max_kw = rng.uniform(1.0, 11.0, n)
    kw = dict(
        slot_hours=float(draw(st.sampled_from([0.25, 0.5, 1.0]))), battery_kwh=rng.uniform(10, 90, n),
        soc0=soc0, target_soc=np.clip(soc0 + rng.uniform(-0.1, 0.8, n), 0.0, 1.0),
        start_slot=start, end_slot=end, max_kw=max_kw, price_gbp_per_kwh=price,
        vehicle_max_kw=max_kw * rng.choice([1.0, 1.5], n), efficiency=rng.uniform(0.85, 1.0, n),
        taper_knee_soc=rng.uniform(0.3, 1.0, n), taper_floor_kw=rng.uniform(0.0, 3.0, n), mode="onoff",
        start_penalty_gbp=rng.choice([0.0, 0.02, 0.5], n), min_run_slots=1,
        shortfall_penalty_gbp_per_kwh=float(draw(st.sampled_from([100.0, 100.0, 0.3]))),
    )
    if draw(st.booleans()):
        kw["min_soc"] = np.clip(soc0 + rng.uniform(-0.2, 0.4, n), 0.0, 1.0)
    if draw(st.booleans()):
        kw["carbon_g_per_kwh"] = rng.uniform(50, 300, T)
        kw["carbon_weight_gbp_per_kg"] = rng.uniform(0.0, 0.5, n) if draw(st.booleans()) else 0.0
    return FleetProblem(**kw)
