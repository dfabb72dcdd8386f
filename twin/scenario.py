"""Scenario files: YAML validated by pydantic models.

A scenario says which cars there are, how their drivers behave (or which recorded sessions to
replay), the price and carbon signals, the OEM cloud's behaviour and, optionally, KPI
thresholds. ``twin schema`` writes the JSON Schema generated from these models
(``scenarios/scenario.schema.json``) for editors and CI.

Errors in a file are reported as :class:`ScenarioError` with the file, the field path and the
reason, one line per problem, e.g.::

    scenarios/broken.yaml: fleet[0].vehicle.battery_kwh: must be greater than 0 (got -60)
"""

from __future__ import annotations

import json
from datetime import datetime, time, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from twin.control.config import ControllerConfig, ControlParams, ControlSettings
from twin.control.policies import POLICIES

__all__ = [
    "Scenario",
    "ScenarioError",
    "FleetGroup",
    "VehicleModel",
    "ChargerModel",
    "Behaviour",
    "TimeOfDay",
    "SignalsModel",
    "OEMProfile",
    "ControlModel",
    "ChecksModel",
    "Publication",
    "Latency",
    "Outage",
    "PreferencesModel",
    "load_scenario",
    "parse_scenario",
    "scenario_json_schema",
    "POLICIES",
    "CurrentControl",
    "check_policy",
    "policy_problem",
]



