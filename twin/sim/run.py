"""Assemble and run a scenario in the twin.

:func:`build` wires a scenario into a :class:`Twin`, independent of who hosts the loop: sessions
(generated or replayed) and forecast publications form one *timeline* that a :class:`Player`
applies to the world; each OEM profile becomes a :class:`~twin.sim.oem.SimulatedOEM`; the
controller gets the chosen policy. :func:`simulate` hosts it in SimPy with the
:class:`~twin.sim.driver.SimDriver`; :func:`twin.aio.simulate_async` hosts the very same twin in
asyncio. Everything random is drawn from generators spawned from the one seed, so the same
scenario and seed give identical outputs.
"""

from __future__ import annotations

import time as wallclock
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import simpy

from twin.battery import ChargeCurve, curve_arrays
from twin.controller import (
    Controller,
    ControllerConfig,
    Event,
    ForecastUpdated,
    Policy,
    PreferencesChanged,
    SessionPlan,
    Uncontrolled,
)
from twin.domain import Charger, Preferences, Signals, VehicleSpec
from twin.results import SimulationResult, build_result
from twin.scenario import Scenario, ScenarioError, check_policy, load_scenario, parse_scenario
from twin.signals import build_signals
from twin.sim.behaviour import generate_fleet, read_sessions_csv
from twin.sim.clock import SimClock
from twin.sim.driver import SimDriver
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

__all__ = ["simulate", "build", "finish", "prepare", "Twin", "Player", "as_scenario"]

_PUBLISH, _DEPART, _ARRIVE = 0, 1, 2  # order of timeline events at the same instant
#: simulated time between progress callbacks
_PROGRESS_CHUNK_S = 6 * 3600.0


class Clock(Protocol):
    """What the twin needs from a host's clock (see :class:`~twin.sim.clock.SimClock`)."""

    start: datetime

    @property
    def seconds(self) -> float: ...

    def now(self) -> datetime: ...

    def at(self, seconds: float) -> datetime: ...

    def sleep(self, seconds: float) -> Any: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None: ...


def as_scenario(scenario: Scenario | str | Path | dict[str, Any]) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, dict):
        return parse_scenario(scenario)
    return load_scenario(scenario)


def prepare(scenario: Scenario, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, datetime, Signals, np.random.Generator]:
    """Vehicles, sessions, time origin, signals and the OEM generator for one run."""
    behaviour_seq, signals_seq, oem_seq = np.random.SeedSequence(seed).spawn(3)
    if scenario.sessions is not None:
        vehicles, sessions = read_sessions_csv(scenario.resolve(scenario.sessions.csv), scenario.sessions)
        first_arrival = sessions["arrival"].min()
        start = (
            scenario.start
            if "start" in scenario.model_fields_set
            else first_arrival.floor("D").to_pydatetime()
        )
        if first_arrival < pd.Timestamp(start):
            raise ScenarioError(
                str(scenario.resolve(scenario.sessions.csv)),
                [f"first session arrives at {first_arrival}, before the scenario start {start}"],
            )
    else:
        start = scenario.start
        vehicles, sessions = generate_fleet(scenario.fleet, start, scenario.days, np.random.default_rng(behaviour_seq))
    end = pd.Timestamp(start) + pd.Timedelta(days=scenario.days)
    if not sessions.empty:
        end = max(end, sessions["departure"].max())
    signals = build_signals(
        scenario.signals, start, end + pd.Timedelta(hours=1),
        np.random.default_rng(signals_seq), scenario.base_dir,
    )
    return vehicles, sessions, signals.start, signals, np.random.default_rng(oem_seq)


