"""The API's request and response bodies (pydantic), with the checks that make a bad request a
clear 422 that changes nothing."""

from __future__ import annotations

import re
from datetime import datetime, time, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "SignUp", "UserOut", "TokenOut", "ApiKeyIn", "ApiKeyOut", "DayPlan", "PreferencesIn", "OverrideIn",
    "VehiclePatch", "WebhookEndpointIn", "WEEKDAYS",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignUp(_Body):
    email: Annotated[str, Field(max_length=254, examples=["driver@example.org"])]
    password: Annotated[str, Field(min_length=10, max_length=1024, examples=["correct horse battery"])]

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        v = v.strip().lower()
        if not _EMAIL.match(v):
            raise ValueError("not an email address")
        return v


class UserOut(BaseModel):
    id: str
    email: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class ApiKeyIn(_Body):
    label: Annotated[str, Field(min_length=1, max_length=80, examples=["home automation"])] = "api key"


class ApiKeyOut(BaseModel):
    id: str
    label: str
    key: str = Field(description="shown once: store it now")


class DayPlan(_Body):
    """When the car must be ready on one weekday, and how full (UTC time of day; a time with an
    offset, ``07:30+01:00``, is converted to UTC)."""

    ready_by: Annotated[time, Field(examples=["07:30"])]
    target_soc: Annotated[float, Field(gt=0, le=1, examples=[0.8])]

    @field_validator("ready_by")
    @classmethod
    def _utc(cls, v: time) -> time:
        if v.tzinfo is None:
            return v.replace(second=0, microsecond=0)
        moment = datetime.combine(datetime(2026, 1, 5).date(), v).astimezone(timezone.utc)
        return moment.time().replace(second=0, microsecond=0)


class PreferencesIn(_Body):
    """Ready-by time and target per weekday (``mon`` .. ``sun``; days left out keep the
    ``default``), the minimum SoC reached as soon as possible whatever the price, and how much
    a kilogram of CO2 is worth to the driver."""

    default: DayPlan = DayPlan(ready_by=time(7, 0), target_soc=0.8)
    days: dict[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], DayPlan] = Field(
        default_factory=dict, examples=[{"sat": {"ready_by": "10:00", "target_soc": 0.9}}])
    min_soc: Annotated[float, Field(ge=0, le=1, examples=[0.2])] = 0.0
    carbon_weight_gbp_per_kg: Annotated[float, Field(ge=0, le=10)] = 0.0

    @model_validator(mode="after")
    def _targets_above_minimum(self) -> PreferencesIn:
        for name, day in [("default", self.default), *self.days.items()]:
            if day.target_soc < self.min_soc:
                raise ValueError(f"{name}: target_soc {day.target_soc:g} is below min_soc {self.min_soc:g}")
        return self

    def for_weekday(self, weekday: int) -> DayPlan:
        return self.days.get(WEEKDAYS[weekday], self.default)


class OverrideIn(_Body):
    """A one-off: ``ready_by`` (ready by ``ready_by_at`` with ``target_soc``, for the next
    session only) or ``charge_now`` (charge to the target at once, whatever the price)."""

    kind: Literal["ready_by", "charge_now"]
    ready_by_at: Annotated[datetime | None, Field(examples=["2026-12-03T06:00:00Z"])] = None
    target_soc: Annotated[float | None, Field(gt=0, le=1)] = None

    @model_validator(mode="after")
    def _consistent(self) -> OverrideIn:
        if self.kind == "ready_by":
            if self.ready_by_at is None:
                raise ValueError("a ready_by override needs ready_by_at")
            if self.ready_by_at.tzinfo is None:
                raise ValueError("ready_by_at needs a timezone, e.g. 2026-12-03T06:00:00Z")
            self.ready_by_at = self.ready_by_at.astimezone(timezone.utc)
        elif self.ready_by_at is not None:
            raise ValueError("charge_now takes no ready_by_at")
        return self


class VehiclePatch(_Body):
    battery_kwh: Annotated[float | None, Field(gt=5, le=250, examples=[64])] = None
    max_kw: Annotated[float | None, Field(gt=1, le=50, examples=[7.4])] = None


class WebhookEndpointIn(_Body):
    url: Annotated[str, Field(max_length=2000, examples=["https://example.org/chargetwin/hook"])]

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("an http:// or https:// URL")
        return v
