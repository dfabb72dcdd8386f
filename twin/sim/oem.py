"""SimulatedOEM: an OEM cloud over the simulated cars, implementing :class:`twin.oem.OEMAdapter`.

The controller reaches simulated cars only through this head, exactly as it reaches real cars
through ``adapters/<oem>/``. Its behaviour comes from the scenario's OEM profile
(:class:`twin.scenario.OEMProfile`) and follows what the real clouds do
(``shared/reference/apis.md``):

* every call takes a lognormal latency (reads, commands and wakes separately);
* a share of calls fail with a 5xx (:class:`~twin.oem.TransientUpstream`), and during an
  outage all of them do, while webhooks are held back until it ends;
* a per-vehicle quota over a rolling hour answers 429 with Retry-After
  (:class:`~twin.oem.RateLimited`), like Smartcar's ``RATE_LIMIT/VEHICLE``;
* a car that is not charging falls asleep after a while without calls and then answers
  "asleep" (Tesla's 408, Smartcar's ``VEHICLE_STATE/ASLEEP``) until woken; waking takes time
  and is itself a call;
* SoC is reported floored to a step, and reads may be served from the cloud's cache, so a
  reading's ``taken_at`` can be well before now;
* access tokens expire (:class:`~twin.oem.AuthExpired`) until refreshed;
* some cars acknowledge "stop" and keep charging (always, for models that do, or with a
  probability per command).

Webhooks are pushed on plug-in and unplug and when a command changes the charging state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np

from twin.oem import (
    AuthExpired,
    RateLimited,
    TransientUpstream,
    UnknownVehicle,
    VehicleAsleep,
    VehicleReading,
)
from twin.scenario import Latency, OEMProfile
from twin.sim.clock import SimClock
from twin.sim.world import Car, World

__all__ = ["SimulatedOEM"]

_HOUR_S = 3600.0
# z-score of the 95th percentile of a standard normal: turns (median, p95) into a lognormal.
_Z95 = 1.6448536269514722


class _Cloud:
    """What the cloud keeps per vehicle."""

    __slots__ = ("calls", "awake_until", "token_expires", "cache", "ignores_stop")

    def __init__(self, ignores_stop: bool) -> None:
        self.calls: deque[float] = deque()
        self.awake_until = -math.inf
        self.token_expires = math.inf
        self.cache: VehicleReading | None = None
        self.ignores_stop = ignores_stop


class SimulatedOEM:
    """The cloud of one OEM profile, serving the cars assigned to it.

    ``ignores_stop`` lists vehicle ids of models that never obey "stop".
    """

    def __init__(self, name: str, profile: OEMProfile, world: World, clock: SimClock, cars: list[Car],
                 rng: np.random.Generator | None = None, ignores_stop: set[str] | frozenset[str] = frozenset()) -> None:
        self.name = name
        self.profile = profile
        self.pushes_telemetry = profile.push
        self._world = world
        self._clock = clock
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._cars = {c.vehicle_id: c for c in cars}
        self._cloud = {c.vehicle_id: _Cloud(c.vehicle_id in ignores_stop) for c in cars}
        if profile.token_lifetime_s is not None:
            for cloud in self._cloud.values():
                cloud.token_expires = profile.token_lifetime_s
        self._outages = sorted(
            ((o.start - clock.start).total_seconds(), (o.end - clock.start).total_seconds()) for o in profile.outages
        )
        self._sinks: list[Callable[[VehicleReading], None]] = []
        world.listeners.append(self._on_plug_change)
        #: calls that reached the cloud, by outcome (for KPIs)
        self.stats = {"calls": 0, "failed": 0, "rate_limited": 0, "asleep": 0, "auth_expired": 0,
                      "stops_ignored": 0, "wakes": 0}

    # -- OEMAdapter ---------------------------------------------------------------------------

    async def read(self, vehicle_id: str) -> VehicleReading:
        car, cloud = self._lookup(vehicle_id)
        await self._latency(self.profile.read_latency)
        t = self._gate(car, cloud)
        cached = cloud.cache
        if cached is not None and t - self._seconds(cached) <= self.profile.reading_max_age_s:
            return cached
        self._require_awake(car, cloud, t)
        return self._fresh(car, cloud, t)

    async def start_charging(self, vehicle_id: str) -> None:
        car, cloud = self._lookup(vehicle_id)
        await self._latency(self.profile.command_latency)
        t = self._gate(car, cloud)
        self._require_awake(car, cloud, t)
        was = car.charging
        self._world.start(car, t)
        if car.charging != was:
            self._push(car, t)

    async def stop_charging(self, vehicle_id: str) -> None:
        car, cloud = self._lookup(vehicle_id)
        await self._latency(self.profile.command_latency)
        t = self._gate(car, cloud)
        self._require_awake(car, cloud, t)
        self._world.advance(car, t)
        if car.charging and (cloud.ignores_stop or self._draw(self.profile.ignore_stop_probability)):
            # acknowledged, not obeyed: the API says success and the car keeps charging
            self.stats["stops_ignored"] += 1
            self._world.log.append((t, car.vehicle_id, "fault", "stop ignored"))
            return
        was = car.charging
        self._world.stop(car, t)
        if car.charging != was:
            self._push(car, t)

    async def wake(self, vehicle_id: str) -> None:
        car, cloud = self._lookup(vehicle_id)
        await self._latency(self.profile.wake_latency)
        t = self._gate(car, cloud)
        self.stats["wakes"] += 1
        self._keep_awake(cloud, t)

    async def refresh_auth(self, vehicle_id: str) -> None:
        """Exchange the refresh token for a new access token (an auth-server call)."""
        _car, cloud = self._lookup(vehicle_id)
        await self._latency(self.profile.read_latency)
        t = self._clock.seconds
        if self._in_outage(t):
            self.stats["failed"] += 1
            raise TransientUpstream(vehicle_id, f"{self.name} auth server unavailable")
        if self.profile.token_lifetime_s is not None:
            cloud.token_expires = t + self.profile.token_lifetime_s

    def subscribe(self, sink: Callable[[VehicleReading], None]) -> None:
        self._sinks.append(sink)

    # -- the cloud's rules --------------------------------------------------------------------

    def _lookup(self, vehicle_id: str) -> tuple[Car, _Cloud]:
        try:
            return self._cars[vehicle_id], self._cloud[vehicle_id]
        except KeyError:
            raise UnknownVehicle(vehicle_id, f"not a vehicle of OEM {self.name}") from None

    async def _latency(self, spec: Latency) -> None:
        if spec.median_s > 0:
            sigma = math.log(spec.p95_s / spec.median_s) / _Z95 if spec.p95_s > spec.median_s else 0.0
            await self._clock.sleep(float(spec.median_s * math.exp(sigma * self._rng.standard_normal())))

    def _gate(self, car: Car, cloud: _Cloud) -> float:
        """Checks every call passes when it reaches the cloud; returns the time (s)."""
        t = self._clock.seconds
        vid = car.vehicle_id
        self.stats["calls"] += 1
        if self._in_outage(t):
            self.stats["failed"] += 1
            raise TransientUpstream(vid, f"{self.name} cloud unavailable (outage)")
        if t >= cloud.token_expires:
            self.stats["auth_expired"] += 1
            raise AuthExpired(vid, "access token expired")
        quota = self.profile.calls_per_vehicle_per_hour
        if quota is not None:
            calls = cloud.calls
            while calls and calls[0] <= t - _HOUR_S:
                calls.popleft()
            if len(calls) >= quota:
                self.stats["rate_limited"] += 1
                raise RateLimited(vid, retry_after_s=math.ceil(calls[0] + _HOUR_S - t))
            calls.append(t)
        if self._draw(self.profile.failure_rate):
            self.stats["failed"] += 1
            raise TransientUpstream(vid, "upstream returned 502")
        return t

    def _require_awake(self, car: Car, cloud: _Cloud, t: float) -> None:
        if self.profile.sleep_after_s is None:
            return
        self._world.advance(car, t)
        last_active = max(cloud.awake_until, car.last_charge_end + self.profile.sleep_after_s)
        if not car.charging and t >= last_active:
            self.stats["asleep"] += 1
            raise VehicleAsleep(car.vehicle_id, "vehicle is offline or asleep")
        self._keep_awake(cloud, t)

    def _keep_awake(self, cloud: _Cloud, t: float) -> None:
        if self.profile.sleep_after_s is not None:
            cloud.awake_until = max(cloud.awake_until, t + self.profile.sleep_after_s)

    def _draw(self, probability: float) -> bool:
        return probability > 0.0 and self._rng.random() < probability

    def _in_outage(self, t: float) -> bool:
        return any(start <= t < end for start, end in self._outages)

    def _outage_end(self, t: float) -> float:
        for start, end in self._outages:
            if start <= t < end:
                return end
        return t

    # -- readings and webhooks ----------------------------------------------------------------

    def _seconds(self, reading: VehicleReading) -> float:
        return (reading.taken_at - self._clock.start).total_seconds()

    def _fresh(self, car: Car, cloud: _Cloud, t: float) -> VehicleReading:
        soc, plugged, charging = self._world.state(car, t)
        step = self.profile.soc_step
        if step > 0:
            # floor to the step; the epsilon keeps exact multiples (0.8) from dropping a step
            soc = math.floor(soc / step + 1e-9) * step
        reading = VehicleReading(car.vehicle_id, self._clock.at(t), soc, plugged, charging)
        cloud.cache = reading
        return reading

    def _push(self, car: Car, t: float) -> None:
        if not self.profile.push or not self._sinks:
            return
        cloud = self._cloud[car.vehicle_id]
        reading = self._fresh(car, cloud, t)
        delay = self.profile.push_delay_s + (self._outage_end(t) - t)
        for sink in self._sinks:
            self._clock.call_later(delay, lambda s=sink: s(reading))

    def _on_plug_change(self, car: Car, t: float) -> None:
        cloud = self._cloud.get(car.vehicle_id)
        if cloud is None:
            return
        self._keep_awake(cloud, t)  # plugging in or out wakes the car
        self._push(car, t)