def publications(scenario: Scenario, signals: Signals) -> list[tuple[datetime, pd.DataFrame]]:
    """Forecast publications as (time, frame) pairs in time order (see ``Publication``).

    Each frame holds every future slot known at that time: prices up to the end of the latest
    published delivery day, carbon up to ``carbon_hours_ahead``; NaN where not (yet) known.
    """
    frame = signals.frame[["price_forecast_gbp_per_kwh", "carbon_forecast_g_per_kwh"]].rename(
        columns={"price_forecast_gbp_per_kwh": "price_gbp_per_kwh", "carbon_forecast_g_per_kwh": "carbon_g_per_kwh"}
    )
    t0 = pd.Timestamp(signals.start)
    pub = scenario.signals.publication
    if pub is None:
        return [(t0.to_pydatetime(), frame)]
    at = pd.Timedelta(hours=pub.price_at.hour, minutes=pub.price_at.minute)
    day_starts = pd.Timedelta(hours=pub.price_day_starts.hour, minutes=pub.price_day_starts.minute)
    ahead = pd.Timedelta(hours=pub.carbon_hours_ahead)
    slot = pd.Timedelta(minutes=signals.slot_minutes)

    def known(when: pd.Timestamp, last_pub: pd.Timestamp) -> pd.DataFrame:
        boundary = last_pub.normalize() + day_starts
        if boundary <= last_pub:
            boundary += pd.Timedelta(days=1)
        price_until = boundary + pd.Timedelta(days=1)  # the delivery day published at last_pub
        part = frame[(frame.index + slot > when) & (frame.index < max(price_until, when + ahead))].copy()
        part.loc[part.index >= price_until, "price_gbp_per_kwh"] = np.nan
        part.loc[part.index >= when + ahead, "carbon_g_per_kwh"] = np.nan
        return part

    last = t0.normalize() + at
    if last > t0:
        last -= pd.Timedelta(days=1)
    out = [(t0.to_pydatetime(), known(t0, last))]
    when = last + pd.Timedelta(days=1)
    while when < signals.end:
        out.append((when.to_pydatetime(), known(when, when)))
        when += pd.Timedelta(days=1)
    return out


@dataclass
class Player:
    """Applies the timeline (plug-ins, departures, forecast publications) to the world."""

    world: World
    times: list[float]
    kinds: list[int]
    index: list[int]
    car_of: list[int]
    soc_arrival: list[float]
    trip: list[float]
    target: list[float]
    min_soc: list[float]
    ready: list[datetime] | None
    daily: list[time]
    forecasts: list[pd.DataFrame]
    slot_minutes: int
    deliver: Callable[[Event], None] = field(default=lambda event: None)

    def apply(self, i: int) -> None:
        kind, s, t = self.kinds[i], self.index[i], self.times[i]
        if kind == _PUBLISH:
            self.deliver(ForecastUpdated(self.forecasts[s], self.slot_minutes))
            return
        world = self.world
        car = world.cars[self.car_of[s]]
        if kind == _DEPART:
            world.unplug(car, t)
            return
        soc = self.soc_arrival[s]
        if soc != soc:  # NaN: follows from the previous session and the driving since
            soc = world.drive(car, s, self.trip[s])
        if self.ready is not None:
            # the driver sets this session's ready-by and target in the app before plugging in
            self.deliver(PreferencesChanged(
                car.vehicle_id,
                Preferences(self.daily[car.index], self.target[s], self.min_soc[s], self.ready[s]),
            ))
        world.plug_in(car, t, s, soc, self.target[s])


@dataclass
class Twin:
    """A scenario wired up and ready to be hosted (see :func:`build`)."""

    scenario: Scenario
    policy: str
    seed: int
    vehicles: pd.DataFrame
    sessions: pd.DataFrame
    origin: datetime
    signals: Signals
    curves: list[ChargeCurve]
    clock: Clock
    world: World
    controller: Controller
    adapters: dict[str, SimulatedOEM]
    player: Player

    @property
    def until(self) -> float:
        """Seconds after the origin when the run ends: the last departure (or the horizon)."""
        if self.sessions.empty:
            return self.horizon
        return (self.sessions["departure"].max() - pd.Timestamp(self.origin)).total_seconds() + 1.0

    @property
    def horizon(self) -> float:
        return (self.signals.end - self.origin).total_seconds()