class ScenarioError(ValueError):
    """A scenario (or session CSV) is invalid. ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _minutes(t: time) -> int:
    return t.hour * 60 + t.minute


def _soc_field(value: float, name: str) -> float:
    if 1.0 < value <= 100.0:
        raise ValueError(f"{name} is a fraction 0..1, got {value:g}; did you mean {value / 100:g}?")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value:g}")
    return value


# Plausibility bounds catch unit mistakes (W for kW, Wh for kWh) with a hint instead of
# silently simulating a 60,000 kWh battery. The largest production EV packs are ~200 kWh and AC
# on-board chargers stop at 22 kW; the bounds leave room above both.
_MAX_BATTERY_KWH = 300.0
_MAX_AC_KW = 50.0


def _unit_check(value: float, limit: float, unit: str, smaller: str) -> float:
    if value > limit:
        hint = f"; it looks like {smaller}, give it in {unit}" if value >= 1000 else ""
        raise ValueError(f"{value:g} {unit} is implausibly large (at most {limit:g}){hint}")
    return value


class VehicleModel(_Model):
    """The car model of a fleet group."""

    model: str = "generic-60kWh"
    battery_kwh: Annotated[float, Field(gt=0, description="usable battery capacity, kWh")] = 60.0
    max_ac_kw: Annotated[float, Field(gt=0, description="car's maximum AC draw, kW")] = 7.4
    efficiency: Annotated[float, Field(gt=0, le=1, description="grid-to-battery efficiency")] = 0.9
    taper_knee_soc: Annotated[float, Field(description="SoC where the taper starts (fraction)")] = 0.8
    taper_floor_kw: Annotated[float, Field(ge=0, description="car's limit at 100 % SoC, kW")] = 1.5
    consumption_kwh_per_km: Annotated[float, Field(gt=0, le=1, description="driving use, kWh/km")] = 0.18
    ignores_stop: bool = Field(False, description="this model keeps charging when told to stop")

    @field_validator("battery_kwh")
    @classmethod
    def _battery(cls, v: float) -> float:
        return _unit_check(v, _MAX_BATTERY_KWH, "kWh", "Wh")

    @field_validator("max_ac_kw", "taper_floor_kw")
    @classmethod
    def _power(cls, v: float) -> float:
        return _unit_check(v, _MAX_AC_KW, "kW", "W")

    @field_validator("taper_knee_soc")
    @classmethod
    def _knee(cls, v: float) -> float:
        return _soc_field(v, "taper_knee_soc")


class ChargerModel(_Model):
    max_kw: Annotated[float, Field(gt=0, description="charge point limit, kW")] = 7.0

    @field_validator("max_kw")
    @classmethod
    def _power(cls, v: float) -> float:
        return _unit_check(v, _MAX_AC_KW, "kW", "W")


class TimeOfDay(_Model):
    """A time of day drawn from a normal distribution truncated to [earliest, latest] (UTC)."""

    mean: time
    sd_minutes: Annotated[float, Field(ge=0)] = 0.0
    earliest: time = time(0, 0)
    latest: time = time(23, 59)

    @model_validator(mode="after")
    def _bounds(self) -> TimeOfDay:
        if not self.earliest <= self.mean <= self.latest:
            raise ValueError(
                f"mean {self.mean:%H:%M} must lie between earliest {self.earliest:%H:%M} "
                f"and latest {self.latest:%H:%M}"
            )
        return self


class DailyDistance(_Model):
    """Distance driven per day: lognormal with this mean and standard deviation (km)."""

    mean_km: Annotated[float, Field(ge=0, le=2000)] = 35.0
    sd_km: Annotated[float, Field(ge=0)] = 20.0

    @model_validator(mode="after")
    def _spread(self) -> DailyDistance:
        # A coefficient of variation above 5 is not a daily-driving pattern, and it would make
        # the lognormal's sigma overflow for tiny means.
        if self.sd_km > 5 * self.mean_km:
            raise ValueError(f"sd_km {self.sd_km:g} is more than 5 × mean_km {self.mean_km:g}")
        return self


class Behaviour(_Model):
    """Drivers' daily cycle: come home, maybe plug in, leave the next morning."""

    plug_in: TimeOfDay = TimeOfDay(mean=time(18, 30), sd_minutes=90, earliest=time(15, 0), latest=time(23, 30))
    departure: TimeOfDay = TimeOfDay(mean=time(7, 45), sd_minutes=50, earliest=time(5, 0), latest=time(10, 30))
    departure_day_offset: Annotated[
        int, Field(ge=0, le=1, description="0: leave the same day as plug-in; 1: the next day")
    ] = 1
    ready_by: TimeOfDay = Field(
        default=TimeOfDay(mean=time(7, 0), sd_minutes=30, earliest=time(5, 30), latest=time(9, 30)),
        description="declared ready-by time, drawn once per vehicle",
    )
    departs_at_ready_by: bool = Field(
        False, description="drivers leave exactly at their declared ready-by (no early departures)"
    )
    plug_in_probability: Annotated[float, Field(gt=0, le=1, description="chance of plugging in on a day")] = 0.75
    daily_distance: DailyDistance = DailyDistance()
    initial_soc: tuple[float, float] = Field(
        default=(0.25, 0.6), description="SoC at the first plug-in: uniform between the two values"
    )

    @field_validator("initial_soc")
    @classmethod
    def _initial(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = (_soc_field(x, "initial_soc") for x in v)
        if lo > hi:
            raise ValueError(f"initial_soc range is reversed ({lo:g} > {hi:g})")
        return v

    @model_validator(mode="after")
    def _cycle(self) -> Behaviour:
        dep_latest = self.departure_day_offset * 1440 + _minutes(self.departure.latest)
        if dep_latest >= 1440 + _minutes(self.plug_in.earliest):
            raise ValueError(
                "departure.latest must come before the next day's plug_in.earliest, "
                "otherwise a car would plug in again before it has left"
            )
        if self.departs_at_ready_by and _minutes(self.ready_by.latest) >= _minutes(self.plug_in.earliest):
            raise ValueError(
                "with departs_at_ready_by, ready_by.latest must come before plug_in.earliest "
                "(a car leaves at its ready-by and plugs in again later that day)"
            )
        if self.departure_day_offset == 0 and _minutes(self.departure.earliest) <= _minutes(self.plug_in.latest):
            raise ValueError(
                "with departure_day_offset 0, departure.earliest must be after plug_in.latest"
            )
        return self


class PreferencesModel(_Model):
    target_soc: float = 0.8
    min_soc: float = 0.2

    @field_validator("target_soc", "min_soc")
    @classmethod
    def _soc(cls, v: float, info: Any) -> float:
        return _soc_field(v, info.field_name)

    @model_validator(mode="after")
    def _order(self) -> PreferencesModel:
        if self.min_soc > self.target_soc:
            raise ValueError(f"min_soc {self.min_soc:g} is above target_soc {self.target_soc:g}")
        return self


class FleetGroup(_Model):
    """``count`` identical cars with the same driver behaviour distribution."""

    name: str = "cars"
    count: Annotated[int, Field(gt=0, le=1_000_000)]
    vehicle: VehicleModel = VehicleModel()
    charger: ChargerModel = ChargerModel()
    behaviour: Behaviour = Behaviour()
    preferences: PreferencesModel = PreferencesModel()
    oem: str = "default"
    accounts: Annotated[int, Field(gt=0)] | None = Field(
        None, description="OEM accounts the group's cars are split over (a fleet: 1); null: one account per car"
    )

    @model_validator(mode="after")
    def _accounts(self) -> FleetGroup:
        if self.accounts is not None and self.accounts > self.count:
            raise ValueError(f"accounts {self.accounts} is more than the group's {self.count} cars")
        return self


class Latency(_Model):
    """Response time of a call: lognormal with this median and 95th percentile (seconds)."""

    median_s: Annotated[float, Field(ge=0)] = 0.0
    p95_s: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _order(self) -> Latency:
        if self.p95_s < self.median_s:
            raise ValueError(f"p95_s {self.p95_s:g} is below median_s {self.median_s:g}")
        if self.median_s == 0 and self.p95_s > 0:
            raise ValueError("a latency with p95_s > 0 needs median_s > 0")
        return self


class Outage(_Model):
    """A period when every call to the OEM cloud fails (5xx) and webhooks are held back."""

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _order(self) -> Outage:
        for name in ("start", "end"):
            if getattr(self, name).tzinfo is None:
                raise ValueError(f"outage {name} needs a timezone, e.g. 2026-01-13T18:00:00Z")
        if self.end <= self.start:
            raise ValueError(f"outage end {self.end} is not after its start {self.start}")
        return self


class CurrentControl(_Model):
    """Settable charging current: ``min_amps`` .. ``max_amps`` in ``step_amps`` steps, at
    ``volts`` on ``phases`` phases (kW = A × V × phases / 1000)."""

    min_amps: Annotated[float, Field(gt=0, le=80)] = 6.0
    max_amps: Annotated[float, Field(gt=0, le=80)] = 32.0
    step_amps: Annotated[float, Field(gt=0, le=16)] = 1.0
    volts: Annotated[float, Field(gt=100, le=480)] = 230.0
    phases: Literal[1, 2, 3] = 1

    @model_validator(mode="after")
    def _order(self) -> CurrentControl:
        if self.min_amps > self.max_amps:
            raise ValueError(f"min_amps {self.min_amps:g} is above max_amps {self.max_amps:g}")
        return self


class OEMProfile(_Model):
    """How a (simulated) OEM cloud behaves. Defaults: a perfect, instant, always-awake cloud."""

    push: bool = Field(
        True, description="pushes telemetry (webhooks) on plug-in, unplug and charging changes; else polled"
    )
    push_delay_s: Annotated[float, Field(ge=0, description="webhook delivery delay, seconds")] = 0.0
    charge_on_plug_in: bool = Field(True, description="the car starts charging by itself when plugged in")
    read_latency: Latency = Latency()
    command_latency: Latency = Latency()
    wake_latency: Latency = Latency()
    failure_rate: Annotated[float, Field(ge=0, le=0.95, description="share of calls failing with a 5xx")] = 0.0
    outages: list[Outage] = Field(default_factory=list)
    calls_per_vehicle_per_hour: Annotated[int, Field(gt=0)] | None = Field(
        None, description="per-vehicle quota over any rolling hour; beyond it calls get 429 + Retry-After"
    )
    calls_per_account_per_hour: Annotated[int, Field(gt=0)] | None = Field(
        None, description="per-account quota over any rolling hour (429 with scope 'account')"
    )
    calls_per_application_per_minute: Annotated[int, Field(gt=0)] | None = Field(
        None, description="quota for all calls to this cloud over any rolling minute (429 with scope 'application')"
    )
    sleep_after_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="a car that is not charging falls asleep after this long without a call"
    )
    soc_step: Annotated[float, Field(ge=0, le=0.1, description="SoC is reported floored to this step")] = 0.0
    reading_max_age_s: Annotated[float, Field(ge=0)] = Field(
        0.0, description="the cloud answers reads from a cache up to this old (seconds)"
    )
    token_lifetime_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="access tokens expire this long after they are issued"
    )
    ignore_stop_probability: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="chance that an acknowledged stop is silently ignored by the car"
    )
    current_control: CurrentControl | None = Field(
        None, description="the charging current can be set (Tesla set_charging_amps); null: start/stop only"
    )
    charge_limit_control: bool = Field(False, description="the car's charge limit can be set through the API")
    api: str | None = Field(
        None, description="the OEM API this cloud speaks when the run goes over HTTP (oem_transport: http): "
                          "a registered head, e.g. smartcar or tesla"
    )

    @field_validator("api")
    @classmethod
    def _api(cls, v: str | None) -> str | None:
        if v is not None:
            from adapters import HEADS  # the registry of heads; imported on use

            if v not in HEADS:
                raise ValueError(f"unknown OEM API '{v}'; the registered heads are {', '.join(sorted(HEADS))}")
        return v


