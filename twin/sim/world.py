"""The physical world of the twin: cars, their chargers, and what happens to them.

Times are seconds since the scenario start (the SimPy time unit). Nothing here schedules
anything: the behaviour process (plug-in, departure) and the OEM head call these methods at the
right simulated time, and each car's energy is advanced exactly, in closed form, from its last
event to now (:mod:`twin.battery`). A car that reaches its charge limit stops at the exact
instant it did so, even if nobody looks at it until later.

Every charging segment (start, end, SoC at both, and the power cap a charging current set
through the OEM API imposed) is recorded; results are computed from those segments afterwards
(:mod:`twin.results`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from twin.battery import ChargeCurve
from twin.oem import CommandRejected

__all__ = ["Car", "World"]

# Numerical slack when comparing a SoC with the charge limit (fractions of capacity; 1e-12 of
# a 100 kWh pack is 0.1 mWh, far below anything reported or billed).
_EPS = 1e-12


class Car:
    """One simulated car and the charger it uses at home."""

    __slots__ = (
        "index", "vehicle_id", "curve", "autostart",
        "soc", "t", "plugged", "charging", "limit", "session",
        "seg_t0", "seg_soc0", "last_charge_end", "cap_kw", "active",
    )

    def __init__(self, index: int, vehicle_id: str, curve: ChargeCurve, soc: float, autostart: bool) -> None:
        self.index = index
        self.vehicle_id = vehicle_id
        self.curve = curve
        self.autostart = autostart
        self.soc = soc
        self.t = 0.0
        self.plugged = False
        self.charging = False
        self.limit = 1.0
        self.session = -1
        self.seg_t0 = 0.0
        self.seg_soc0 = 0.0
        self.last_charge_end = -math.inf
        #: power cap from the charging current last set (inf: none) and the curve it gives
        self.cap_kw = math.inf
        self.active = curve


class World:
    """All cars; records charging segments and plug events."""

    def __init__(self, cars: list[Car], session_count: int) -> None:
        self.cars = cars
        self.by_id = {c.vehicle_id: c for c in cars}
        #: charging segments: (car index, session, t0 s, t1 s, soc0, soc1, power cap kW or inf)
        self.segments: list[tuple[int, int, float, float, float, float, float]] = []
        #: event log: (t s, vehicle_id, kind, detail)
        self.log: list[tuple[float, str, str, str]] = []
        self.soc_arrival = np.full(session_count, np.nan)
        self.soc_departure = np.full(session_count, np.nan)
        #: driving energy a car needed but did not have (it arrived empty), per session, kWh
        self.trip_unmet_kwh = np.zeros(session_count)
        #: called as listener(car, t) after a plug-in or unplug
        self.listeners: list[Callable[[Car, float], None]] = []

    # -- physics ----------------------------------------------------------------------------

    def advance(self, car: Car, t: float) -> None:
        """Bring ``car`` to time ``t`` (seconds), integrating any charging exactly."""
        if car.charging and t > car.t:
            curve = car.active
            soc = curve.soc_after(car.soc, (t - car.t) / 3600.0)
            if soc >= car.limit - _EPS:
                t_full = car.t + curve.hours_to(car.soc, car.limit) * 3600.0
                car.soc = car.limit
                self._end_segment(car, min(t_full, t))
            else:
                car.soc = soc
        car.t = t

    def _begin_segment(self, car: Car, t: float) -> None:
        car.charging = True
        car.seg_t0 = t
        car.seg_soc0 = car.soc

    def _end_segment(self, car: Car, t: float) -> None:
        car.charging = False
        car.last_charge_end = t
        if t > car.seg_t0:
            self.segments.append((car.index, car.session, car.seg_t0, t, car.seg_soc0, car.soc, car.cap_kw))

    def close(self, t: float) -> None:
        """End the run at ``t``: close the segments of cars still charging."""
        for car in self.cars:
            self.advance(car, t)
            if car.charging:
                self._end_segment(car, t)

    # -- what drivers do --------------------------------------------------------------------

    def plug_in(self, car: Car, t: float, session: int, soc: float, limit: float) -> None:
        car.t = t
        car.soc = soc
        car.limit = limit
        car.session = session
        car.plugged = True
        self.soc_arrival[session] = soc
        self.log.append((t, car.vehicle_id, "plug_in", f"soc={soc:.4f}"))
        if car.autostart and soc < limit - _EPS:
            self._begin_segment(car, t)
        for listener in self.listeners:
            listener(car, t)

    def unplug(self, car: Car, t: float) -> float:
        """Unplug ``car``; returns its SoC at departure."""
        self.advance(car, t)
        if car.charging:
            self._end_segment(car, t)
        car.plugged = False
        self.soc_departure[car.session] = car.soc
        self.log.append((t, car.vehicle_id, "unplug", f"soc={car.soc:.4f}"))
        for listener in self.listeners:
            listener(car, t)
        return car.soc

    def drive(self, car: Car, session: int, trip_kwh: float) -> float:
        """Take ``trip_kwh`` out of the battery before ``session``; returns the SoC left."""
        need = trip_kwh / car.curve.battery_kwh
        if need > car.soc:
            self.trip_unmet_kwh[session] = (need - car.soc) * car.curve.battery_kwh
            return 0.0
        return car.soc - need

    # -- what the car's cloud can ask of it -------------------------------------------------

    def state(self, car: Car, t: float) -> tuple[float, bool, bool]:
        """(SoC, plugged in, charging) at ``t``."""
        self.advance(car, t)
        return car.soc, car.plugged, car.charging

    def start(self, car: Car, t: float) -> None:
        self.advance(car, t)
        if not car.plugged:
            raise CommandRejected(car.vehicle_id, "not_plugged_in")
        if car.charging:
            return
        if car.soc >= car.limit - _EPS:
            raise CommandRejected(car.vehicle_id, "fully_charged")
        self._begin_segment(car, t)

    def set_power_cap(self, car: Car, t: float, kw: float) -> None:
        """Limit ``car``'s draw to ``kw`` from ``t`` (a charging current set through its cloud)."""
        self.advance(car, t)
        if kw == car.cap_kw:
            return
        if car.charging:
            self._end_segment(car, t)
            car.cap_kw, car.active = kw, car.curve.capped(kw)
            self._begin_segment(car, t)
        else:
            car.cap_kw, car.active = kw, car.curve.capped(kw)

    def set_limit(self, car: Car, t: float, soc: float) -> None:
        """Set ``car``'s own charge limit; a car above it stops charging."""
        self.advance(car, t)
        car.limit = soc
        if car.charging and car.soc >= soc - _EPS:
            self._end_segment(car, t)

    def stop(self, car: Car, t: float) -> None:
        self.advance(car, t)
        if not car.plugged:
            raise CommandRejected(car.vehicle_id, "not_plugged_in")
        if car.charging:
            self._end_segment(car, t)
