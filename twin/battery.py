"""Charging physics: the taper curve and its exact integration.

A car draws grid-side power ``P(s) = min(charger_kw, L(s))`` at state of charge ``s``
(fraction 0..1), where the car's own limit ``L`` is flat up to the knee and falls linearly to
a floor at 100 %::

    L(s) = vehicle_kw                                        for s <= knee
    L(s) = vehicle_kw - b (s - knee),  b = (vehicle_kw - floor_kw) / (1 - knee)   for s > knee

The battery gains ``efficiency * P`` kW, so ``ds/dt = efficiency * P(s) / battery_kwh``
(per hour). Between events this ODE is integrated in closed form: linear while the flat limit
binds, exponential once the taper binds (``ds/dt = k (s_inf - s)``). The simulation therefore
advances energy exactly from one event to the next, without a fixed time step.

There are two implementations of the same formulas: :class:`ChargeCurve` for one car
(plain ``math``; called inside the event loop, where NumPy scalar overhead would dominate)
and :func:`soc_after_array` for many segments at once (NumPy; used when results are binned
into settlement slots). Tests check that they agree. :func:`power_profile_array` gives the
power of many segments as a function of time (flat, then an exponential decay once the taper
binds), for the site-power KPIs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ChargeCurve", "soc_after_array", "curve_arrays", "capped_arrays", "power_profile_array"]


@dataclass(frozen=True, slots=True)
class ChargeCurve:
    """Charging behaviour of one car on one charger.

    Parameters
    ----------
    battery_kwh : usable capacity, kWh.
    charger_kw : charger (EVSE) limit, kW.
    vehicle_kw : the car's maximum AC draw, kW.
    efficiency : fraction of grid energy that reaches the battery.
    knee_soc : SoC (fraction) where the car's taper starts.
    floor_kw : the car's limit at 100 % SoC, kW.
    """

    battery_kwh: float
    charger_kw: float
    vehicle_kw: float
    efficiency: float
    knee_soc: float
    floor_kw: float

    # Derived constants, computed once: the event loop evaluates curves ~10^5 times per run.
    max_kw: float = field(init=False)
    """Grid-side draw while the taper does not bind, kW."""
    slope_kw: float = field(init=False)
    """Taper slope ``b`` in kW per unit SoC (0 when there is no taper)."""
    taper_soc: float = field(init=False)
    """SoC above which the taper (not the flat limit) sets the power; ``inf`` if never."""
    _flat_rate: float = field(init=False, repr=False)
    _s_inf: float = field(init=False, repr=False)
    _k: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        max_kw = min(self.charger_kw, self.vehicle_kw)
        if self.floor_kw >= self.vehicle_kw or self.knee_soc >= 1.0:
            b = 0.0
        else:
            b = (self.vehicle_kw - self.floor_kw) / (1.0 - self.knee_soc)
        taper_soc = math.inf
        if b > 0.0:
            s = self.knee_soc + (self.vehicle_kw - max_kw) / b
            taper_soc = s if s < 1.0 else math.inf
        setattr_ = object.__setattr__
        setattr_(self, "max_kw", max_kw)
        setattr_(self, "slope_kw", b)
        setattr_(self, "taper_soc", taper_soc)
        setattr_(self, "_flat_rate", self.efficiency * max_kw / self.battery_kwh)
        # s_inf: the SoC where the linear taper would reach 0 kW; k: its time constant, 1/h
        setattr_(self, "_s_inf", (self.vehicle_kw + b * self.knee_soc) / b if b > 0.0 else math.inf)
        setattr_(self, "_k", self.efficiency * b / self.battery_kwh)

    def capped(self, kw: float) -> ChargeCurve:
        """This car with its draw limited to ``kw`` (a charging current set through the OEM API).

        The taper is the car's own and stays; only the flat limit falls. ``kw`` at or above
        :attr:`max_kw` returns the curve itself.
        """
        if kw >= self.max_kw:
            return self
        return _capped(self, float(kw))

    def power_kw(self, soc: float) -> float:
        """Grid-side power drawn at ``soc``, kW."""
        if soc <= self.taper_soc:
            return self.max_kw
        return min(self.max_kw, self.vehicle_kw - self.slope_kw * (soc - self.knee_soc))

    def soc_after(self, soc: float, hours: float) -> float:
        """SoC after charging at the limit for ``hours`` from ``soc`` (capped at 1; the car's
        charge limit is applied by the caller)."""
        if hours <= 0.0:
            return soc
        s_c = self.taper_soc
        if soc < s_c:
            rate = self._flat_rate
            t_flat = (s_c - soc) / rate
            if hours <= t_flat:
                return min(1.0, soc + rate * hours)
            hours -= t_flat
            soc = s_c
        s_inf = self._s_inf
        # the increment form: never below ``soc`` (s_inf may be huge when the taper is shallow,
        # and s_inf - (s_inf - soc) * exp(...) would cancel to below it)
        return min(1.0, soc - (s_inf - soc) * math.expm1(-self._k * hours))

    def hours_to(self, soc: float, target: float) -> float:
        """Hours of charging at the limit to go from ``soc`` to ``target``; ``inf`` if never."""
        if target <= soc:
            return 0.0
        s_c = self.taper_soc
        rate = self._flat_rate
        if target <= s_c:
            return (target - soc) / rate
        hours = 0.0
        if soc < s_c:
            hours = (s_c - soc) / rate
            soc = s_c
        s_inf = self._s_inf
        if target >= s_inf:
            return math.inf
        return hours + math.log((s_inf - soc) / (s_inf - target)) / self._k


@functools.lru_cache(maxsize=4096)
def _capped(curve: ChargeCurve, kw: float) -> ChargeCurve:
    # A fleet uses a handful of (model, current) pairs; each capped curve is built once.
    return ChargeCurve(curve.battery_kwh, min(curve.charger_kw, kw), curve.vehicle_kw, curve.efficiency,
                       curve.knee_soc, curve.floor_kw)


def curve_arrays(curves: list[ChargeCurve]) -> dict[str, np.ndarray]:
    """Struct-of-arrays form of many curves, the input of :func:`soc_after_array`."""
    cap = np.array([c.battery_kwh for c in curves], dtype=float)
    return {
        "battery_kwh": cap,
        "efficiency": np.array([c.efficiency for c in curves], dtype=float),
        "max_kw": np.array([c.max_kw for c in curves], dtype=float),
        "vehicle_kw": np.array([c.vehicle_kw for c in curves], dtype=float),
        "knee_soc": np.array([c.knee_soc for c in curves], dtype=float),
        "slope_kw": np.array([c.slope_kw for c in curves], dtype=float),
        "taper_soc": np.array([c.taper_soc for c in curves], dtype=float),
    }


def capped_arrays(arrays: dict[str, np.ndarray], cap_kw: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`curve_arrays` rows with each draw limited to ``cap_kw`` (``inf``: no limit).

    The vectorised form of :meth:`ChargeCurve.capped`: the flat limit falls to the cap, and the
    SoC above which the taper binds moves up accordingly.
    """
    cap_kw = np.asarray(cap_kw, dtype=float)
    if not np.any(cap_kw < arrays["max_kw"]):
        return arrays
    out = dict(arrays)
    max_kw = np.minimum(arrays["max_kw"], cap_kw)
    b = arrays["slope_kw"]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = arrays["knee_soc"] + (arrays["vehicle_kw"] - max_kw) / b
    out["max_kw"] = max_kw
    out["taper_soc"] = np.where((b > 0) & (s < 1.0), s, np.inf)
    return out


