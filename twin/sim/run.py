"""Assemble and run a scenario in the twin.

:func:`build` wires a scenario into a :class:`Twin`, independent of who hosts the loop: sessions
(generated or replayed) and forecast publications form one *timeline* that a :class:`Player`
applies to the world; each OEM profile becomes a :class:`~twin.sim.oem.SimulatedOEM`; the
controller is built by :func:`twin.control.compose.build_controller`, the composition the live
server uses too. :func:`simulate` hosts it in SimPy with the :class:`~twin.sim.driver.SimDriver`;
:func:`simulate_async` hosts the very same twin in asyncio (:class:`twin.host.aio.AsyncDriver`).
With ``oem_transport: http`` each cloud is served by its OEM's emulator and the controller
reaches it through that OEM's head (its HTTP client) over ``httpx.ASGITransport``, on the
asyncio host in virtual time: the API in the loop. Everything random is drawn from generators
spawned from the one seed, so the same scenario and seed give identical outputs, and the run
over HTTP sends the commands the direct run sends.
"""

from __future__ import annotations

import json
import time as wallclock
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy

from twin.battery import ChargeCurve, curve_arrays
from twin.clock import Clock
from twin.control.compose import SeededIds, build_controller
from twin.control.controller import Controller
from twin.control.events import Event, ForecastUpdated, PreferencesChanged
from twin.control.policies import make_policy
from twin.control.track import ManagedVehicle
from twin.domain import Preferences, Signals, vehicle_curves
from twin.results import SimulationResult, build_result
from twin.scenario import Scenario, ScenarioError, check_policy, load_scenario, parse_scenario
from twin.signals import build_signals
from twin.sim.behaviour import generate_fleet, read_sessions_csv
from twin.sim.clock import SimClock
from twin.sim.driver import SimDriver
from twin.sim.oem import SimulatedOEM
from twin.sim.world import Car, World

__all__ = ["simulate", "simulate_async", "build", "finish", "prepare", "Twin", "Player", "as_scenario"]

_PUBLISH, _DEPART, _ARRIVE = 0, 1, 2  # order of timeline events at the same instant
# Random streams spawned from the run's seed: behaviour, signals, OEM clouds, action ids. New
# streams are added at the end, so the earlier ones stay what they were for a seed.
_STREAMS, _IDS = 4, 3
#: simulated time between progress callbacks
_PROGRESS_CHUNK_S = 6 * 3600.0


def as_scenario(scenario: Scenario | str | Path | dict[str, Any]) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, dict):
        return parse_scenario(scenario)
    return load_scenario(scenario)


def prepare(scenario: Scenario, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, datetime, Signals, np.random.Generator]:
    """Vehicles, sessions, time origin, signals and the OEM generator for one run."""
    behaviour_seq, signals_seq, oem_seq = np.random.SeedSequence(seed).spawn(_STREAMS)[:3]
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
    capacity = site_capacity(scenario, frame.index)
    if capacity is not None:
        frame = frame.assign(capacity_kw=capacity)  # a network operator's signal, known ahead
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


def site_capacity(scenario: Scenario, index: pd.DatetimeIndex) -> np.ndarray | None:
    """The site's capacity signal (kW) per slot of ``index``, or None when the scenario gives none."""
    site = scenario.site
    if site.capacity_kw is not None:
        return np.full(len(index), float(site.capacity_kw))
    if site.capacity_csv is not None:
        from twin.scenario import SignalShape
        from twin.signals import _from_csv

        return _from_csv(SignalShape(csv=site.capacity_csv, column="capacity_kw"), "capacity", index,
                         scenario.base_dir)
    return None


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
    #: vehicle id -> the head the controller calls (the simulated cloud itself, or an HTTP client)
    adapters: dict[str, Any]
    player: Player
    #: the controller's registrations and the action-id source, to rebuild it (snapshots)
    managed: list[ManagedVehicle]
    ids: SeededIds
    #: the simulated clouds (behind the heads when the run goes over HTTP)
    clouds: list[SimulatedOEM] = field(default_factory=list)

    @property
    def until(self) -> float:
        """Seconds after the origin when the run ends: the last departure (or the horizon)."""
        if self.sessions.empty:
            return self.horizon
        return (self.sessions["departure"].max() - pd.Timestamp(self.origin)).total_seconds() + 1.0

    @property
    def horizon(self) -> float:
        return (self.signals.end - self.origin).total_seconds()

    def policy_object(self):
        """A fresh policy object of this run's policy (e.g. to restore a snapshot into)."""
        settings = self.scenario.control_settings()
        optimal = self.controller.policy if self.policy == "optimal" else None
        return make_policy(self.policy, settings, optimal=optimal)


