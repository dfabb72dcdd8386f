"""The control path: the one place that decides when each car charges.

* :mod:`twin.control.events` — actions (controller -> host) and events (host -> controller);
* :mod:`twin.control.track` — one car's state as two explicit state machines, and its plan;
* :mod:`twin.control.controller` — :class:`Controller`, whose ``step()`` makes every decision;
* :mod:`twin.control.policies` — uncontrolled, edf, smart, smart_onoff, optimal replay;
* :mod:`twin.control.planning` — scheduler problems from cars, plans from solutions;
* :mod:`twin.control.budget` — call budgets per rate-limit scope;
* :mod:`twin.control.config` — the loop's tunables and the objective;
* :mod:`twin.control.compose` — :func:`build_controller`, used by the twin and the server.
"""

from twin.control.compose import SeededIds, build_controller, uuid_ids
from twin.control.config import ControllerConfig, ControlParams, ControlSettings
from twin.control.controller import Controller
from twin.control.events import (
    Action, AuthorizationRestored, CallFailed, CallSucceeded, Event, ForecastUpdated, Notify, PlanRequest,
    PlansReady, PreferencesChanged, Read, SetChargeLimit, SetChargingCurrent, StartCharging, StopCharging,
    Telemetry, Wake,
)
from twin.control.policies import POLICIES, Optimal, Policy, Smart, Uncontrolled, make_policy
from twin.control.track import Link, ManagedVehicle, Session, SessionPlan, VehicleTrack

__all__ = [
    "Action", "AuthorizationRestored", "CallFailed", "CallSucceeded", "ControlParams", "ControlSettings",
    "Controller", "ControllerConfig", "Event", "ForecastUpdated", "Link", "ManagedVehicle", "Notify",
    "Optimal", "POLICIES", "PlanRequest", "PlansReady", "Policy", "PreferencesChanged", "Read", "SeededIds",
    "Session", "SessionPlan", "SetChargeLimit", "SetChargingCurrent", "Smart", "StartCharging", "StopCharging",
    "Telemetry", "Uncontrolled", "VehicleTrack", "Wake", "build_controller", "make_policy", "uuid_ids",
]