def soc_after_array(arrays: dict[str, np.ndarray], soc: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """Vectorised :meth:`ChargeCurve.soc_after`.

    ``arrays`` holds one entry per element of ``soc``/``hours`` (index it with the segments'
    car indices first). Hours <= 0 leave the SoC unchanged.
    """
    soc = np.asarray(soc, dtype=float)
    hours = np.maximum(np.asarray(hours, dtype=float), 0.0)
    cap = arrays["battery_kwh"]
    eff = arrays["efficiency"]
    s_c = arrays["taper_soc"]
    rate = eff * arrays["max_kw"] / cap
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        t_flat = np.where(soc < s_c, (s_c - soc) / rate, 0.0)
        flat_only = hours <= t_flat
        out = np.where(flat_only, soc + rate * hours, 0.0)
        b = arrays["slope_kw"]
        s0 = np.where(soc < s_c, s_c, soc)
        h2 = hours - t_flat
        s_inf = (arrays["vehicle_kw"] + b * arrays["knee_soc"]) / b
        k = eff * b / cap
        tapered = s0 - (s_inf - s0) * np.expm1(-k * h2)
    return np.minimum(np.where(flat_only, out, tapered), 1.0)


def power_profile_array(arrays: dict[str, np.ndarray], soc: np.ndarray) -> dict[str, np.ndarray]:
    """Grid-side power over time of many cars charging at their limit from ``soc``.

    The same physics as :func:`soc_after_array`: a car draws ``flat_kw`` for ``flat_hours``
    (until the taper binds or the battery is full), then ``taper_kw * exp(-decay_per_hour * h)``
    for ``taper_hours`` (``h``: hours since the taper began; on the linear taper the power
    decays exponentially because ``P = b (s_inf - s)``), then nothing (SoC 1). Durations may be
    ``inf``; phases that never happen have 0 hours. Integrating this power times
    ``efficiency / battery_kwh`` gives the SoC gain of :func:`soc_after_array`.

    Returns a dict of arrays: ``flat_kw``, ``flat_hours``, ``taper_kw``, ``decay_per_hour``,
    ``taper_hours``.
    """
    soc = np.asarray(soc, dtype=float)
    cap = arrays["battery_kwh"]
    eff = arrays["efficiency"]
    max_kw = arrays["max_kw"]
    s_c = arrays["taper_soc"]
    b = arrays["slope_kw"]
    rate = eff * max_kw / cap
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        flat_end = np.minimum(s_c, 1.0)
        in_flat = soc < flat_end
        to_taper = np.where(rate > 0, (flat_end - soc) / np.where(rate > 0, rate, 1.0), np.inf)
        flat_hours = np.where(in_flat, to_taper, 0.0)
        # s_c is finite only where the taper binds below 100 %
        s0 = np.maximum(soc, s_c)
        tapers = np.isfinite(s_c) & (b > 0) & (s0 < 1.0)
        taper_kw = np.where(tapers, np.minimum(max_kw, arrays["vehicle_kw"] - b * (s0 - arrays["knee_soc"])), 0.0)
        decay = np.where(tapers, eff * b / cap, 0.0)
        s_inf = np.where(tapers, (arrays["vehicle_kw"] + b * arrays["knee_soc"]) / np.where(b > 0, b, 1.0), np.inf)
        to_full = np.where(s_inf > 1.0, np.log((s_inf - s0) / (s_inf - 1.0)) / decay, np.inf)
        taper_hours = np.where(tapers & (taper_kw > 0), to_full, 0.0)
    return {
        "flat_kw": np.where(in_flat, max_kw, 0.0),
        "flat_hours": flat_hours,
        "taper_kw": np.where(taper_hours > 0, taper_kw, 0.0),
        "decay_per_hour": decay,
        "taper_hours": taper_hours,
    }