def make_policy(name: str, scenario: Scenario, vehicles: pd.DataFrame, sessions: pd.DataFrame,
                signals: Signals) -> Policy:
    """The controller policy called ``name``, configured from the scenario."""
    try:
        check_policy(name)
    except ValueError as exc:
        raise ScenarioError("policy", [str(exc)]) from None
    if name == "uncontrolled":
        return Uncontrolled()
    from twin.policies import ControlParams, Optimal, Smart  # the scheduler loads on demand

    c = scenario.control
    params = ControlParams(c.carbon_weight_gbp_per_kg, c.start_penalty_gbp, c.min_run_slots)
    if name == "smart":
        return Smart(scenario.signals.slot_minutes, params, scenario.site.feeder_kw)
    from twin.foresight import perfect_foresight

    best = perfect_foresight(vehicles, sessions, signals, params, scenario.site.feeder_kw)
    starts = tuple(t.to_pydatetime() for t in best.slot_starts)
    end = signals.end
    plans: dict[str, list[SessionPlan]] = {}
    arrivals: dict[str, list[datetime]] = {}
    for row, (vid, arrival) in enumerate(zip(sessions["vehicle_id"], sessions["arrival"])):
        plans.setdefault(vid, []).append(
            SessionPlan(starts, tuple(best.on[row].tolist()), end, float(best.summary["soc_at_end"].iloc[row]))
        )
        arrivals.setdefault(vid, []).append(arrival.to_pydatetime(warn=False))
    return Optimal(plans, arrivals)


def build(scenario: Scenario | str | Path | dict[str, Any], policy: str | None, seed: int | None,
          make_clock: Callable[[datetime], Clock]) -> Twin:
    """Wire ``scenario`` up for one run; ``make_clock(origin)`` gives the host's clock."""
    sc = as_scenario(scenario)
    policy_name = policy or sc.policy
    try:
        check_policy(policy_name)
    except ValueError as exc:
        raise ScenarioError("policy", [str(exc)]) from None
    seed = sc.seed if seed is None else seed
    vehicles, sessions, origin, signals, oem_rng = prepare(sc, seed)
    clock = make_clock(origin)
    curves = [
        VehicleSpec(
            battery_kwh=r.battery_kwh, max_ac_kw=r.max_ac_kw, efficiency=r.efficiency,
            taper_knee_soc=r.taper_knee_soc, taper_floor_kw=r.taper_floor_kw, model=r.model,
        ).curve(Charger(r.charger_kw))
        for r in vehicles.itertuples()
    ]
    profiles = sc.oem_profiles
    oem_of = vehicles["oem"].tolist()
    cars = [
        Car(i, vid, curves[i], soc=0.0, autostart=profiles[oem_of[i]].charge_on_plug_in)
        for i, vid in enumerate(vehicles["vehicle_id"])
    ]
    world = World(cars, len(sessions))
    adapters: dict[str, SimulatedOEM] = {}
    ignoring = set(vehicles.loc[vehicles["ignores_stop"], "vehicle_id"])
    for (name, profile), rng in zip(sorted(profiles.items()), oem_rng.spawn(len(profiles))):
        mine = [c for c in cars if oem_of[c.index] == name]
        if mine:
            oem = SimulatedOEM(name, profile, world, clock, mine, rng, ignoring)
            adapters.update({c.vehicle_id: oem for c in mine})

    c = sc.control
    config = ControllerConfig(
        poll_interval_s=c.poll_interval_s, plugged_poll_interval_s=c.plugged_poll_interval_s,
        retry_base_s=c.retry_base_s, retry_max_s=c.retry_max_s, verify_after_s=c.verify_after_s,
        escalate_after=c.escalate_after,
    )
    controller = Controller(make_policy(policy_name, sc, vehicles, sessions, signals), config)
    daily = [time.fromisoformat(v) for v in vehicles["ready_by"]]
    for r, curve, ready in zip(vehicles.itertuples(), curves, daily):
        controller.register(
            r.vehicle_id, curve, Preferences(ready_by=ready, target_soc=r.target_soc, min_soc=r.min_soc),
            pushes=profiles[r.oem].push,
        )
    player = _player(sc, world, vehicles, sessions, origin, signals, daily)
    return Twin(sc, policy_name, seed, vehicles, sessions, origin, signals, curves, clock, world, controller,
                adapters, player)