class SignalShape(_Model):
    """A built-in daily shape (see :mod:`twin.signals`) or a CSV file of values."""

    shape: Literal["agile_like", "flat", "gb_carbon_like"] | None = None
    csv: str | None = Field(None, description="CSV with a UTC 'slot_start' column, relative to the scenario file")
    column: str | None = Field(None, description="column to read from the CSV")
    scale: Annotated[float, Field(gt=0)] = 1.0

    @model_validator(mode="after")
    def _one(self) -> SignalShape:
        if (self.shape is None) == (self.csv is None):
            raise ValueError("give exactly one of 'shape' or 'csv'")
        return self


class ForecastError(_Model):
    """Forecast = actual × (1 + error), error drawn per slot with this relative sd."""

    price_relative_sd: Annotated[float, Field(ge=0, le=2)] = 0.0
    carbon_relative_sd: Annotated[float, Field(ge=0, le=2)] = 0.0


class Publication(_Model):
    """When forecasts become known to the platform (UTC).

    Day-ahead prices for the delivery day starting at ``price_day_starts`` are published
    daily at ``price_at`` (Agile: ~16:00 UK for 23:00→23:00). Carbon forecasts are published at
    the same times and reach ``carbon_hours_ahead`` ahead (the GB Carbon Intensity API's fw48h).
    Beyond what is published the smart policy assumes persistence (same slot a day earlier).
    """

    price_at: time = time(16, 0)
    price_day_starts: time = time(23, 0)
    carbon_hours_ahead: Annotated[float, Field(gt=0, le=168)] = 48.0


