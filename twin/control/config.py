"""Settings of the control path: what the policies optimise and how the loop is tuned.

Every field here is also a field of a scenario's ``control`` section (``twin.scenario.
ControlModel``, with the same name and default; a test keeps the two in step), and the live
server reads the same names from its settings.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ControllerConfig", "ControlParams", "ControlSettings"]


@dataclass(frozen=True)
class ControllerConfig:
    """Tunables of the control loop (seconds unless named otherwise)."""

    # A D2V platform that polls must notice a plug-in within a settlement slot to plan it;
    # 15 min is the usual compromise with per-vehicle data quotas (Tesla's historical limit was
    # one data request per car per 5 min; Smartcar asks for no more than needed).
    poll_interval_s: float = 900.0
    # Once plugged in, a polled car only needs checking for departure and progress.
    plugged_poll_interval_s: float = 1800.0
    retry_base_s: float = 30.0
    # Beyond ~30 min a retry no longer helps within a typical overnight window.
    retry_max_s: float = 1800.0
    # A plugged-in car that still needs charge is retried at least every this share of its
    # slack (time to ready-by minus the time charging flat out takes), so exponential back-off
    # never sleeps through the last chance to start it; never more often than retry_base_s.
    backoff_slack_share: float = 0.25
    # Commands take effect within seconds to a couple of minutes; clouds cache readings for
    # minutes. Ten minutes lets a fresh reading exist before we judge the car.
    verify_after_s: float = 600.0
    # A car that ignored "stop" twice is not going to obey a third time soon (it is the model,
    # or the car's own schedule overrides the API); further commands only burn quota.
    escalate_after: int = 2
    # A car that disobeyed a stop and cannot be confirmed stopped this long afterwards (reads
    # failing, quota exhausted) is escalated anyway: it may be charging against the plan.
    escalate_within_s: float = 1800.0
    # Re-plan when a reading differs from the estimate by more than this (SoC fraction): above
    # the 1 % reporting step of most clouds plus estimation error over an hour.
    replan_soc_deviation: float = 0.03
    # A start that lands this much after its slot began has cost charge the plan counted on.
    replan_late_s: float = 120.0
    # One check read this long before the deadline catches a plan that is falling behind.
    check_before_deadline_s: float = 3600.0
    # Tell the driver again when the start time moves by this much or the expected SoC by 5 %.
    notify_shift_s: float = 1800.0
    notify_soc_shift: float = 0.05
    # Every OEM call is abandoned (and retried as a transient failure) after this long. The
    # Smartcar SDK waits 310 s: commands can legitimately take minutes.
    call_timeout_s: float = 310.0
    # A car believed to have stopped at its charge limit still counts against a site limit this
    # long after the estimate says so, unless a reading confirms it: estimates run early or late
    # by seconds to a minute over a night's charge.
    site_grace_s: float = 60.0
    # A planning job that failed is tried again this much later; meanwhile the car charges as
    # it would uncontrolled, so a solver failure never costs the driver their charge.
    replan_after_failure_s: float = 300.0


@dataclass(frozen=True)
class ControlParams:
    """What the planning policies optimise: cost + weight × carbon, per car."""

    carbon_weight_gbp_per_kg: float = 0.0
    # Each start is an OEM call that may wake the car; a few pence per start stops a plan from
    # toggling a car for a saving smaller than the risk of the command going wrong.
    start_penalty_gbp: float = 0.02
    min_run_slots: int = 1
    # Plans aim this far above the target (SoC fraction) and the car's own limit stops it at
    # the target: the margin is a little time, not charge. It covers what dispatch loses (each
    # start lands seconds to a minute after its slot begins) ...
    plan_margin_soc: float = 0.005
    # ... and what the estimate may have drifted since the last reading (per hour of its age).
    margin_soc_per_hour: float = 0.002
    # Price on the fleet's own load, GBP/kWh at a load equal to the capacity (the network
    # operator's signal, or the fleet's total power): the marginal cost of a quadratic cost of
    # load, so that cars planned one after another spread over near-equal slots instead of all
    # starting in the cheapest one (herding). 0: off.
    peak_weight_gbp_per_kwh: float = 0.0
    # Extra price for energy planned where the fleet's load would exceed the capacity signal.
    capacity_price_gbp_per_kwh: float = 0.0
    # The site's demand charge, GBP per kW of its monthly peak (slot-average, as meters bill it):
    # plans keep under the peak the site has already reached this month where they can.
    demand_charge_gbp_per_kw_month: float = 0.0
    # Plan to be ready by this quantile of when drivers really leave relative to their declared
    # ready-by (their own history, or the site's drivers' while theirs is short), when that is
    # earlier: a driver who leaves early still finds the charge. 0: plan to the declared time.
    departure_quantile: float = 0.01
    # Before any departures are known, plan to be ready this many minutes before ready-by
    # (not under a site limit, where an earlier aim takes room the other cars need).
    departure_prior_min: float = 60.0


@dataclass(frozen=True)
class ControlSettings:
    """Everything that configures a controller besides its cars: the loop, the objective, the
    planning slot grid and the site's feeder limit (kW at every instant; None: no limit)."""

    config: ControllerConfig = ControllerConfig()
    params: ControlParams = ControlParams()
    slot_minutes: int = 30
    feeder_kw: float | None = None