def _player(sc: Scenario, world: World, vehicles: pd.DataFrame, sessions: pd.DataFrame, origin: datetime,
            signals: Signals, daily: list[time]) -> Player:
    origin_ts = pd.Timestamp(origin)
    n = len(sessions)
    pubs = publications(sc, signals)
    arrive = (sessions["arrival"] - origin_ts).dt.total_seconds().to_numpy()
    depart = (sessions["departure"] - origin_ts).dt.total_seconds().to_numpy()
    pub_t = np.array([(when - origin).total_seconds() for when, _ in pubs])
    times = np.concatenate([pub_t, depart, arrive])
    kinds = np.concatenate([np.full(len(pubs), _PUBLISH), np.full(n, _DEPART), np.full(n, _ARRIVE)])
    index = np.concatenate([np.arange(len(pubs)), np.arange(n), np.arange(n)])
    order = np.lexsort((index, kinds, times))
    ready = None
    if sc.sessions is not None:
        ready = [t.to_pydatetime() for t in sessions["ready_by"]]
    return Player(
        world=world,
        times=times[order].tolist(),
        kinds=kinds[order].tolist(),
        index=index[order].tolist(),
        car_of=pd.Index(vehicles["vehicle_id"]).get_indexer(sessions["vehicle_id"]).tolist(),
        soc_arrival=sessions["soc_arrival"].to_numpy().tolist(),
        trip=sessions["trip_kwh"].to_numpy().tolist(),
        target=sessions["target_soc"].to_numpy().tolist(),
        min_soc=sessions["min_soc"].to_numpy().tolist(),
        ready=ready,
        daily=daily,
        forecasts=[frame for _, frame in pubs],
        slot_minutes=signals.slot_minutes,
    )


def finish(twin: Twin, wall_seconds: float = 0.0) -> SimulationResult:
    """Close the world at the end of the run and compute the results."""
    twin.world.close(min(twin.until, twin.horizon))
    world = twin.world
    result = build_result(
        scenario=twin.scenario.name,
        policy=twin.policy,
        seed=twin.seed,
        origin=twin.origin,
        days=twin.scenario.days,
        vehicles=twin.vehicles,
        sessions=twin.sessions,
        signals=twin.signals,
        curves=curve_arrays(twin.curves),
        segments=world.segments,
        soc_arrival=world.soc_arrival,
        soc_departure=world.soc_departure,
        trip_unmet_kwh=world.trip_unmet_kwh,
        log=world.log,
        controller_stats=twin.controller.stats,
        oem_stats=_sum_stats(set(twin.adapters.values())),
    )
    result.wall_seconds = wall_seconds
    return result


def simulate(
    scenario: Scenario | str | Path | dict[str, Any],
    policy: str | None = None,
    *,
    seed: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimulationResult:
    """Run ``scenario`` in the SimPy twin under ``policy`` and return its results.

    Parameters
    ----------
    scenario : a :class:`~twin.scenario.Scenario`, a path to a YAML file, or a mapping.
    policy : ``uncontrolled``, ``smart`` or ``optimal`` (default: the scenario's ``policy``).
    seed : overrides the scenario's seed.
    progress : called with the fraction of simulated time done, every few simulated hours.

    Returns
    -------
    SimulationResult with ``kpis`` and the ``sessions``, ``timeseries``, ``events`` and
    ``charging`` tables.
    """
    t_wall = wallclock.perf_counter()
    env = simpy.Environment()
    twin = build(scenario, policy, seed, lambda origin: SimClock(env, origin))
    driver = SimDriver(env, twin.clock, twin.controller, twin.adapters, twin.world.log)
    twin.player.deliver = driver.deliver
    env.process(_play(env, twin.player))
    until = twin.until
    t = 0.0
    while t < until:
        t = min(until, t + _PROGRESS_CHUNK_S)
        env.run(until=t)
        if progress is not None:
            progress(t / until)
    return finish(twin, wallclock.perf_counter() - t_wall)


def _play(env: simpy.Environment, player: Player):
    """The drivers and the forecast feed: one process walking the timeline."""
    for i, t in enumerate(player.times):
        if t > env.now:
            yield env.timeout(t - env.now)
        player.apply(i)


def _sum_stats(oems: set[SimulatedOEM]) -> dict[str, int]:
    total: dict[str, int] = {}
    for oem in sorted(oems, key=lambda o: o.name):
        for key, value in oem.stats.items():
            total[key] = total.get(key, 0) + value
    return total