class SignalsModel(_Model):
    slot_minutes: Literal[15, 30] = 30
    price: SignalShape = SignalShape(shape="agile_like")
    carbon: SignalShape = SignalShape(shape="gb_carbon_like")
    day_to_day_sd: Annotated[float, Field(ge=0, le=1, description="relative sd of each day's level")] = 0.12
    forecast_error: ForecastError = ForecastError()
    publication: Publication | None = Field(
        default_factory=Publication, description="null: all forecasts known from the start"
    )


class ControlModel(_Model):
    """What the planning policies optimise and how the control loop is tuned (seconds unless
    named otherwise; defaults and the reasons for them: :mod:`twin.control.config`)."""

    carbon_weight_gbp_per_kg: Annotated[float, Field(ge=0, le=10)] = 0.0
    start_penalty_gbp: Annotated[float, Field(ge=0, le=10)] = 0.02
    min_run_slots: Annotated[int, Field(ge=1, le=48)] = 1
    plan_margin_soc: Annotated[float, Field(ge=0, le=0.1)] = 0.005
    margin_soc_per_hour: Annotated[float, Field(ge=0, le=0.05)] = 0.002
    peak_weight_gbp_per_kwh: Annotated[float, Field(ge=0, le=10)] = 0.0
    capacity_price_gbp_per_kwh: Annotated[float, Field(ge=0, le=100)] = 0.0
    departure_quantile: Annotated[float, Field(ge=0, lt=1)] = 0.01
    departure_prior_min: Annotated[float, Field(ge=0, le=720)] = 60.0
    poll_interval_s: Annotated[float, Field(gt=0)] = 900.0
    plugged_poll_interval_s: Annotated[float, Field(gt=0)] = 1800.0
    retry_base_s: Annotated[float, Field(gt=0)] = 30.0
    retry_max_s: Annotated[float, Field(gt=0)] = 1800.0
    backoff_slack_share: Annotated[float, Field(gt=0, le=1)] = 0.25
    verify_after_s: Annotated[float, Field(gt=0)] = 600.0
    escalate_after: Annotated[int, Field(ge=1)] = 2
    escalate_within_s: Annotated[float, Field(gt=0)] = 1800.0
    replan_soc_deviation: Annotated[float, Field(gt=0, le=1)] = 0.03
    replan_late_s: Annotated[float, Field(ge=0)] = 120.0
    check_before_deadline_s: Annotated[float, Field(ge=0)] = 3600.0
    notify_shift_s: Annotated[float, Field(ge=0)] = 1800.0
    notify_soc_shift: Annotated[float, Field(ge=0, le=1)] = 0.05
    call_timeout_s: Annotated[float, Field(gt=0)] = 310.0
    replan_after_failure_s: Annotated[float, Field(gt=0)] = 300.0
    site_grace_s: Annotated[float, Field(ge=0)] = 60.0

    @model_validator(mode="after")
    def _retry(self) -> ControlModel:
        if self.retry_max_s < self.retry_base_s:
            raise ValueError(f"retry_max_s {self.retry_max_s:g} is below retry_base_s {self.retry_base_s:g}")
        return self

    def controller_config(self) -> ControllerConfig:
        return ControllerConfig(**{f: getattr(self, f) for f in ControllerConfig.__dataclass_fields__})

    def params(self, site: SiteModel | None = None) -> ControlParams:
        """The objective; the site's tariff (its demand charge) comes from ``site``."""
        fields = {f: getattr(self, f) for f in ControlParams.__dataclass_fields__ if f in type(self).model_fields}
        if site is not None:
            fields["demand_charge_gbp_per_kw_month"] = site.demand_charge_gbp_per_kw_month
        return ControlParams(**fields)