def build(scenario: Scenario | str | Path | dict[str, Any], policy: str | None, seed: int | None,
          make_clock: Callable[[datetime], Clock]) -> Twin:
    """Wire ``scenario`` up for one run; ``make_clock(origin)`` gives the host's clock."""
    sc = as_scenario(scenario)
    policy_name = check_policy(policy or sc.policy)
    seed = sc.seed if seed is None else seed
    vehicles, sessions, origin, signals, oem_rng = prepare(sc, seed)
    clock = make_clock(origin)
    curves = vehicle_curves(vehicles)
    profiles = sc.oem_profiles
    oem_of = vehicles["oem"].tolist()
    cars = [
        Car(i, vid, curves[i], soc=0.0, autostart=profiles[oem_of[i]].charge_on_plug_in)
        for i, vid in enumerate(vehicles["vehicle_id"])
    ]
    world = World(cars, len(sessions))
    adapters: dict[str, Any] = {}
    clouds: list[SimulatedOEM] = []
    ignoring = set(vehicles.loc[vehicles["ignores_stop"], "vehicle_id"])
    accounts = dict(zip(vehicles["vehicle_id"], vehicles["account_id"]))
    for (name, profile), rng in zip(sorted(profiles.items()), oem_rng.spawn(len(profiles))):
        mine = [c for c in cars if oem_of[c.index] == name]
        if mine:
            oem = SimulatedOEM(name, profile, world, clock, mine, rng, ignoring, accounts)
            clouds.append(oem)
            adapters.update({c.vehicle_id: oem for c in mine})
    if sc.oem_transport == "http":
        adapters = _over_http(clouds, clock)

    settings = sc.control_settings()
    optimal = None
    if policy_name == "optimal":
        from twin.foresight import optimal_policy  # the scheduler loads on demand

        caps = {vid: adapters[vid].capabilities(vid) for vid in vehicles["vehicle_id"]}
        current = {vid: c for vid, c in caps.items() if c.can_set_current}
        autostart = {vid: profiles[oem].charge_on_plug_in for vid, oem in zip(vehicles["vehicle_id"], vehicles["oem"])}
        optimal = optimal_policy(vehicles, sessions, signals, settings.params, settings.feeder_kw, current, autostart)
    managed = [ManagedVehicle(vid, curve, account_id=account)
               for vid, curve, account in zip(vehicles["vehicle_id"], curves, vehicles["account_id"])]
    daily = [time.fromisoformat(v) for v in vehicles["ready_by"]]
    preferences = {
        r.vehicle_id: Preferences(ready_by=ready, target_soc=r.target_soc, min_soc=r.min_soc)
        for r, ready in zip(vehicles.itertuples(), daily)
    }
    ids = SeededIds(np.random.SeedSequence(seed).spawn(_STREAMS)[_IDS])
    controller = build_controller(managed, preferences, settings, policy_name, adapters, new_id=ids, optimal=optimal)
    player = _player(sc, world, vehicles, sessions, origin, signals, daily)
    return Twin(sc, policy_name, seed, vehicles, sessions, origin, signals, curves, clock, world, controller,
                adapters, player, managed, ids, clouds)


def _over_http(clouds: list[SimulatedOEM], clock: Clock) -> dict[str, Any]:
    """Each cloud behind its OEM's emulator, reached by that OEM's head over
    ``httpx.ASGITransport`` (vehicle id -> head); webhook deliveries go from the emulator to the
    head's receiver as they would through its web route."""
    import httpx

    from adapters import head

    out: dict[str, Any] = {}
    for cloud in clouds:
        oem = head(cloud.profile.api)
        receivers: list[Callable[[dict[str, str], bytes], Any]] = []
        app = oem.emulator(cloud, deliver=lambda headers, body, to=receivers: to[0](headers, body))
        connected = oem.connect(cloud, f"http://{cloud.name}.{oem.name}.emulator", httpx.ASGITransport(app), clock)
        if connected.receive is not None:
            receivers.append(connected.receive)
        out.update({vid: connected.adapter for vid in cloud.accounts()})
    return out


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
        oem_stats=_sum_stats(set(twin.clouds)),
        site_limit_kw=twin.scenario.site.feeder_kw,
        demand_charge_gbp_per_kw_month=twin.scenario.site.demand_charge_gbp_per_kw_month,
        demand_window_minutes=twin.scenario.site.demand_window_minutes,
    )
    result.wall_seconds = wall_seconds
    return result


