"""Problem and result containers of the charging scheduler.

The slot model
--------------
``N`` cars share a horizon of ``T`` slots of ``slot_hours`` hours. For car ``i`` and slot ``t``
the decision is ``x[i, t]``, the grid-side energy drawn in that slot (kWh). With
``S[i, t] = x[i, 0] + ... + x[i, t]`` the state of charge at the end of slot ``t`` is

    soc[i, t + 1] = soc0[i] + efficiency[i] * S[i, t] / battery_kwh[i]

and every plan obeys, for each car and slot,

* window: ``a[i, t]``, the overlap of ``[start_slot, end_slot)`` with ``[t, t + 1)``, scales
  every limit, so a car only charges while plugged in;
* power: ``x <= a * slot_hours * max_kw`` (``max_kw`` is the grid-side limit, the smaller of the
  car's and the charger's rating; it is never taken above ``vehicle_max_kw``);
* taper, imposed at the end-of-slot SoC so that a plan is always physically feasible:
  ``x <= a * slot_hours * (vehicle_max_kw - b * (soc[t + 1] - taper_knee_soc))`` with
  ``b = (vehicle_max_kw - taper_floor_kw) / (1 - taper_knee_soc)``; there is no taper when the
  knee is at 1 or the floor is at or above ``vehicle_max_kw``;
* SoC never exceeds ``target_soc`` (the car's charge limit);
* min SoC: the cumulative energy at every slot end is at least the as-soon-as-possible
  trajectory (charging at the limit from ``start_slot``) capped at the energy that brings the car
  to ``min(min_soc, target_soc)``.

The objective is ``sum(price * x) + weight * sum(carbon * x) / 1000 + penalty * shortfall
+ start_penalty * starts`` where the shortfall is ``(target_soc - soc at end_slot) *
battery_kwh`` in battery kWh and starts (off→on transitions, the first on-slot counting as one)
are only counted for on/off cars.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._blocks import _map_blocks
from ._physics import min_soc_floor

__all__ = ["FleetProblem", "Plan", "MODES", "evaluate_plan", "plan_violations"]

#: Control modes: continuous power (``"modulated"``) or start/stop at the car's own rate.
MODES = ("modulated", "onoff")

# 100 GBP per battery kWh short is two orders of magnitude above any retail or wholesale price
# (Agile caps at 1 GBP/kWh), so the optimiser only ever falls short when the target cannot be
# reached, and then it charges as fast as it can.
DEFAULT_SHORTFALL_PENALTY_GBP_PER_KWH = 100.0

# Tolerance (kWh) used when checking a plan against its limits: plans are produced by floating
# point algorithms and by LP solvers whose feasibility tolerance is 1e-7 on scaled rows.
FEASIBILITY_TOL_KWH = 1e-6


def _as_float_vector(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},) (one value per car), got shape {arr.shape}")
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        where = _where(idx, arr.ndim)
        raise ValueError(f"{name}{where} is {arr[tuple(idx)]!r}; values must be finite numbers")


def _where(idx: Sequence[int], ndim: int) -> str:
    if ndim == 0:
        return ""
    if ndim == 1:
        return f"[{idx[0]}]"
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _car_label(ids: tuple | None, i: int) -> str:
    if ids is None:
        return f"car {i}"
    return f"car {i} (vehicle_id {ids[i]!r})"


# Per-car float fields, in the order they are validated and reported.
_VECTOR_FIELDS = (
    "battery_kwh", "soc0", "target_soc", "start_slot", "end_slot", "max_kw", "min_soc",
    "vehicle_max_kw", "efficiency", "taper_knee_soc", "taper_floor_kw", "start_penalty_gbp",
)
# Closed bounds per field that together say what :func:`_explain_bad_vectors` checks
# (``end_slot``'s upper bound is the horizon, set per problem). For floats ``v > 0`` is exactly
# ``v >= 5e-324``, the smallest positive double, and "finite" is within +-1.8e308, so NaN and
# infinities fail the test too.
_TINY = float(np.nextafter(0.0, 1.0))
_BIG = float(np.finfo(float).max)
_VECTOR_LO = np.array([_TINY, 0, 0, 0, -_BIG, 0, 0, _TINY, _TINY, 0, 0, 0], dtype=float)[:, None]
_VECTOR_HI = np.array([_BIG, 1, 1, _BIG, _BIG, _BIG, 1, _BIG, 1, 1, _BIG, _BIG], dtype=float)[:, None]


def _explain_bad_vectors(vec: dict, ids: tuple | None, t: int) -> None:
    """Raise the ``ValueError`` naming the first field and car that break a bound."""
    for name, arr in vec.items():
        _check_finite(name, arr)

    def check(name: str, ok: np.ndarray, msg: str) -> None:
        bad = np.flatnonzero(~ok)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name}[{i}] = {vec[name][i]!r} for {_car_label(ids, i)}: {msg}")

    check("battery_kwh", vec["battery_kwh"] > 0, "battery capacity must be > 0 kWh")
    for name in ("soc0", "target_soc", "min_soc", "taper_knee_soc"):
        check(name, (vec[name] >= 0) & (vec[name] <= 1), "must be a fraction in [0, 1]")
    check("max_kw", vec["max_kw"] >= 0, "power limit must be >= 0 kW")
    check("vehicle_max_kw", vec["vehicle_max_kw"] > 0, "the car's AC limit must be > 0 kW")
    check("taper_floor_kw", vec["taper_floor_kw"] >= 0, "taper floor must be >= 0 kW")
    check("efficiency", (vec["efficiency"] > 0) & (vec["efficiency"] <= 1), "efficiency must be in (0, 1]")
    check("start_slot", vec["start_slot"] >= 0, "plug-in must not be before the first slot (0)")
    check("end_slot", vec["end_slot"] <= t, f"ready-by is beyond the horizon of {t} slots")
    check("end_slot", vec["end_slot"] >= vec["start_slot"], "ready-by (end_slot) is before plug-in (start_slot)")
    check("start_penalty_gbp", vec["start_penalty_gbp"] >= 0, "start penalty must be >= 0 GBP")
    raise AssertionError("a per-car value is out of bounds but no check names it")


@dataclass(frozen=True, eq=False)
class FleetProblem:
    """A fleet charging problem in slot units (see the module docstring for the model).

    Scalars are broadcast to one value per car on construction; every array is converted to a
    read-only float ``numpy`` array and checked, raising ``ValueError`` that names the field and
    the car (and slot) at fault.

    Parameters
    ----------
    slot_hours : float
        Slot length (h), e.g. 0.25 for 15-minute slots.
    battery_kwh : array_like, shape (N,)
        Usable battery capacity (kWh), > 0.
    soc0 : array_like, shape (N,)
        State of charge when the plan starts (fraction 0..1).
    target_soc : array_like, shape (N,)
        Charge limit and target at ``end_slot`` (fraction 0..1).
    start_slot, end_slot : array_like, shape (N,)
        Plug-in and ready-by times as positions in slot units (2.5 is half way into slot 2),
        ``0 <= start_slot <= end_slot <= T``.
    max_kw : array_like, shape (N,)
        Maximum grid-side draw (kW): the smaller of the car's AC rating and the charger's.
    price_gbp_per_kwh : array_like, shape (T,) or (N, T)
        Import price per slot (GBP/kWh), shared or per car; may be negative.
    min_soc : array_like, shape (N,), optional
        SoC (fraction) to reach as soon as possible regardless of price; default 0.
    vehicle_max_kw : array_like, shape (N,), optional
        The car's own AC limit (kW) used by the taper; default ``max_kw``.
    efficiency : array_like, shape (N,), optional
        Battery kWh gained per grid kWh, in (0, 1]; default 0.9.
    taper_knee_soc : array_like, shape (N,), optional
        SoC (fraction) above which the car's limit falls linearly; default 1.0 (no taper).
    taper_floor_kw : array_like, shape (N,), optional
        The car's limit (kW) at 100 % SoC; default 0.
    carbon_g_per_kwh : array_like, shape (T,) or (N, T), optional
        Grid carbon intensity per slot (gCO2/kWh).
    carbon_weight_gbp_per_kg : float or array_like, shape (N,), optional
        Value of a kilogram of CO2 (GBP/kg) in the objective; default 0.
    feeder_kw : array_like, shape (T,), optional
        Limit on the fleet's total average power per slot (kW), already net of uncontrollable
        load; ``None`` for no limit.
    mode : str or sequence of str, optional
        ``"modulated"`` (continuous power) or ``"onoff"`` (start/stop at the car's own rate),
        per car or for all.
    start_penalty_gbp : float or array_like, shape (N,), optional
        Cost of each start of an on/off car (GBP).
    min_run_slots : int or array_like, shape (N,), optional
        Minimum length of a run of an on/off car (slots), >= 1.
    shortfall_penalty_gbp_per_kwh : float, optional
        Penalty per battery kWh short of the target at ready-by (GBP/kWh).
    vehicle_ids : sequence, optional
        Labels used in error messages and by :func:`twin.scheduler.plan_charging`.
    """

    slot_hours: float
    battery_kwh: Any
    soc0: Any
    target_soc: Any
    start_slot: Any
    end_slot: Any
    max_kw: Any
    price_gbp_per_kwh: Any
    min_soc: Any = 0.0
    vehicle_max_kw: Any = None
    efficiency: Any = 0.9
    taper_knee_soc: Any = 1.0
    taper_floor_kw: Any = 0.0
    carbon_g_per_kwh: Any = None
    carbon_weight_gbp_per_kg: Any = 0.0
    feeder_kw: Any = None
    mode: Any = "modulated"
    start_penalty_gbp: Any = 0.0
    min_run_slots: Any = 1
    shortfall_penalty_gbp_per_kwh: float = DEFAULT_SHORTFALL_PENALTY_GBP_PER_KWH
    vehicle_ids: Any = field(default=None)

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        ids = None if self.vehicle_ids is None else tuple(self.vehicle_ids)
        set_("vehicle_ids", ids)

        slot_hours = float(self.slot_hours)
        if not np.isfinite(slot_hours) or slot_hours <= 0:
            raise ValueError(f"slot_hours must be a positive number of hours, got {self.slot_hours!r}")
        set_("slot_hours", slot_hours)

        battery = np.asarray(self.battery_kwh, dtype=float)
        if battery.ndim != 1:
            raise ValueError(f"battery_kwh must be a 1-d array with one value per car, got shape {battery.shape}")
        n = battery.shape[0]
        if ids is not None and len(ids) != n:
            raise ValueError(f"vehicle_ids has {len(ids)} entries but battery_kwh has {n} cars")

        price = np.asarray(self.price_gbp_per_kwh, dtype=float)
        if price.ndim == 1:
            t = price.shape[0]
        elif price.ndim == 2 and price.shape[0] == n:
            t = price.shape[1]
        else:
            raise ValueError(
                f"price_gbp_per_kwh must have shape (T,) shared by all cars or ({n}, T) per car, got {price.shape}"
            )
        if t < 1:
            raise ValueError("price_gbp_per_kwh must cover at least one slot")
        _check_finite("price_gbp_per_kwh", price)

        # All per-car vectors go into one (fields, N) block, so that one bounds test covers
        # every field (NaN fails it too); the detailed checks, which name the field and the car
        # at fault, only run when it fails. The block is a copy: the caller's arrays are not
        # made read-only.
        arrs = []
        for name in _VECTOR_FIELDS:
            value = getattr(self, name)
            if value is None and name == "vehicle_max_kw":
                value = self.max_kw
            try:
                arrs.append(_as_float_vector(name, value, n))
            except ValueError:
                for prev, arr in zip(_VECTOR_FIELDS, arrs):  # earlier fields are reported first
                    _check_finite(prev, arr)
                raise
        block = np.stack(arrs)
        block.setflags(write=False)
        vec = dict(zip(_VECTOR_FIELDS, block))
        hi = _VECTOR_HI.copy()
        hi[_VECTOR_FIELDS.index("end_slot")] = t
        if not (((block >= _VECTOR_LO) & (block <= hi)).all() and (vec["end_slot"] >= vec["start_slot"]).all()):
            _explain_bad_vectors(vec, ids, t)

        runs = self.min_run_slots
        if type(runs) is int and runs >= 1:  # the common case, without the array checks below
            runs = np.full(n, runs, dtype=np.int64)
        else:
            runs = self._checked_runs(n, ids)

        mode = self.mode
        if isinstance(mode, str):
            if n and mode not in MODES:
                raise ValueError(f"mode[0] = {mode!r} for {_car_label(ids, 0)}: must be one of {MODES}")
            mode_arr = np.full(n, mode, dtype=object)
        else:
            mode_arr = np.asarray(list(mode), dtype=object)
            if mode_arr.shape != (n,):
                raise ValueError(f"mode must be a string or have one entry per car ({n}), got {len(mode_arr)}")
            if not set(mode_arr.tolist()) <= set(MODES):
                for i, m in enumerate(mode_arr):
                    if m not in MODES:
                        raise ValueError(f"mode[{i}] = {m!r} for {_car_label(ids, i)}: must be one of {MODES}")

        carbon = self.carbon_g_per_kwh
        if carbon is not None:
            carbon = np.asarray(carbon, dtype=float)
            if carbon.shape not in ((t,), (n, t)):
                raise ValueError(f"carbon_g_per_kwh must have shape ({t},) or ({n}, {t}), got {carbon.shape}")
            _check_finite("carbon_g_per_kwh", carbon)

        weight = np.asarray(self.carbon_weight_gbp_per_kg, dtype=float)
        if weight.ndim != 0 and weight.shape != (n,):
            raise ValueError(f"carbon_weight_gbp_per_kg must be a scalar or have shape ({n},), got {weight.shape}")
        _check_finite("carbon_weight_gbp_per_kg", weight)

        feeder = self.feeder_kw
        if feeder is not None:
            feeder = np.asarray(feeder, dtype=float)
            if feeder.shape != (t,):
                raise ValueError(f"feeder_kw must have shape ({t},) (one limit per slot), got {feeder.shape}")
            _check_finite("feeder_kw", feeder)
            bad = np.flatnonzero(feeder < 0)
            if bad.size:
                raise ValueError(f"feeder_kw[{bad[0]}] = {feeder[bad[0]]!r}: the feeder limit must be >= 0 kW")

        penalty = float(self.shortfall_penalty_gbp_per_kwh)
        if not np.isfinite(penalty) or penalty < 0:
            raise ValueError(f"shortfall_penalty_gbp_per_kwh must be a finite number >= 0, got {penalty!r}")

        for name, arr in vec.items():
            set_(name, arr)
        for name, arr in (
            ("price_gbp_per_kwh", price), ("carbon_g_per_kwh", carbon),
            ("carbon_weight_gbp_per_kg", weight), ("feeder_kw", feeder), ("min_run_slots", runs),
            ("mode", mode_arr),
        ):
            if arr is not None:
                arr = np.array(arr, copy=True) if arr is price or arr is carbon else arr
                arr.setflags(write=False)
            set_(name, arr)
        set_("shortfall_penalty_gbp_per_kwh", penalty)

    def _checked_runs(self, n: int, ids: tuple | None) -> np.ndarray:
        """``min_run_slots`` as (N,) int64, checked to be whole numbers >= 1."""
        runs = np.asarray(self.min_run_slots)
        if runs.ndim == 0:
            runs = np.full(n, runs)
        if runs.shape != (n,):
            raise ValueError(f"min_run_slots must be a scalar or have shape ({n},), got {runs.shape}")
        runs_f = runs.astype(float)
        _check_finite("min_run_slots", runs_f)
        bad = np.flatnonzero((runs_f < 1) | (runs_f != np.round(runs_f)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"min_run_slots[{i}] = {runs[i]!r} for {_car_label(ids, i)}: must be a whole number >= 1")
        runs = runs_f.astype(np.int64)
        return runs

    # ------------------------------------------------------------------ sizes
    @property
    def n_cars(self) -> int:
        """Number of cars ``N``."""
        return int(self.battery_kwh.shape[0])

    @property
    def n_slots(self) -> int:
        """Number of slots ``T``."""
        p = self.price_gbp_per_kwh
        return int(p.shape[-1])

    # ------------------------------------------------------------------ derived arrays
    @functools.cached_property
    def availability(self) -> np.ndarray:
        """``a[i, t]``, overlap of ``[start_slot, end_slot)`` with slot ``t`` (fraction), (N, T)."""
        a = self._availability_of(slice(None))
        a.setflags(write=False)
        return a

    def _availability_of(self, cars) -> np.ndarray:
        t = np.arange(self.n_slots, dtype=float)
        lo = np.maximum(self.start_slot[cars][:, None], t[None, :])
        hi = np.minimum(self.end_slot[cars][:, None], t[None, :] + 1.0)
        np.subtract(hi, lo, out=hi)
        return np.clip(hi, 0.0, 1.0, out=hi)

    def limit_rows(self, cars, taper: bool = True) -> tuple:
        """Rows ``cars`` (indices or a slice) of :attr:`availability`, :attr:`cap_kwh`,
        :attr:`taper_alpha` and :attr:`taper_rhs_kwh`, equal to indexing those properties
        (the last two are ``None`` with ``taper=False``).

        Unless the properties are already built, only the selected rows are computed: a large
        fleet then never holds four (N, T) arrays at once (each is 77 MB at 100k cars x 96
        slots, and fresh pages cost more to fault in than the arithmetic).
        """
        d = self.__dict__
        if "taper_rhs_kwh" in d and "taper_alpha" in d and "cap_kwh" in d:
            if not taper:
                return self.availability[cars], self.cap_kwh[cars], None, None
            return self.availability[cars], self.cap_kwh[cars], self.taper_alpha[cars], self.taper_rhs_kwh[cars]
        a = self.availability[cars] if "availability" in d else self._availability_of(cars)
        cap = a * self._cap_factor[cars][:, None]
        if not taper:
            return a, cap, None, None
        return a, cap, a * self._alpha_factor[cars][:, None], a * self._rhs_factor[cars][:, None]

    @functools.cached_property
    def _cap_factor(self) -> np.ndarray:
        return self.slot_hours * self.rate_kw

    @functools.cached_property
    def _alpha_factor(self) -> np.ndarray:
        return self.slot_hours * self.taper_slope_kw * self.soc_per_kwh

    @functools.cached_property
    def _rhs_factor(self) -> np.ndarray:
        return self.slot_hours * (self.vehicle_max_kw - self.taper_slope_kw * (self.soc0 - self.taper_knee_soc))

    @functools.cached_property
    def rate_kw(self) -> np.ndarray:
        """Grid-side limit below the taper (kW): ``min(max_kw, vehicle_max_kw)``, (N,)."""
        return np.minimum(self.max_kw, self.vehicle_max_kw)

    @functools.cached_property
    def cap_kwh(self) -> np.ndarray:
        """Power limit per slot as energy (kWh): ``a * slot_hours * rate_kw``, (N, T)."""
        c = self.availability * self._cap_factor[:, None]
        c.setflags(write=False)
        return c

    @functools.cached_property
    def has_taper(self) -> np.ndarray:
        """Whether a car's own limit tapers above its knee, (N,) bool."""
        return (self.taper_knee_soc < 1.0) & (self.taper_floor_kw < self.vehicle_max_kw)

    @functools.cached_property
    def taper_slope_kw(self) -> np.ndarray:
        """``b``: fall of the car's limit per unit SoC above the knee (kW per SoC fraction), (N,)."""
        b = np.zeros(self.n_cars)
        m = self.has_taper
        b[m] = (self.vehicle_max_kw[m] - self.taper_floor_kw[m]) / (1.0 - self.taper_knee_soc[m])
        return b

    @functools.cached_property
    def soc_per_kwh(self) -> np.ndarray:
        """SoC gained per grid kWh: ``efficiency / battery_kwh``, (N,)."""
        return self.efficiency / self.battery_kwh

    @functools.cached_property
    def need_kwh(self) -> np.ndarray:
        """Grid energy (kWh) that takes each car from ``soc0`` to ``target_soc`` (0 if above), (N,)."""
        return np.maximum(self.target_soc - self.soc0, 0.0) * self.battery_kwh / self.efficiency

    @functools.cached_property
    def min_need_kwh(self) -> np.ndarray:
        """Grid energy (kWh) to reach ``min(min_soc, target_soc)`` as soon as possible, (N,)."""
        goal = np.minimum(self.min_soc, self.target_soc)
        return np.maximum(goal - self.soc0, 0.0) * self.battery_kwh / self.efficiency

    @functools.cached_property
    def taper_free_kwh(self) -> np.ndarray:
        """``E_m``: cumulative grid energy (kWh) up to which the taper cannot bind, (N,).

        A slot whose end-of-slot SoC stays at or below ``s_m = knee + (vehicle_max_kw - rate_kw)
        / b`` is limited by ``rate_kw`` only; ``inf`` for cars without taper.
        """
        em = np.full(self.n_cars, np.inf)
        m = self.has_taper
        s_m = self.taper_knee_soc[m] + (self.vehicle_max_kw[m] - self.rate_kw[m]) / self.taper_slope_kw[m]
        em[m] = (s_m - self.soc0[m]) / self.soc_per_kwh[m]
        return em

    @functools.cached_property
    def taper_alpha(self) -> np.ndarray:
        """``alpha[i, t] = a * slot_hours * b * efficiency / battery_kwh`` (dimensionless), (N, T).

        With ``A = a * slot_hours * (vehicle_max_kw - b * (soc0 - knee))`` the taper row reads
        ``x[t] * (1 + alpha) + alpha * S[t - 1] <= A``.
        """
        al = self.availability * self._alpha_factor[:, None]
        al.setflags(write=False)
        return al

    @functools.cached_property
    def taper_rhs_kwh(self) -> np.ndarray:
        """``A[i, t] = a * slot_hours * (vehicle_max_kw - b * (soc0 - knee))`` (kWh), (N, T)."""
        A = self.availability * self._rhs_factor[:, None]
        A.setflags(write=False)
        return A

    @functools.cached_property
    def unit_cost_shared(self) -> np.ndarray | None:
        """Slot cost (GBP/kWh, price + weight * carbon / 1000) when it is the same for every car, (T,)."""
        if self.price_gbp_per_kwh.ndim != 1:
            return None
        c = self.price_gbp_per_kwh.astype(float, copy=True)
        if self.carbon_g_per_kwh is not None:
            if self.carbon_g_per_kwh.ndim != 1 or self.carbon_weight_gbp_per_kg.ndim != 0:
                if not np.any(self.carbon_weight_gbp_per_kg):
                    return c
                return None
            c = c + float(self.carbon_weight_gbp_per_kg) * self.carbon_g_per_kwh / 1000.0
        return c

    def unit_cost(self) -> np.ndarray:
        """Slot cost per grid kWh (GBP/kWh): ``price + weight * carbon / 1000``, (N, T)."""
        shared = self.unit_cost_shared
        if shared is not None:
            return np.broadcast_to(shared, (self.n_cars, self.n_slots))
        c = np.broadcast_to(self.price_gbp_per_kwh, (self.n_cars, self.n_slots)).astype(float)
        if self.carbon_g_per_kwh is not None:
            w = np.broadcast_to(self.carbon_weight_gbp_per_kg, (self.n_cars,))
            c = c + w[:, None] * np.broadcast_to(self.carbon_g_per_kwh, c.shape) / 1000.0
        return c

    @functools.cached_property
    def shortfall_value(self) -> np.ndarray:
        """Penalty per grid kWh not delivered (GBP/kWh): ``penalty * efficiency``, (N,)."""
        return self.shortfall_penalty_gbp_per_kwh * self.efficiency

    @functools.cached_property
    def is_onoff(self) -> np.ndarray:
        """Whether each car is start/stop controlled, (N,) bool."""
        return np.asarray(self.mode == "onoff", dtype=bool)

    @functools.cached_property
    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last slot with positive availability per car (``-1`` if none), (N,) each."""
        # a[i, t] > 0 exactly for floor(start) <= t <= ceil(end) - 1 when end > start.
        first = np.floor(self.start_slot).astype(np.int64)
        last = np.minimum(np.ceil(self.end_slot).astype(np.int64) - 1, self.n_slots - 1)
        anyp = (self.end_slot > self.start_slot) & (last >= first)
        return np.where(anyp, first, -1), np.where(anyp, last, -1)

    def subset(self, cars: np.ndarray) -> "FleetProblem":
        """The same problem restricted to the cars ``cars`` (indices), without a feeder limit."""
        cars = np.asarray(cars, dtype=np.int64)

        def pick(v):
            if v is None:
                return None
            v = np.asarray(v)
            return v[cars] if v.ndim == 2 else v

        def pick_vec(v):
            v = np.asarray(v)
            return v[cars] if v.ndim == 1 else v

        return FleetProblem(
            slot_hours=self.slot_hours,
            battery_kwh=self.battery_kwh[cars], soc0=self.soc0[cars], target_soc=self.target_soc[cars],
            start_slot=self.start_slot[cars], end_slot=self.end_slot[cars], max_kw=self.max_kw[cars],
            price_gbp_per_kwh=pick(self.price_gbp_per_kwh), min_soc=self.min_soc[cars],
            vehicle_max_kw=self.vehicle_max_kw[cars], efficiency=self.efficiency[cars],
            taper_knee_soc=self.taper_knee_soc[cars], taper_floor_kw=self.taper_floor_kw[cars],
            carbon_g_per_kwh=pick(self.carbon_g_per_kwh),
            carbon_weight_gbp_per_kg=pick_vec(self.carbon_weight_gbp_per_kg),
            feeder_kw=None, mode=self.mode[cars], start_penalty_gbp=self.start_penalty_gbp[cars],
            min_run_slots=self.min_run_slots[cars],
            shortfall_penalty_gbp_per_kwh=self.shortfall_penalty_gbp_per_kwh,
            vehicle_ids=None if self.vehicle_ids is None else [self.vehicle_ids[i] for i in cars],
        )


@dataclass(frozen=True, eq=False)
class Plan:
    """A charging plan and its accounting.

    Attributes
    ----------
    energy_kwh : ndarray, shape (N, T)
        Grid energy per car and slot (kWh).
    power_kw : ndarray, shape (N, T)
        Average grid power over each slot (kW): ``energy_kwh / slot_hours``.
    soc : ndarray, shape (N, T + 1)
        SoC (fraction) at each slot boundary; ``soc[:, 0]`` is ``soc0``.
    soc_at_end : ndarray, shape (N,)
        SoC (fraction) at each car's ready-by time.
    shortfall_kwh : ndarray, shape (N,)
        Battery energy short of the target at ready-by (kWh), ``>= 0``.
    cost_gbp : ndarray, shape (N,)
        Energy cost ``sum(price * energy)`` (GBP).
    carbon_kg : ndarray, shape (N,)
        Emissions ``sum(carbon * energy) / 1000`` (kg CO2); zero without a carbon signal.
    starts : ndarray, shape (N,)
        Number of starts (off→on transitions) per car.
    objective_gbp : ndarray, shape (N,)
        Each car's share of the objective (GBP): cost + carbon value + shortfall penalty
        + start penalties (the last for on/off cars only).
    objective_total_gbp : float
        Sum of ``objective_gbp`` (GBP).
    on : ndarray of bool, shape (N, T) or None
        On/off state of on/off cars (``False`` rows for modulated cars); ``None`` if the fleet
        has no on/off car.
    method : str
        Which solver path produced the plan (e.g. ``"independent"``, ``"pyomo"``).
    car_method : ndarray of str, shape (N,)
        Solver path per car (the router may use several in one call).
    solve_seconds : float
        Wall time of the solve (s).
    """

    energy_kwh: np.ndarray
    power_kw: np.ndarray
    soc: np.ndarray
    soc_at_end: np.ndarray
    shortfall_kwh: np.ndarray
    cost_gbp: np.ndarray
    carbon_kg: np.ndarray
    starts: np.ndarray
    objective_gbp: np.ndarray
    objective_total_gbp: float
    on: np.ndarray | None
    method: str
    car_method: np.ndarray
    solve_seconds: float


def _starts(on: np.ndarray) -> np.ndarray:
    prev = np.zeros_like(on)
    prev[:, 1:] = on[:, :-1]
    return (on & ~prev).sum(axis=1)


# Rows per block in evaluate_plan: 2,048 cars x 96 slots of float64 is 1.5 MB.
_EVAL_ROWS = 2048


def evaluate_plan(
    problem: FleetProblem,
    energy_kwh: np.ndarray,
    *,
    method: str,
    solve_seconds: float = 0.0,
    car_method: np.ndarray | None = None,
    copy: bool = True,
) -> Plan:
    """Account a grid-energy matrix against ``problem`` and wrap it in a :class:`Plan`.

    Energies within ``1e-9`` kWh of zero are set to zero; the on/off state of an on/off car is
    ``energy > 0``. With ``copy=False`` the plan takes ``energy_kwh`` itself (a float array
    the caller hands over) and zeroes its noise in place, instead of working on a copy.
    """
    p = problem
    n, T = p.n_cars, p.n_slots
    x = np.array(energy_kwh, dtype=float, copy=True) if copy else np.asarray(energy_kwh, dtype=float)
    if x.shape != (n, T):
        raise ValueError(f"energy_kwh must have shape ({n}, {T}), got {x.shape}")
    soc = np.empty((n, T + 1))
    power = np.empty((n, T))
    spk, soc0 = p.soc_per_kwh[:, None], p.soc0[:, None]

    def rows(lo: int) -> None:
        hi = lo + _EVAL_ROWS
        xb, sb = x[lo:hi], soc[lo:hi]
        # Solver noise: LP solutions carry values like 1e-12 kWh in slots that are off.
        np.copyto(xb, 0.0, where=(xb < 1e-9) & (xb > -1e-9))
        sb[:, 0] = 0.0
        np.cumsum(xb, axis=1, out=sb[:, 1:])
        sb *= spk[lo:hi]
        sb += soc0[lo:hi]
        np.divide(xb, p.slot_hours, out=power[lo:hi])

    # Blocks of rows keep the passes over a large fleet's matrices in cache, and run on both
    # cores (numpy releases the GIL); one block for a small fleet.
    if n > _EVAL_ROWS:
        _map_blocks(rows, list(range(0, n, _EVAL_ROWS)))
    else:
        rows(0)
    _, last = p.window
    end_idx = np.where(last >= 0, last + 1, 0)
    soc_end = soc[np.arange(p.n_cars), end_idx]
    short = np.maximum(p.target_soc - soc_end, 0.0) * p.battery_kwh
    short = np.where(p.target_soc > p.soc0, short, 0.0)

    def weighted(v):
        # (N, T) x (T,) is a matrix-vector product; per-car signals need the elementwise form.
        v = np.asarray(v, dtype=float)
        return x @ v if v.ndim == 1 else (v * x).sum(axis=1)

    cost = weighted(p.price_gbp_per_kwh)
    carbon = weighted(p.carbon_g_per_kwh) / 1000.0 if p.carbon_g_per_kwh is not None else np.zeros(p.n_cars)
    weight = np.broadcast_to(p.carbon_weight_gbp_per_kg, (p.n_cars,))
    onoff = p.is_onoff
    on = None
    starts = np.zeros(p.n_cars, dtype=np.int64)
    if onoff.any():
        on = (x > 0) & onoff[:, None]
        starts = _starts(on)
    obj = cost + weight * carbon + p.shortfall_penalty_gbp_per_kwh * short + p.start_penalty_gbp * starts
    if car_method is None:
        car_method = np.full(p.n_cars, method, dtype=object)
    return Plan(
        energy_kwh=x,
        power_kw=power,
        soc=soc,
        soc_at_end=soc_end,
        shortfall_kwh=short,
        cost_gbp=cost,
        carbon_kg=carbon,
        starts=starts,
        objective_gbp=obj,
        objective_total_gbp=float(obj.sum()),
        on=on,
        method=method,
        car_method=car_method,
        solve_seconds=float(solve_seconds),
    )


def plan_violations(problem: FleetProblem, energy_kwh: np.ndarray, tol: float = FEASIBILITY_TOL_KWH) -> list[str]:
    """List every way ``energy_kwh`` breaks the slot model's limits (empty when feasible).

    Checks the window, power and taper limits (end-of-slot form), SoC <= target, the min-SoC
    trajectory and the feeder limit, each with tolerance ``tol`` (kWh).
    """
    p = problem
    x = np.asarray(energy_kwh, dtype=float)
    out: list[str] = []

    def report(name: str, mask: np.ndarray) -> None:
        if mask.any():
            idx = np.argwhere(mask)[0]
            out.append(f"{name} violated at {tuple(int(i) for i in idx)} ({int(mask.sum())} places)")

    report("non-negativity", x < -tol)
    report("window", (p.availability == 0) & (np.abs(x) > tol))
    report("power limit", x > p.cap_kwh + tol)
    cum = np.cumsum(x, axis=1)
    lhs = x + p.taper_alpha * cum  # == x * (1 + alpha) + alpha * S[t - 1]
    report("taper", p.has_taper[:, None] & (lhs > p.taper_rhs_kwh + tol))
    report("SoC above target", cum > p.need_kwh[:, None] + tol)
    floor = min_soc_floor(p)
    report("min SoC trajectory", cum < floor - tol)
    if p.feeder_kw is not None:
        load = x.sum(axis=0)
        report("feeder", (load > p.feeder_kw * p.slot_hours + tol * max(1.0, p.n_cars ** 0.5))[None, :])
    return out