class Threshold(_Model):
    """Bounds on one KPI: ``min`` and/or ``max``."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs 'min' or 'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


class ChecksModel(_Model):
    """KPI thresholds ``twin check`` enforces: ``thresholds[policy][kpi]``."""

    policies: list[str] = Field(default_factory=lambda: ["uncontrolled", "smart", "optimal"])
    thresholds: dict[str, dict[str, Threshold]] = Field(default_factory=dict)

    @field_validator("policies")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if (problem := policy_problem(name)) is not None:
                raise ValueError(problem)
        if len(set(v)) != len(v):
            raise ValueError("policies are listed more than once")
        return v

    @model_validator(mode="after")
    def _covered(self) -> ChecksModel:
        for policy in self.thresholds:
            if policy not in self.policies:
                raise ValueError(f"thresholds for '{policy}', which is not in policies {self.policies}")
        return self


class SessionReplay(_Model):
    """Replay recorded sessions from a CSV instead of generating them."""

    csv: str = Field(description="path relative to the scenario file")
    vehicle: VehicleModel = VehicleModel()
    charger: ChargerModel = ChargerModel()
    preferences: PreferencesModel = PreferencesModel()
    oem: str = "default"


class SiteModel(_Model):
    """Where the cars charge: the feeder they share and its tariff."""

    feeder_kw: Annotated[float, Field(gt=0)] | None = Field(
        None, description="the site's feeder or breaker limit, kW at every instant; null: none")
    demand_charge_gbp_per_kw_month: Annotated[float, Field(ge=0, le=100)] = Field(
        0.0, description="demand charge, GBP per kW of the month's peak (averaged over demand_window_minutes)")
    demand_window_minutes: Annotated[int, Field(ge=1, le=60)] = Field(
        30, description="the averaging window of the metered demand peak, minutes")
    capacity_kw: Annotated[float, Field(gt=0)] | None = Field(
        None, description="a network operator's capacity signal for the fleet, kW (constant)")
    capacity_csv: str | None = Field(
        None, description="the same per slot: CSV with 'slot_start' (UTC) and 'capacity_kw', relative to the scenario")

    @model_validator(mode="after")
    def _capacity(self) -> SiteModel:
        if self.capacity_kw is not None and self.capacity_csv is not None:
            raise ValueError("give capacity_kw or capacity_csv, not both")
        return self


class Scenario(_Model):
    """A runnable case: fleet (or replayed sessions), signals, OEM behaviour, site."""

    name: str = "scenario"
    description: str = ""
    start: datetime = Field(
        default=datetime(2026, 1, 12, tzinfo=timezone.utc),
        description="first day (UTC midnight is typical); tz-aware",
    )
    days: Annotated[int, Field(gt=0, le=366, description="days on which sessions start")] = 7
    seed: int = 1
    policy: str = "uncontrolled"
    fleet: list[FleetGroup] = Field(default_factory=list)
    sessions: SessionReplay | None = None
    signals: SignalsModel = SignalsModel()
    oem_profiles: dict[str, OEMProfile] = Field(default_factory=lambda: {"default": OEMProfile()})
    site: SiteModel = SiteModel()
    control: ControlModel = ControlModel()
    checks: ChecksModel | None = None
    oem_transport: Literal["direct", "http"] = Field(
        "direct", description="direct: the controller calls the simulated clouds; http: every OEM call goes "
                              "through the profile's head (its HTTP client) to its emulator, in virtual time"
    )
    #: where relative paths in the file are resolved (not part of the file)
    _base_dir: Path = PrivateAttr(default=Path("."))

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def resolve(self, relative: str) -> Path:
        """A path given in the file, resolved against the file's folder."""
        return (self._base_dir / relative).resolve()

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("start needs a timezone, e.g. 2026-01-12T00:00:00Z")
        return v.astimezone(timezone.utc)

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if (problem := policy_problem(v)) is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if not self.fleet and self.sessions is None:
            raise ValueError("give a 'fleet' (generated sessions) or 'sessions' (a CSV to replay)")
        if self.fleet and self.sessions is not None:
            raise ValueError("give either 'fleet' or 'sessions', not both")
        names = [g.name for g in self.fleet]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"fleet group names must be unique; repeated: {', '.join(dupes)}")
        for where, oem in [(f"fleet group '{g.name}'", g.oem) for g in self.fleet] + (
            [("sessions", self.sessions.oem)] if self.sessions else []
        ):
            if oem not in self.oem_profiles:
                raise ValueError(
                    f"{where} uses OEM profile '{oem}', which is not in oem_profiles "
                    f"({', '.join(sorted(self.oem_profiles)) or 'none defined'})"
                )
        if self.oem_transport == "http":
            from adapters import head

            used = sorted({g.oem for g in self.fleet} | ({self.sessions.oem} if self.sessions else set()))
            problems = []
            for name in used:
                profile = self.oem_profiles[name]
                if profile.api is None:
                    problems.append(f"oem_profiles.{name}.api: name the OEM API the run talks over HTTP "
                                    f"(oem_transport: http), e.g. smartcar or tesla")
                    continue
                problems += [f"oem_profiles.{name}.{p}" for p in head(profile.api).problems(profile)]
            if problems:
                raise ValueError("oem_transport http: " + "; ".join(problems))
        return self

    def control_settings(self) -> ControlSettings:
        """The control path's settings: the ``control`` section, slot length and feeder limit."""
        c = self.control
        return ControlSettings(c.controller_config(), c.params(self.site), self.signals.slot_minutes, self.site.feeder_kw)


