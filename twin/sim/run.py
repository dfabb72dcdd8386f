"""Assemble and run a scenario in the SimPy twin.

``simulate`` wires the pieces together: sessions (generated or replayed) drive a single
behaviour process that plugs cars in and out; each OEM profile becomes a
:class:`~twin.sim.oem.SimulatedOEM`; the controller runs inside a
:class:`~twin.sim.driver.SimDriver`. Everything random is drawn from generators spawned from the
one seed, so the same scenario and seed give identical outputs.
"""

from __future__ import annotations

import time as wallclock
from collections.abc import Callable
from datetime import datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy

from twin.battery import ChargeCurve, curve_arrays
from twin.controller import Controller, Policy, PreferencesChanged, Uncontrolled
from twin.domain import Charger, Preferences, VehicleSpec
from twin.results import SimulationResult, build_result
from twin.scenario import Scenario, ScenarioError, check_policy, load_scenario, parse_scenario
from twin.signals import build_signals
from twin.sim.behaviour import generate_fleet, read_sessions_csv
from twin.sim.clock import SimClock
from twin.sim.driver import SimDriver
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

__all__ = ["simulate", "make_policy", "prepare"]

_ARRIVE, _DEPART = 1, 0
#: simulated time between progress callbacks
_PROGRESS_CHUNK_S = 6 * 3600.0


def make_policy(name: str) -> Policy:
    """The controller policy called ``name``."""
    try:
        check_policy(name)
    except ValueError as exc:
        raise ScenarioError("policy", [str(exc)]) from None
    return {"uncontrolled": Uncontrolled}[name]()


def _as_scenario(scenario: Scenario | str | Path | dict[str, Any]) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, dict):
        return parse_scenario(scenario)
    return load_scenario(scenario)


def prepare(scenario: Scenario, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, datetime, Any, np.random.Generator]:
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


def simulate(
    scenario: Scenario | str | Path | dict[str, Any],
    policy: str | None = None,
    *,
    seed: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimulationResult:
    """Run ``scenario`` in the twin under ``policy`` and return its results.

    Parameters
    ----------
    scenario : a :class:`~twin.scenario.Scenario`, a path to a YAML file, or a mapping.
    policy : policy name (default: the scenario's ``policy``).
    seed : overrides the scenario's seed.
    progress : called with the fraction of simulated time done, every few simulated hours.

    Returns
    -------
    SimulationResult with ``kpis`` and the ``sessions``, ``timeseries``, ``events`` tables.
    """
    t_wall = wallclock.perf_counter()
    sc = _as_scenario(scenario)
    policy_name = policy or sc.policy
    ctl_policy = make_policy(policy_name)
    seed = sc.seed if seed is None else seed
    vehicles, sessions, origin, signals, _oem_rng = prepare(sc, seed)

    env = simpy.Environment()
    clock = SimClock(env, origin)
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
    adapters = {}
    for name, profile in profiles.items():
        mine = [c for c in cars if oem_of[c.index] == name]
        if mine:
            oem = SimulatedOEM(name, profile, world, clock, mine)
            adapters.update({c.vehicle_id: oem for c in mine})

    controller = Controller(ctl_policy)
    for r, curve in zip(vehicles.itertuples(), curves):
        controller.register(
            r.vehicle_id,
            curve,
            Preferences(ready_by=time.fromisoformat(r.ready_by), target_soc=r.target_soc, min_soc=r.min_soc),
            pushes=profiles[r.oem].push,
        )
    driver = SimDriver(env, clock, controller, adapters, world.log)
    env.process(_behaviour(env, world, sessions, vehicles, origin, driver, declare=sc.sessions is not None))

    horizon = (signals.end - origin).total_seconds()
    until = horizon if sessions.empty else (sessions["departure"].max() - pd.Timestamp(origin)).total_seconds() + 1.0
    t = 0.0
    while t < until:
        t = min(until, t + _PROGRESS_CHUNK_S)
        env.run(until=t)
        if progress is not None:
            progress(t / until)
    world.close(min(until, horizon))

    result = build_result(
        scenario=sc.name,
        policy=policy_name,
        seed=seed,
        origin=origin,
        days=sc.days,
        vehicles=vehicles,
        sessions=sessions,
        signals=signals,
        curves=curve_arrays(curves),
        segments=world.segments,
        soc_arrival=world.soc_arrival,
        soc_departure=world.soc_departure,
        trip_unmet_kwh=world.trip_unmet_kwh,
        log=world.log,
    )
    result.wall_seconds = wallclock.perf_counter() - t_wall
    return result


def _behaviour(env: simpy.Environment, world: World, sessions: pd.DataFrame, vehicles: pd.DataFrame,
               origin: datetime, driver: SimDriver, *, declare: bool):
    """The drivers: one process walking every plug-in and departure in time order."""
    origin_ts = pd.Timestamp(origin)
    arrive = (sessions["arrival"] - origin_ts).dt.total_seconds().to_numpy()
    depart = (sessions["departure"] - origin_ts).dt.total_seconds().to_numpy()
    n = len(sessions)
    times = np.concatenate([arrive, depart])
    kinds = np.concatenate([np.full(n, _ARRIVE), np.full(n, _DEPART)])
    index = np.concatenate([np.arange(n), np.arange(n)])
    order = np.lexsort((index, kinds, times))  # by time; departures before arrivals at a tie
    car_of = pd.Index(vehicles["vehicle_id"]).get_indexer(sessions["vehicle_id"]).tolist()
    soc_arrival = sessions["soc_arrival"].to_numpy().tolist()
    trip = sessions["trip_kwh"].to_numpy().tolist()
    target = sessions["target_soc"].to_numpy().tolist()
    min_soc = sessions["min_soc"].to_numpy().tolist()
    ready = sessions["ready_by"].tolist() if declare else None
    daily = [time.fromisoformat(v) for v in vehicles["ready_by"]]
    cars = world.cars
    for t, kind, s in zip(times[order].tolist(), kinds[order].tolist(), index[order].tolist()):
        if t > env.now:
            yield env.timeout(t - env.now)
        car = cars[car_of[s]]
        if kind == _DEPART:
            world.unplug(car, t)
            continue
        soc = soc_arrival[s]
        if soc != soc:  # NaN: follows from the previous session and the driving since
            soc = world.drive(car, s, trip[s])
        if ready is not None:
            # the driver sets this session's ready-by and target in the app before plugging in
            driver.deliver(PreferencesChanged(
                car.vehicle_id,
                Preferences(daily[car.index], target[s], min_soc[s], ready[s].to_pydatetime()),
            ))
        world.plug_in(car, t, s, soc, target[s])
