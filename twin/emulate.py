"""One OEM's API emulator served on HTTP, for testing an integration against it
(``twin emulate smartcar|tesla``).

The emulator is the head's FastAPI app (``adapters/<oem>/emulator.py``) over a simulated cloud
(:class:`twin.sim.oem.SimulatedOEM`) and the twin's car physics, in wall time:

* **the cars**: without a scenario, a small built-in fleet: ``car-1``..``car-4`` on accounts
  ``acct-1`` (cars 1, 2) and ``acct-2`` (cars 3, 4), 60 kWh on 7.4 kW chargers, plugged in at
  start at SoC 0.30, 0.45, 0.60 and 0.75 with a 90 % charge limit. They do not start charging by
  themselves: an integration sees its own start command take effect. With a scenario, the cars
  of one of its OEM profiles (those whose ``api`` is the OEM, or the one named), whose sessions
  are replayed: each car plugs in at its arrival (at its ``soc_arrival``, or what its trips
  left) with the session's target as its charge limit, and unplugs at its departure.
* **the cloud's behaviour**: the built-in fleet's profile (:func:`builtin_profile`) is what the
  head's API always has (``Head.base_profile``) plus expiring tokens (2 h) and modest latency
  (reads 1 s median, 3 s p95; commands 2/6 s; wakes 5/15 s), and on an API with a wake-up call
  (Tesla) cars that fall asleep after 15 minutes without a call, on one that sets the charging
  current 5..32 A. A scenario's profile is used as it is, once the head accepts it
  (``problems``).
* **time** (:class:`ScaledClock`): wall time scaled by ``speed`` (60: an emulated minute per
  second); latencies, token lifetimes, sleep and the replay all run on it. Emulated time starts
  at the UTC instant the emulator was built, or, with a scenario, at the scenario's start (its
  first slot), so that readings, token expiries and outages carry the scenario's dates; the
  scenario's start is "now" when serving begins.
* **webhooks**: with ``webhook_url`` and a head that pushes (Smartcar, on a profile with
  ``push``), each signed delivery is POSTed to the URL, headers and body exactly as the emulator
  signed them, in the background; a failed delivery is logged as a warning and not retried.

:func:`build_emulator` gives the app and what a user needs to call it (:class:`EmulatorInfo`);
the app's lifespan starts the clock and the replay, so any ASGI server that runs lifespans
serves it complete. :func:`serve` binds the socket, announces the URLs, credentials and tokens,
and runs uvicorn until interrupted; :class:`EmulatorThread` serves an app on a background
thread (tests, notebooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import import_module
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI
from uvicorn.logging import DefaultFormatter

import adapters
from adapters.base import Head
from twin.auth import Token
from twin.battery import ChargeCurve
from twin.domain import vehicle_curves
from twin.host.aio import _spawn
from twin.scenario import OEMProfile, Scenario, ScenarioError
from twin.sim.oem import SimulatedOEM
from twin.sim.run import as_scenario, prepare
from twin.sim.world import Car, World

__all__ = [
    "BUILTIN_CARS", "EmulatorError", "EmulatorInfo", "EmulatorThread", "ScaledClock", "WebhookPoster",
    "build_emulator", "builtin_profile", "listen", "serve",
]

log = logging.getLogger("twin.emulate")

#: the built-in fleet: vehicle id -> (account, SoC at start)
BUILTIN_CARS = {
    "car-1": ("acct-1", 0.30),
    "car-2": ("acct-1", 0.45),
    "car-3": ("acct-2", 0.60),
    "car-4": ("acct-2", 0.75),
}
#: the built-in cars' charge limit
BUILTIN_LIMIT = 0.9
BUILTIN_CURVE = ChargeCurve(battery_kwh=60.0, charger_kw=7.4, vehicle_kw=7.4, efficiency=0.9, knee_soc=0.8,
                            floor_kw=2.0)

#: what the built-in fleet's cloud does where the head's API can (its features)
_FEATURE_PROFILE: dict[str, dict[str, Any]] = {
    "wake": {"sleep_after_s": 900},
    "current": {"current_control": {"min_amps": 5, "max_amps": 32}},
}
#: the built-in fleet's cloud, whatever the head
_BUILTIN_CLOUD: dict[str, Any] = {
    "charge_on_plug_in": False,
    "token_lifetime_s": 7200,
    "read_latency": {"median_s": 1, "p95_s": 3},
    "command_latency": {"median_s": 2, "p95_s": 6},
    "wake_latency": {"median_s": 5, "p95_s": 15},
}
_DEPART, _ARRIVE = 0, 1  # order of replay events at the same instant
_WEBHOOK_TIMEOUT_S = 10.0


class EmulatorError(ValueError):
    """The emulator cannot be served as asked (unknown OEM, a profile the head cannot carry,
    webhooks for an API without them ...). One line per problem."""


# -- time --------------------------------------------------------------------------------------


class ScaledClock:
    """Wall time run ``speed`` times faster, on an asyncio loop (a :class:`twin.clock.Clock`).

    ``seconds`` counts emulated seconds since :meth:`begin` (``(loop.time() - t0) * speed``);
    ``sleep`` and ``call_later`` wait the wall time their emulated seconds take. The clock begins
    on the loop that first reads it, unless :meth:`begin` was called; until then it reads 0.
    On a :class:`twin.host.aio.VirtualTimeLoop` it runs in virtual time.
    """

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number of emulated seconds per second, got {speed!r}")
        self.start = start
        self.speed = float(speed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0

    def begin(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start counting now, on ``loop`` (default: the running one)."""
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._t0 = self._loop.time()

    @property
    def seconds(self) -> float:
        if self._loop is None:
            try:
                self.begin()
            except RuntimeError:  # read outside a loop before serving began
                return 0.0
        return (self._loop.time() - self._t0) * self.speed

    def now(self) -> datetime:
        return self.at(self.seconds)

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        if seconds <= 0:
            callback()
        else:
            asyncio.get_running_loop().call_later(seconds / self.speed, callback)

    def create_future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future:
        """Run ``coro`` as its own task; cancelling the awaiting one leaves it running."""
        return _spawn(asyncio.get_running_loop(), coro)