def policy_problem(name: str) -> str | None:
    """What is wrong with a policy name (None if it is one of :data:`POLICIES`)."""
    if name in POLICIES:
        return None
    return f"unknown policy '{name}'; choose one of: {', '.join(POLICIES)}"


def check_policy(name: str, where: str = "policy") -> str:
    """``name`` if it is a known policy; otherwise a :class:`ScenarioError` naming ``where``."""
    problem = policy_problem(name)
    if problem is not None:
        raise ScenarioError(where, [problem])
    return name


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    msg = err.get("msg", "")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see scenarios/scenario.schema.json)"
    if kind == "missing":
        return "required field is missing"
    if kind in ("value_error", "assertion_error"):
        return msg
    got = err.get("input")
    if kind not in ("model_type",) and got is not None and not isinstance(got, (dict, list)):
        return f"{msg[0].lower() + msg[1:] if msg else msg} (got {got!r})"
    return msg


def _problems(exc: ValidationError) -> list[str]:
    return [f"{_loc(e['loc'])}: {_message(e)}" for e in exc.errors()]


def parse_scenario(data: Any, *, source: str = "<scenario>", base_dir: Path | str = ".") -> Scenario:
    """Validate a scenario given as a mapping (e.g. parsed YAML, or built in a notebook)."""
    if not isinstance(data, dict):
        raise ScenarioError(source, ["the file must contain a mapping of scenario fields"])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, _problems(exc)) from None
    scenario._base_dir = Path(base_dir)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(str(path), [f"{where}not valid YAML: {problem}"]) from None
    return parse_scenario(data, source=str(path), base_dir=path.parent)


def scenario_json_schema() -> str:
    """The JSON Schema of scenario files, as stable, pretty-printed JSON text."""
    schema = Scenario.model_json_schema(mode="validation")
    schema["title"] = "chargetwin scenario"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
