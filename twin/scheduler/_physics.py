"""Slot-model physics shared by every solver path.

Levels are cumulative grid energies ``S`` (kWh) since the start of the horizon, so that the SoC
at a slot end is ``soc0 + efficiency * S / battery_kwh``. Charging a slot "at the limit" from
level ``S`` reaches

    f(S) = min(S + cap, (S + A) / (1 + alpha))

where ``cap = a * slot_hours * rate_kw`` and ``alpha``, ``A`` are the taper coefficients of
:attr:`FleetProblem.taper_alpha` and :attr:`FleetProblem.taper_rhs_kwh` (the taper term is
``+inf`` for cars without taper). ``f`` is increasing and its inverse is
``max(S' - cap, (1 + alpha) * S' - A)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: problem.py imports this module
    from .problem import FleetProblem


def step_up(level, cap, alpha, rhs, taper):
    """Level after charging one slot at the limit from ``level`` (kWh); arrays broadcast."""
    plain = level + cap
    with np.errstate(divide="ignore", invalid="ignore"):
        tapered = np.where(taper, (level + rhs) / (1.0 + alpha), np.inf)
    return np.minimum(plain, tapered)


def step_down(level, cap, alpha, rhs, taper):
    """Inverse of :func:`step_up`: the level from which one slot at the limit reaches ``level``."""
    plain = level - cap
    tapered = np.where(taper, (1.0 + alpha) * level - rhs, -np.inf)
    return np.maximum(plain, tapered)


def cumsum_rows(a: np.ndarray) -> np.ndarray:
    """``np.cumsum(a, axis=1)`` for a 2-d float array, bit for bit, faster on column-major data.

    Fancy indexing along the slots (``cap[:, order]``) returns a column-major array, along whose
    rows ``np.cumsum`` is about 20 times slower than adding one contiguous column to the next
    (the same additions in the same order).
    """
    if not a.flags.f_contiguous or a.shape[0] < 64 or a.ndim != 2 or a.dtype != np.float64:
        return np.cumsum(a, axis=1)
    out = np.empty_like(a)
    if a.shape[1]:
        out[:, 0] = a[:, 0]
    for j in range(1, a.shape[1]):
        np.add(out[:, j - 1], a[:, j], out=out[:, j])
    return out


def asap_levels(problem: FleetProblem) -> np.ndarray:
    """Cumulative energy (kWh) at each slot end when charging at the limit from plug-in, (N, T).

    The car stops at its target, so the trajectory is capped at :attr:`FleetProblem.need_kwh`.
    """
    p = problem
    out = np.empty((p.n_cars, p.n_slots))
    level = np.zeros(p.n_cars)
    cap, alpha, rhs, taper, need = p.cap_kwh, p.taper_alpha, p.taper_rhs_kwh, p.has_taper, p.need_kwh
    for t in range(p.n_slots):
        level = np.minimum(step_up(level, cap[:, t], alpha[:, t], rhs[:, t], taper), need)
        out[:, t] = level
    return out


def min_soc_floor(problem: FleetProblem) -> np.ndarray:
    """Lower bound on cumulative energy (kWh) at each slot end from ``min_soc``, (N, T).

    The as-soon-as-possible trajectory capped at the energy that reaches
    ``min(min_soc, target_soc)``.
    """
    need = problem.min_need_kwh
    if not np.any(need > 0):
        return np.zeros((problem.n_cars, problem.n_slots))
    return np.minimum(asap_levels(problem), need[:, None])


@dataclass(frozen=True)
class ForcedPrefix:
    """The part of each plan fixed by ``min_soc``.

    Attributes
    ----------
    energy_kwh : ndarray, shape (N, T)
        Energy fixed in the slots before ``first_free`` (kWh).
    first_free : ndarray of int, shape (N,)
        First slot not fully fixed; ``T`` when every slot is fixed.
    lower_kwh : ndarray, shape (N,)
        Lower bound on the energy of slot ``first_free`` (kWh).
    level_kwh : ndarray, shape (N,)
        Cumulative energy before ``first_free`` (kWh).
    nothing_forced : bool
        True when no car has a min-SoC need (``energy_kwh`` is then a read-only zero view).
    """

    energy_kwh: np.ndarray
    first_free: np.ndarray
    lower_kwh: np.ndarray
    level_kwh: np.ndarray
    nothing_forced: bool = False


def forced_prefix(problem: FleetProblem) -> ForcedPrefix:
    """Split the min-SoC trajectory into fixed slots and one lower-bounded slot per car."""
    p = problem
    n, t = p.n_cars, p.n_slots
    need = p.min_need_kwh
    first, _ = p.window
    if not np.any(need > 0):
        ff = np.where(first >= 0, first, t)
        # Nothing is forced: a read-only broadcast zero instead of an (N, T) allocation.
        return ForcedPrefix(np.broadcast_to(0.0, (n, t)), ff.astype(np.int64), np.zeros(n), np.zeros(n), True)
    asap = asap_levels(p)
    over = asap > need[:, None]
    anyover = over.any(axis=1)
    ff = np.where(anyover, over.argmax(axis=1), t).astype(np.int64)
    prev = np.zeros((n, t))
    prev[:, 1:] = asap[:, :-1]
    inc = asap - prev
    cols = np.arange(t)[None, :]
    energy = np.where(cols < ff[:, None], inc, 0.0)
    level = energy.sum(axis=1)
    lower = np.where(anyover, need - level, 0.0)
    lower = np.maximum(lower, 0.0)
    # Cars that need nothing from min_soc start free at their first available slot.
    nothing = need <= 0
    ff = np.where(nothing, np.where(first >= 0, first, t), ff)
    energy[nothing] = 0.0
    level[nothing] = 0.0
    lower[nothing] = 0.0
    return ForcedPrefix(energy, ff, lower, level)


def cached(problem: FleetProblem, key: str, build):
    """Memoise ``build(problem)`` on the (immutable) problem under ``key``."""
    cache = problem.__dict__.setdefault("_scheduler_cache", {})
    if key not in cache:
        cache[key] = build(problem)
    return cache[key]


def cached_forced_prefix(problem: FleetProblem) -> ForcedPrefix:
    """:func:`forced_prefix` memoised on the (immutable) problem."""
    return cached(problem, "forced", forced_prefix)