# -- webhooks ----------------------------------------------------------------------------------


class WebhookPoster:
    """Takes the emulator's signed deliveries (``deliver(headers, body)``) and POSTs each to
    ``url`` as a background task on the running loop. A delivery that fails (no connection, a
    timeout, a status other than 2xx) is logged as a warning and dropped."""

    def __init__(self, url: str, timeout_s: float = _WEBHOOK_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: deliveries by outcome
        self.stats = {"delivered": 0, "failed": 0}

    def __call__(self, headers: dict[str, str], body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._post(dict(headers), bytes(body)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, headers: dict[str, str], body: bytes) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        try:
            response = await self._client.post(self.url, headers=headers, content=body)
        except Exception as exc:  # noqa: BLE001 - a receiver's failure must never reach the emulator
            self.stats["failed"] += 1
            log.warning("webhook delivery to %s failed: %s", self.url, f"{type(exc).__name__}: {exc}".rstrip(": "))
            return
        if 200 <= response.status_code < 300:
            self.stats["delivered"] += 1
        else:
            self.stats["failed"] += 1
            log.warning("webhook delivery to %s answered %d", self.url, response.status_code)

    async def aclose(self) -> None:
        """Cancel deliveries still on their way and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# -- the replay --------------------------------------------------------------------------------


@dataclass
class _Replay:
    """A scenario's sessions for one cloud's cars: (emulated seconds, kind, session) in order."""

    world: World
    events: list[tuple[float, int, int]]
    car_of: list[int]
    soc_arrival: list[float]
    trip_kwh: list[float]
    target: list[float]

    async def run(self, clock: ScaledClock) -> None:
        for t, kind, s in self.events:
            wait = t - clock.seconds
            if wait > 0:
                await clock.sleep(wait)
            try:
                self._apply(kind, s, max(t, clock.seconds))
            except Exception:  # noqa: BLE001 - one bad event must not stop the replay or the server
                log.exception("replaying session %d failed", s)
        if self.events:
            log.info("replay finished: the scenario's last session has departed")

    def _apply(self, kind: int, s: int, t: float) -> None:
        world = self.world
        car = world.cars[self.car_of[s]]
        if kind == _DEPART:
            if car.plugged:
                soc = world.unplug(car, t)
                log.info("%s unplugged at SoC %.0f %%", car.vehicle_id, soc * 100)
            return
        soc = self.soc_arrival[s]
        if soc != soc:  # NaN: follows from the previous session and the driving since
            soc = world.drive(car, s, self.trip_kwh[s])
        world.plug_in(car, t, s, soc, self.target[s])
        log.info("%s plugged in at SoC %.0f %% (charge limit %.0f %%)", car.vehicle_id, soc * 100,
                 self.target[s] * 100)


def _replay(world: World, sessions: pd.DataFrame, origin: datetime) -> _Replay:
    index = {car.vehicle_id: i for i, car in enumerate(world.cars)}
    origin_ts = pd.Timestamp(origin)
    arrive = (sessions["arrival"] - origin_ts).dt.total_seconds().tolist()
    depart = (sessions["departure"] - origin_ts).dt.total_seconds().tolist()
    events = sorted([(t, _ARRIVE, s) for s, t in enumerate(arrive)] + [(t, _DEPART, s) for s, t in enumerate(depart)])
    return _Replay(world, events, [index[v] for v in sessions["vehicle_id"]],
                   sessions["soc_arrival"].astype(float).tolist(), sessions["trip_kwh"].astype(float).tolist(),
                   sessions["target_soc"].astype(float).tolist())


# -- what a user gets --------------------------------------------------------------------------


@dataclass
class EmulatorInfo:
    """What :func:`build_emulator` built, and what a user needs to call it."""

    head: Head
    cloud: SimulatedOEM
    world: World
    clock: ScaledClock
    #: the OEM profile the cloud behaves by (the built-in one is called after the head)
    profile_name: str
    #: where the cars come from: "built-in fleet" or the scenario's name and file
    source: str
    #: the application's credentials (label -> value), as the head declares them
    credentials: dict[str, str]
    #: account -> its vehicle ids
    accounts: dict[str, list[str]]
    #: account -> the tokens its grant started with (an access token works at once)
    tokens: dict[str, Token]
    webhook_url: str | None = None
    poster: WebhookPoster | None = None
    replay_sessions: int = 0
    _replay: _Replay | None = field(default=None, repr=False)

    @property
    def oem(self) -> str:
        return self.head.name

    async def replay(self) -> None:
        """Replay the scenario's sessions in emulated time (returns at once without a scenario)."""
        if self._replay is not None:
            await self._replay.run(self.clock)

    def first_arrival_s(self) -> float | None:
        """Emulated seconds from the start to the first plug-in of the replay (None: none)."""
        if self._replay is None:
            return None
        arrivals = [t for t, kind, _ in self._replay.events if kind == _ARRIVE]
        return min(arrivals) if arrivals else None

    def describe(self, base_url: str) -> str:
        """The startup text: URLs, credentials, the clock, and per account its cars and tokens."""
        head, clock = self.head, self.clock
        cars = sum(len(v) for v in self.accounts.values())
        lines = [
            f"chargetwin {head.name} emulator · {self.source} · OEM profile {self.profile_name} · "
            f"{_count(cars, 'car')} on {_count(len(self.accounts), 'account')}",
            "",
            f"  base URL          {base_url}",
            f"  API               {base_url}{head.api_path}",
            f"  token endpoint    {base_url}{head.token_path}",
            f"  API docs          {base_url}/docs",
        ]
        for label, value in self.credentials.items():
            lines.append(f"  {label:<17} {value}")
        if self.poster is not None:
            lines.append(f"  webhooks          POST to {self.webhook_url}")
        elif "push" in head.features and self.cloud.profile.push:
            lines.append("  webhooks          none (pass --webhook-url URL to receive signed deliveries)")
        pace = "wall time" if clock.speed == 1 else f"{clock.speed:g} emulated seconds per second"
        lines.append(f"  clock             starts at {_iso(clock.start)}, {pace}")
        first = self.first_arrival_s()
        if self._replay is not None:
            when = "none" if first is None else (
                f"first plug-in at {_iso(clock.at(first))} (in {_duration(first / clock.speed)})")
            lines.append(f"  replay            {self.replay_sessions} sessions; {when}")
        lines.append("")
        for account, vids in self.accounts.items():
            token = self.tokens[account]
            lines.append(f"account {account}: {', '.join(self._car_line(v) for v in vids)}")
            lines.append(f"  access token      {token.access_token}   (expires {_iso(token.expires_at)})")
            lines.append(f"  refresh token     {token.refresh_token}")
        if self.accounts:
            account = next(iter(self.accounts))
            lines += ["", "try:  curl -H 'Authorization: Bearer "
                          f"{self.tokens[account].access_token}' {base_url}{head.api_path}/vehicles"]
        lines.append("Ctrl-C stops the emulator.")
        return "\n".join(lines)

    def _car_line(self, vehicle_id: str) -> str:
        car = self.world.by_id[vehicle_id]
        if not car.plugged:
            return vehicle_id
        return f"{vehicle_id} (plugged in, SoC {car.soc * 100:.0f} %, limit {car.limit * 100:.0f} %)"


#: what a fleet source gives: the cloud, its world and clock, the profile's name, where the cars
#: come from, and the sessions to replay (None: the cars stay as they are)
_Built = tuple[SimulatedOEM, World, ScaledClock, str, str, _Replay | None]


def builtin_profile(head: Head) -> OEMProfile:
    """The built-in fleet's OEM profile for ``head``: what its API always has
    (``head.base_profile``), expiring tokens and modest latency, and where the API has them,
    cars that sleep after 15 minutes and a settable charging current (5..32 A)."""
    settings = dict(_BUILTIN_CLOUD)
    for feature, extra in _FEATURE_PROFILE.items():
        if feature in head.features:
            settings.update(extra)
    return OEMProfile(**{**settings, **head.base_profile, "api": head.name})


def build_emulator(oem: str, scenario: Scenario | str | Path | dict[str, Any] | None = None,
                   profile: str | None = None, speed: float = 1.0, webhook_url: str | None = None,
                   seed: int | None = None) -> tuple[FastAPI, EmulatorInfo]:
    """The emulator of the head ``oem`` over the built-in fleet or ``scenario``'s cars.

    ``profile`` names the scenario's OEM profile to serve (default: its only profile whose
    ``api`` is ``oem``); ``seed`` seeds the cloud's draws (latency, failures) and a generated
    fleet's sessions (default: the scenario's seed, or 1). The app's lifespan begins the clock
    and runs the replay; deliveries go to ``webhook_url`` while it is served.

    Raises :class:`EmulatorError` (bad options, a profile the head cannot serve) or
    :class:`~twin.scenario.ScenarioError` (the scenario file).
    """
    try:
        head = adapters.head(oem)
    except ValueError as exc:
        raise EmulatorError(str(exc)) from None
    if webhook_url is not None:
        _check_url(webhook_url)
        if "push" not in head.features:
            raise EmulatorError(f"--webhook-url: the {oem} API sends no webhooks (its cars are polled); "
                                "leave the option out")
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise EmulatorError(f"--speed must be a positive number of emulated seconds per second, got {speed!r}")
    if scenario is None:
        if profile is not None:
            raise EmulatorError("--profile picks an OEM profile of a --scenario; the built-in fleet has its own")
        cloud, world, clock, name, source, replay = _builtin(head, speed, seed)
    else:
        cloud, world, clock, name, source, replay = _from_scenario(head, as_scenario(scenario), scenario, profile,
                                                                   speed, seed)
    poster = None
    if webhook_url is not None:
        if not cloud.profile.push:
            raise EmulatorError(f"--webhook-url: OEM profile {name} has push: false, so the emulator sends no "
                                "webhooks; set push: true or leave the option out")
        poster = WebhookPoster(webhook_url)
    app = head.emulator(cloud, deliver=poster)
    accounts: dict[str, list[str]] = {}
    for vid, account in cloud.accounts().items():
        accounts.setdefault(account, []).append(vid)
    module = import_module(adapters.HEADS[oem])
    credentials = {label: getattr(module, const) for label, const in
                   (("client id", "CLIENT_ID"), ("client secret", "CLIENT_SECRET"),
                    ("management token", "MANAGEMENT_TOKEN"))
                   if isinstance(getattr(module, const, None), str)}
    info = EmulatorInfo(head, cloud, world, clock, name, source, credentials, accounts,
                        {a: cloud.linked_token(a) for a in accounts}, webhook_url, poster,
                        0 if replay is None else len(replay.car_of), replay)
    _add_lifespan(app, info)
    return app, info


def _builtin(head: Head, speed: float, seed: int | None) -> _Built:
    profile = builtin_profile(head)
    problems = head.problems(profile)
    if problems:
        raise EmulatorError("\n".join([f"the built-in fleet has no profile the {head.name} head accepts; "
                                       "serve a --scenario with one"] + problems))
    clock = ScaledClock(datetime.now(timezone.utc), speed)
    cars = [Car(i, vid, BUILTIN_CURVE, soc=soc, autostart=False)
            for i, (vid, (_, soc)) in enumerate(BUILTIN_CARS.items())]
    world = World(cars, session_count=len(cars))
    cloud = SimulatedOEM(head.name, profile, world, clock, cars, np.random.default_rng(1 if seed is None else seed),
                         frozenset(), {vid: account for vid, (account, _) in BUILTIN_CARS.items()})
    for car in cars:  # before the emulator subscribes: the plug-ins at start push nothing
        world.plug_in(car, 0.0, car.index, car.soc, BUILTIN_LIMIT)
    return cloud, world, clock, head.name, "built-in fleet", None


def _from_scenario(head: Head, sc: Scenario, given: Any, profile: str | None, speed: float,
                   seed: int | None) -> _Built:
    source = str(given) if isinstance(given, (str, Path)) else sc.name
    profiles = sc.oem_profiles
    listing = ", ".join(f"{n} (api: {p.api or 'none'})" for n, p in sorted(profiles.items()))
    if profile is None:
        matching = sorted(n for n, p in profiles.items() if p.api == head.name)
        if len(matching) != 1:
            found = "no OEM profile" if not matching else f"several OEM profiles ({', '.join(matching)})"
            raise ScenarioError(source, [f"{found} with api: {head.name}; its profiles are {listing}; "
                                         "pick one with --profile NAME"])
        profile = matching[0]
    elif profile not in profiles:
        raise ScenarioError(source, [f"--profile {profile}: no such OEM profile; its profiles are {listing}"])
    chosen = profiles[profile]
    if chosen.api is not None and chosen.api != head.name:
        raise ScenarioError(source, [f"OEM profile {profile} speaks api: {chosen.api}, not {head.name}"])
    problems = head.problems(chosen)
    if problems:
        raise ScenarioError(source, [f"oem_profiles.{profile}.{p}" for p in problems])

    seed = sc.seed if seed is None else seed
    vehicles, sessions, origin, _, oem_rng = prepare(sc, seed)
    rng = dict(zip(sorted(profiles), oem_rng.spawn(len(profiles))))[profile]  # the twin's draws for this cloud
    mine = vehicles[vehicles["oem"] == profile].reset_index(drop=True)
    if mine.empty:
        raise ScenarioError(source, [f"OEM profile {profile} has no cars (no fleet group or sessions use it)"])
    curves = vehicle_curves(mine)
    cars = [Car(i, vid, curves[i], soc=0.0, autostart=chosen.charge_on_plug_in)
            for i, vid in enumerate(mine["vehicle_id"])]
    played = sessions[sessions["vehicle_id"].isin(set(mine["vehicle_id"]))].reset_index(drop=True)
    world = World(cars, len(played))
    clock = ScaledClock(origin, speed)
    cloud = SimulatedOEM(profile, chosen, world, clock, cars, rng,
                         set(mine.loc[mine["ignores_stop"], "vehicle_id"]),
                         dict(zip(mine["vehicle_id"], mine["account_id"])))
    return cloud, world, clock, profile, f"scenario {sc.name} ({source})", _replay(world, played, origin)


def _add_lifespan(app: FastAPI, info: EmulatorInfo) -> None:
    """While the app is served: the clock runs from startup, the replay plays, and the webhook
    client is closed at shutdown."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any):
        info.clock.begin()
        task = asyncio.get_running_loop().create_task(info.replay())
        try:
            async with inner(application) as state:
                yield state
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if info.poster is not None:
                await info.poster.aclose()

    app.router.lifespan_context = lifespan


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except Exception:  # noqa: BLE001 - httpx raises several types for a malformed URL
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise EmulatorError(f"--webhook-url {url!r} is not an http(s) URL, e.g. http://127.0.0.1:9000/webhooks")


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- serving -----------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: any free port), for uvicorn to serve on."""
    if not 0 <= port <= 65535:
        raise EmulatorError(f"--port {port} is not a TCP port (0..65535; 0: any free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise EmulatorError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise EmulatorError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                            "(pick another --port, or 0 for any free one)") from None
    sock.set_inheritable(True)
    return sock


def base_url_of(sock: socket.socket) -> str:
    """The URL a client on this machine reaches a socket at (loopback for a wildcard address)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(oem: str, host: str = "127.0.0.1", port: int = 8080,
          scenario: Scenario | str | Path | dict[str, Any] | None = None, profile: str | None = None,
          speed: float = 1.0, webhook_url: str | None = None, seed: int | None = None,
          announce: Callable[[str], Any] = print, log_level: str = "info") -> None:
    """Build the emulator (:func:`build_emulator`), bind ``host``:``port``, hand the startup text
    to ``announce``, and serve it with uvicorn until interrupted (Ctrl-C returns normally).

    Raises :class:`EmulatorError` or :class:`~twin.scenario.ScenarioError` before serving."""
    app, info = build_emulator(oem, scenario, profile=profile, speed=speed, webhook_url=webhook_url, seed=seed)
    sock = listen(host, port)
    announce(info.describe(base_url_of(sock)))
    _log_to_stderr()
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def _log_to_stderr() -> None:
    """The emulator's own lines (replay, failed webhooks) as uvicorn writes its own."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class EmulatorThread:
    """Serves an emulator app with uvicorn on a background thread (its own event loop), with
    lifespan, on ``host``:``port`` (default: a free loopback port); :attr:`base_url` once
    started. A context manager; :meth:`stop` shuts it down."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 timeout_s: float = 10.0) -> None:
        self._sock = listen(host, port)
        self.base_url = base_url_of(self._sock)
        config = uvicorn.Config(app, host=host, port=self._sock.getsockname()[1], log_level=log_level,
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                       name="emulator", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the emulator's uvicorn server did not start")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)
        self._sock.close()

    def __enter__(self) -> EmulatorThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