def simulate(
    scenario: Scenario | str | Path | dict[str, Any],
    policy: str | None = None,
    *,
    seed: int | None = None,
    progress: Callable[[float], None] | None = None,
    restarts: Sequence[float] = (),
) -> SimulationResult:
    """Run ``scenario`` in the SimPy twin under ``policy`` and return its results.

    Parameters
    ----------
    scenario : a :class:`~twin.scenario.Scenario`, a path to a YAML file, or a mapping.
    policy : ``uncontrolled``, ``edf``, ``smart``, ``smart_onoff`` or ``optimal`` (default: the scenario's
        ``policy``).
    seed : overrides the scenario's seed.
    progress : called with the fraction of simulated time done, every few simulated hours.
    restarts : simulated seconds at which the controller is written to JSON text and replaced by
        one restored from it, as when a server restarts (the OEM clouds and cars run on). The
        results equal an uninterrupted run's.

    Returns
    -------
    SimulationResult with ``kpis`` and the ``sessions``, ``timeseries``, ``events`` and
    ``charging`` tables.

    A scenario with ``oem_transport: http`` runs on the asyncio host (:func:`simulate_async`),
    where the heads' HTTP clients live; ``restarts`` are not offered there.
    """
    sc = as_scenario(scenario)
    if sc.oem_transport == "http":
        if restarts:
            raise ValueError("restarts are not offered for oem_transport: http (the run is on the asyncio host)")
        return simulate_async(sc, policy, seed=seed, progress=progress)
    scenario = sc
    t_wall = wallclock.perf_counter()
    env = simpy.Environment()
    twin = build(scenario, policy, seed, lambda origin: SimClock(env, origin))
    driver = SimDriver(env, twin.clock, twin.controller, twin.adapters, twin.world.log)
    twin.player.deliver = driver.deliver
    env.process(_play(env, twin.player))
    until = twin.until
    restart_at = {min(until, float(t)) for t in restarts if t > 0}
    for t in sorted({*restart_at, *np.arange(_PROGRESS_CHUNK_S, until, _PROGRESS_CHUNK_S).tolist(), until}):
        env.run(until=t)
        if t in restart_at:
            driver.controller = twin.controller = restart(twin)
        if progress is not None:
            progress(t / until)
    return finish(twin, wallclock.perf_counter() - t_wall)


def restart(twin: Twin) -> Controller:
    """A controller restored from ``twin``'s controller's snapshot, taken through JSON text.

    In-flight calls are not sent again: the twin's host stays and delivers their outcomes.
    """
    text = json.dumps(twin.controller.snapshot(), allow_nan=False)
    restored = build_controller(
        twin.managed, {}, twin.scenario.control_settings(), twin.policy_object(), twin.adapters,
        new_id=twin.ids, snapshot=json.loads(text), resend_pending=False,
    )
    restored.inline_planning = twin.controller.inline_planning
    return restored


def simulate_async(scenario: Scenario | str | Path | dict[str, Any], policy: str | None = None, *,
                   seed: int | None = None, progress: Callable[[float], None] | None = None) -> SimulationResult:
    """Run a scenario through :class:`twin.host.aio.AsyncDriver` on a virtual-time asyncio loop.

    Same twin (cars, OEM clouds, timeline) as :func:`simulate`, hosted by the live loop instead
    of SimPy. Slower, but it exercises exactly what the server runs; with ``oem_transport: http``
    every OEM call goes through the heads to the emulators.
    """
    import asyncio

    from twin.host.aio import AsyncClock, AsyncDriver, VirtualTimeLoop

    t_wall = wallclock.perf_counter()
    loop = VirtualTimeLoop()
    try:
        twin = build(scenario, policy, seed, lambda origin: AsyncClock(origin, loop))
        clock = twin.clock
        driver = AsyncDriver(twin.controller, twin.adapters, clock, twin.world.log.append)
        twin.player.deliver = driver.deliver

        until = twin.until

        async def play() -> None:
            reported = 0.0
            for i, t in enumerate(twin.player.times):
                wait = t - clock.seconds
                if wait > 0:
                    await asyncio.sleep(wait)
                twin.player.apply(i)
                if progress is not None and t - reported >= _PROGRESS_CHUNK_S:
                    reported = t
                    progress(min(1.0, t / until))

        async def main() -> None:
            runner = asyncio.ensure_future(driver.run(until))
            await play()
            await runner
            for head in {id(a): a for a in twin.adapters.values()}.values():
                close = getattr(head, "aclose", None)
                if close is not None:
                    await close()
            if progress is not None:
                progress(1.0)

        loop.run_until_complete(main())
    finally:
        loop.close()
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
