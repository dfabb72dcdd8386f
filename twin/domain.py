"""Domain types: vehicles, chargers, driver preferences, grid signals, SoC constants.

All times are timezone-aware UTC. SoC is a fraction 0..1 everywhere in code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

import pandas as pd

from twin.battery import ChargeCurve

__all__ = [
    "VehicleSpec", "Charger", "Preferences", "Signals", "SOC_TOLERANCE", "next_time_of_day", "utc",
    "vehicle_curves",
]

# SoC differences below this are treated as "at target". OEMs report SoC in 1 % steps at best,
# so anything finer than a tenth of that is noise, not unmet demand.
SOC_TOLERANCE = 1e-3


def utc(value: datetime | str | pd.Timestamp) -> datetime:
    """Return ``value`` as a timezone-aware UTC ``datetime``; naive input is rejected."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise ValueError(f"time {value!s} has no timezone; give it in UTC, e.g. '2026-01-12T00:00:00Z'")
    return ts.tz_convert("UTC").to_pydatetime()


def next_time_of_day(after: datetime, at: time) -> datetime:
    """The first instant strictly after ``after`` whose UTC time of day is ``at``."""
    candidate = datetime.combine(after.date(), at, tzinfo=timezone.utc)
    if candidate <= after:
        candidate += timedelta(days=1)
    return candidate


@dataclass(frozen=True, slots=True)
class VehicleSpec:
    """A car model as the charging system sees it.

    ``max_ac_kw`` is the car's maximum AC draw from the grid; above ``taper_knee_soc`` the car's
    limit falls linearly to ``taper_floor_kw`` at 100 %. ``efficiency`` is the share of grid
    energy that reaches the battery.
    """

    battery_kwh: float
    max_ac_kw: float
    efficiency: float = 0.9
    taper_knee_soc: float = 0.8
    taper_floor_kw: float = 1.5
    model: str = "generic"

    def curve(self, charger: Charger) -> ChargeCurve:
        """The charging curve of this car on ``charger``."""
        return ChargeCurve(
            battery_kwh=self.battery_kwh,
            charger_kw=charger.max_kw,
            vehicle_kw=self.max_ac_kw,
            efficiency=self.efficiency,
            knee_soc=self.taper_knee_soc,
            floor_kw=self.taper_floor_kw,
        )


@dataclass(frozen=True, slots=True)
class Charger:
    """A charge point (EVSE): only its power limit matters to the car-side controller."""

    max_kw: float


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the driver asked for.

    ``ready_by`` is a daily UTC time of day; ``ready_by_at`` overrides it for the next session
    only (a one-off departure). ``target_soc`` is also the car's charge limit; ``min_soc`` is
    reached as soon as possible whatever the price.
    """

    ready_by: time = time(7, 0)
    target_soc: float = 0.8
    min_soc: float = 0.0
    ready_by_at: datetime | None = None

    def deadline(self, plugged_in_at: datetime) -> datetime:
        """The ready-by instant for a session that started at ``plugged_in_at``."""
        if self.ready_by_at is not None and self.ready_by_at > plugged_in_at:
            return self.ready_by_at
        return next_time_of_day(plugged_in_at, self.ready_by)


@dataclass(frozen=True)
class Signals:
    """Price and carbon per settlement slot: the actual series and what was forecast.

    ``frame`` is indexed by slot start (UTC, regular, ``slot_minutes`` apart) with columns
    ``price_gbp_per_kwh``, ``carbon_g_per_kwh`` (actual) and ``price_forecast_gbp_per_kwh``,
    ``carbon_forecast_g_per_kwh`` (forecast).
    """

    frame: pd.DataFrame
    slot_minutes: int
    source: str = ""

    COLUMNS = (
        "price_gbp_per_kwh",
        "carbon_g_per_kwh",
        "price_forecast_gbp_per_kwh",
        "carbon_forecast_g_per_kwh",
    )

    def __post_init__(self) -> None:
        missing = [c for c in self.COLUMNS if c not in self.frame.columns]
        if missing:
            raise ValueError(f"signals are missing columns {missing}")
        idx = self.frame.index
        if not isinstance(idx, pd.DatetimeIndex) or idx.tz is None:
            raise ValueError("signals must be indexed by timezone-aware slot start times")
        if len(idx) < 1:
            raise ValueError("signals are empty")
        steps = idx[1:] - idx[:-1]
        if len(steps) and not (steps == pd.Timedelta(minutes=self.slot_minutes)).all():
            raise ValueError(f"signal slots must be evenly spaced, {self.slot_minutes} minutes apart")
        if self.frame[list(self.COLUMNS)].isna().any().any():
            raise ValueError("signals contain missing values")

    @property
    def start(self) -> datetime:
        return self.frame.index[0].to_pydatetime()

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.slot_minutes * len(self.frame))

    @property
    def slot_hours(self) -> float:
        return self.slot_minutes / 60.0


def vehicle_curves(vehicles: pd.DataFrame) -> list[ChargeCurve]:
    """The charging curve of every car of a vehicles table (see :mod:`twin.sim.behaviour`).

    Uses the columns ``battery_kwh``, ``max_ac_kw``, ``efficiency``, ``taper_knee_soc``,
    ``taper_floor_kw`` and ``charger_kw``; one curve per row, in row order.
    """
    return [
        VehicleSpec(
            battery_kwh=r.battery_kwh, max_ac_kw=r.max_ac_kw, efficiency=r.efficiency,
            taper_knee_soc=r.taper_knee_soc, taper_floor_kw=r.taper_floor_kw,
        ).curve(Charger(r.charger_kw))
        for r in vehicles.itertuples()
    ]
