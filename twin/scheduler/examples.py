"""Realistic synthetic fleets for benchmarks, tests and notebooks.

One day of 96 fifteen-minute slots starting at 12:00 local time, an Agile-like import price
(cheap overnight, peak 16:00-19:00), a carbon intensity that is lower overnight, and home
charging sessions plugged in around 18:00 and needed around 07:00.
"""

from __future__ import annotations

import numpy as np

from .independent import solve_independent_modulated
from .problem import FleetProblem

__all__ = ["agile_like_day", "example_fleet", "feeder_for"]

#: Slot length of the example day (h).
SLOT_HOURS = 0.25
#: Slots in the example day (24 h of 15 minutes).
N_SLOTS = 96
#: Local clock hour of slot 0; the day runs 12:00 -> 12:00 so that one night is contiguous.
FIRST_HOUR = 12.0


def _hour(t: np.ndarray) -> np.ndarray:
    return (FIRST_HOUR + t * SLOT_HOURS) % 24.0


def agile_like_day(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Price (GBP/kWh) and carbon intensity (gCO2/kWh) for the 96 slots of the example day."""
    hour = _hour(np.arange(N_SLOTS) + 0.5)
    # Base day rate around 0.22 GBP/kWh, a 16:00-19:00 peak near 0.38, a night trough near
    # 0.08 from 00:00 to 05:00 with ramps either side; noise keeps slots from tying.
    price = 0.22 + 0.16 * ((hour >= 16) & (hour < 19))
    night = np.clip(np.minimum(hour - 21.0 + 24.0 * (hour < 12), 8.5 - hour + 24.0 * (hour > 12)) / 3.0, 0.0, 1.0)
    night = np.where((hour >= 21) | (hour < 8.5), night, 0.0)
    price = price - 0.14 * night
    price = price + rng.normal(0.0, 0.012, N_SLOTS)
    carbon = 230.0 - 90.0 * night + 40.0 * ((hour >= 16) & (hour < 20)) + rng.normal(0.0, 8.0, N_SLOTS)
    return price, carbon


def example_fleet(
    n_cars: int,
    *,
    seed: int = 0,
    mode: str = "modulated",
    carbon_weight_gbp_per_kg: float = 0.0,
    start_penalty_gbp: float = 0.0,
    min_run_slots: int = 1,
    min_soc: bool = False,
    feeder: bool = False,
) -> FleetProblem:
    """A fleet of ``n_cars`` home-charging sessions over the example day.

    Plug-in at 18:00 +- 2 h and ready-by 07:00 +- 1 h (uniform, continuous, so the first and
    last slots are partly available), batteries 40-100 kWh, chargers 7-11 kW, SoC 0.2-0.6 at
    plug-in and targets 0.7-0.9, with a taper from SoC 0.8 to a floor of 1-2 kW (cars aiming
    above 0.8 have a binding taper). With ``feeder=True`` a feeder limit binds in about ten
    of the 96 slots of the independent optimum (see :func:`feeder_for`).
    """
    rng = np.random.default_rng(seed)
    price, carbon = agile_like_day(rng)
    plug = (18.0 + rng.uniform(-2.0, 2.0, n_cars) - FIRST_HOUR) / SLOT_HOURS
    ready = (24.0 + 7.0 + rng.uniform(-1.0, 1.0, n_cars) - FIRST_HOUR) / SLOT_HOURS
    battery = rng.uniform(40.0, 100.0, n_cars)
    vehicle_kw = rng.choice([7.4, 11.0], n_cars, p=[0.4, 0.6])
    charger_kw = rng.uniform(7.0, 11.0, n_cars)
    problem = FleetProblem(
        slot_hours=SLOT_HOURS,
        battery_kwh=battery,
        soc0=rng.uniform(0.2, 0.6, n_cars),
        target_soc=rng.uniform(0.7, 0.9, n_cars),
        min_soc=rng.uniform(0.25, 0.4, n_cars) if min_soc else 0.0,
        start_slot=plug,
        end_slot=ready,
        max_kw=np.minimum(charger_kw, vehicle_kw),
        vehicle_max_kw=vehicle_kw,
        efficiency=rng.uniform(0.88, 0.93, n_cars),
        taper_knee_soc=0.8,
        taper_floor_kw=rng.uniform(1.0, 2.0, n_cars),
        price_gbp_per_kwh=price,
        carbon_g_per_kwh=carbon,
        carbon_weight_gbp_per_kg=carbon_weight_gbp_per_kg,
        mode=mode,
        start_penalty_gbp=start_penalty_gbp,
        min_run_slots=min_run_slots,
    )
    if feeder:
        problem = feeder_for(problem)
    return problem


def feeder_for(problem: FleetProblem, binding_slots: int = 10) -> FleetProblem:
    """``problem`` with a flat feeder limit that the independent optimum exceeds in
    ``binding_slots`` slots (the limit is the next-highest slot load, in kW)."""
    x, ok, _ = solve_independent_modulated(problem)
    load_kw = x.sum(axis=0) / problem.slot_hours
    limit = np.sort(load_kw)[::-1][binding_slots]
    return _replace(problem, feeder_kw=np.full(problem.n_slots, limit))


def _replace(problem: FleetProblem, **changes) -> FleetProblem:
    import dataclasses

    fields = {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)}
    fields.update(changes)
    return FleetProblem(**fields)
