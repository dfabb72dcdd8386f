"""SimulatedOEM: an OEM cloud over the simulated cars, implementing :class:`twin.oem.OEMAdapter`.

The controller reaches simulated cars only through this head, exactly as it reaches real cars
through ``adapters/<oem>/``. Its behaviour comes from the scenario's OEM profile
(:class:`twin.scenario.OEMProfile`) and follows what the real clouds do (Smartcar, Tesla Fleet):

* every call takes a lognormal latency (reads, commands and wakes separately);
* a share of calls fail with a 5xx (:class:`~twin.oem.TransientUpstream`), and during an
  outage all of them do, while webhooks are held back until it ends;
* quotas over a rolling window per vehicle and per account (an hour) and for the whole
  application (a minute) answer 429 with Retry-After and the scope
  (:class:`~twin.oem.RateLimited`), like Smartcar's ``RATE_LIMIT/VEHICLE``; the head declares
  the same budgets in :attr:`rate_limits`;
* a car that is not charging falls asleep after a while without calls and then answers
  "asleep" (Tesla's 408, Smartcar's ``VEHICLE_STATE/ASLEEP``) until woken; waking takes time
  and is itself a call;
* SoC is reported floored to a step, and reads may be served from the cloud's cache, so a
  reading's ``taken_at`` can be well before now;
* access tokens are per **account** and expire; the head refreshes them ahead of expiry through
  the cloud's auth server (:class:`twin.auth.AccountTokens`: once per account, rotating refresh
  tokens, the old one valid for a minute after use as at Smartcar); a revoked grant
  (:meth:`SimulatedOEM.revoke`) makes every call of the account's cars raise
  :class:`~twin.oem.ReauthorizationRequired`;
* some cars acknowledge "stop" and keep charging (always, for models that do, or with a
  probability per command);
* where the profile allows, the charging current and the charge limit can be set;
* commands are idempotent per key: a command whose key was already acknowledged is not sent
  again; a command that reached the cloud is carried out even when its caller stopped waiting
  (a host's call timeout), as a request that left for a real cloud is;
* car SoC and measurement times are reported as real clouds report them: times to the
  millisecond, SoC floored to the profile's step.

The same cloud serves the OEM emulators (``adapters/<oem>/emulator.py``): the ``serve_*``
methods are the cloud's side of an HTTP call, with the bearer token the request carried and
without the head's idempotency (a real API has none); :meth:`serve_refresh` is the token
endpoint. A head talking to an emulator over HTTP therefore meets exactly the cloud the direct
head meets, draw for draw.

Webhooks are pushed on plug-in and unplug and when a command changes the charging state:
in-process to :meth:`subscribe`d sinks, and as signed deliveries (:meth:`webhook_delivery`)
that :meth:`parse_webhook` verifies and de-duplicates, as a web route would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import numpy as np

from twin.auth import AccountTokens, MemoryTokenStore, RefreshFailed, RefreshRefused, Token
from twin.oem import (
    AuthExpired,
    Capabilities,
    CommandRejected,
    DiscoveredVehicle,
    RateBudget,
    RateLimited,
    TransientUpstream,
    UnknownVehicle,
    VehicleAsleep,
    VehicleReading,
    WebhookRejected,
)
from twin.scenario import Latency, OEMProfile
from twin.sim.clock import SimClock
from twin.sim.world import Car, World

__all__ = ["SimulatedOEM", "SIGNATURE_HEADER"]

_HOUR_S = 3600.0
_MINUTE_S = 60.0
# z-score of the 95th percentile of a standard normal: turns (median, p95) into a lognormal.
_Z95 = 1.6448536269514722
# Smartcar invalidates a used refresh token a minute after use (the grace lets a client whose
# response was lost retry the refresh).
_REFRESH_GRACE_S = 60.0
# Deliveries and idempotency keys remembered; far more than a day of a large fleet's traffic.
_REMEMBER = 200_000
#: "the call is this head's own" (direct), as opposed to a request carrying a bearer token
_OWN = object()
#: header carrying the hex HMAC-SHA256 of a webhook body (Smartcar's is SC-Signature)
SIGNATURE_HEADER = "X-Twin-Signature"


class _Cloud:
    """What the cloud keeps per vehicle."""

    __slots__ = ("calls", "awake_until", "cache", "ignores_stop", "account")

    def __init__(self, ignores_stop: bool, account: str) -> None:
        self.calls: deque[float] = deque()
        self.awake_until = -math.inf
        self.cache: VehicleReading | None = None
        self.ignores_stop = ignores_stop
        self.account = account


class _Grant:
    """What the auth server keeps per account."""

    __slots__ = ("access", "expires", "refresh", "previous", "previous_until", "revoked")

    def __init__(self, access: str, expires: float, refresh: str) -> None:
        self.access, self.expires, self.refresh = access, expires, refresh
        self.previous: str | None = None
        self.previous_until = -math.inf
        self.revoked = False


class SimulatedOEM:
    """The cloud of one OEM profile, serving the cars assigned to it.

    ``ignores_stop`` lists vehicle ids of models that never obey "stop"; ``accounts`` maps a
    vehicle id to its account (default: one account per car, named after it).
    """

    def __init__(self, name: str, profile: OEMProfile, world: World, clock: SimClock, cars: list[Car],
                 rng: np.random.Generator | None = None, ignores_stop: set[str] | frozenset[str] = frozenset(),
                 accounts: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.profile = profile
        self._world = world
        self._clock = clock
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._cars = {c.vehicle_id: c for c in cars}
        accounts = accounts or {}
        self._cloud = {c.vehicle_id: _Cloud(c.vehicle_id in ignores_stop, accounts.get(c.vehicle_id, c.vehicle_id))
                       for c in cars}
        self._account_calls: dict[str, deque[float]] = {}
        self._app_calls: deque[float] = deque()
        self._outages = sorted(
            ((o.start - clock.start).total_seconds(), (o.end - clock.start).total_seconds()) for o in profile.outages
        )
        self._sinks: list[Callable[[VehicleReading], None]] = []
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._deliveries: OrderedDict[str, None] = OrderedDict()
        self._delivery_seq = 0
        self.webhook_secret = hashlib.sha256(f"chargetwin-webhook:{name}".encode()).hexdigest()
        self._grants: dict[str, _Grant] = {}
        self._refresh_owner: dict[str, str] = {}
        self._access_owner: dict[str, str] = {}
        self._token_seq = 0
        self.tokens: AccountTokens | None = None
        if profile.token_lifetime_s is not None:
            self.tokens = AccountTokens(MemoryTokenStore(), self._refresh, clock)
            for account in sorted({c.account for c in self._cloud.values()}):
                self.tokens.store.put(account, self._issue(account, 0.0))
        cc = profile.current_control
        current = {} if cc is None else {"min_amps": cc.min_amps, "max_amps": cc.max_amps,
                                          "amps_step": cc.step_amps, "volts": cc.volts, "phases": cc.phases}
        self._caps = Capabilities(pushes_telemetry=profile.push, needs_wake=profile.sleep_after_s is not None,
                                  can_set_charge_limit=profile.charge_limit_control, **current)
        world.listeners.append(self._on_plug_change)
        #: calls that reached the cloud, by outcome (for KPIs)
        self.stats = {"calls": 0, "failed": 0, "rate_limited": 0, "asleep": 0, "auth_expired": 0,
                      "stops_ignored": 0, "wakes": 0, "token_refreshes": 0, "refresh_refused": 0,
                      "rejected": 0, "duplicates": 0}

    @property
    def clock(self) -> SimClock:
        """The cloud's clock (the twin's, or wall time behind an emulator on a socket)."""
        return self._clock

    # -- what the head declares ---------------------------------------------------------------

    @property
    def rate_limits(self) -> tuple[RateBudget, ...]:
        p = self.profile
        out = []
        if p.calls_per_vehicle_per_hour is not None:
            out.append(RateBudget("vehicle", p.calls_per_vehicle_per_hour, _HOUR_S))
        if p.calls_per_account_per_hour is not None:
            out.append(RateBudget("account", p.calls_per_account_per_hour, _HOUR_S))
        if p.calls_per_application_per_minute is not None:
            out.append(RateBudget("application", p.calls_per_application_per_minute, _MINUTE_S))
        return tuple(out)

    def capabilities(self, vehicle_id: str) -> Capabilities:
        self._lookup(vehicle_id)
        return self._caps  # every car of a profile can do the same

    def account_of(self, vehicle_id: str) -> str:
        return self._lookup(vehicle_id)[1].account

    async def discover(self, account_id: str) -> list[DiscoveredVehicle]:
        return await self.serve_discover(account_id)

    async def serve_discover(self, account_id: str) -> list[DiscoveredVehicle]:
        """The account's vehicles (the cloud's vehicle list)."""
        await self._latency(self.profile.read_latency)
        if self._in_outage(self._clock.seconds):
            raise TransientUpstream(account_id, f"{self.name} cloud unavailable (outage)")
        return [DiscoveredVehicle(vid, account_id, self.capabilities(vid))
                for vid, cloud in sorted(self._cloud.items()) if cloud.account == account_id]

    # -- OEMAdapter calls ---------------------------------------------------------------------

    async def read(self, vehicle_id: str) -> VehicleReading:
        return await self.serve_read(vehicle_id, _OWN)

    async def serve_read(self, vehicle_id: str, token: object) -> VehicleReading:
        """A read as the cloud serves it to a request carrying ``token``."""
        car, cloud = self._lookup(vehicle_id)
        if token is _OWN and self.tokens is None and not self.profile.read_latency.median_s:
            t = self._check(car, cloud, None)  # the instant cloud: no need to suspend
        else:
            t = await self._arrive(car, cloud, self.profile.read_latency, token)
        cached = cloud.cache
        if cached is not None and t - self._seconds(cached) <= self.profile.reading_max_age_s:
            return cached
        self._require_awake(car, cloud, t)
        return self._fresh(car, cloud, t)

    async def start_charging(self, vehicle_id: str, *, key: str) -> None:
        await self._command(vehicle_id, key, self._act(vehicle_id, "start"), _OWN)

    async def stop_charging(self, vehicle_id: str, *, key: str) -> None:
        await self._command(vehicle_id, key, self._act(vehicle_id, "stop"), _OWN)

    async def set_charging_current(self, vehicle_id: str, amps: float, *, key: str) -> None:
        await self._command(vehicle_id, key, self._act(vehicle_id, "current", amps), _OWN)

    async def set_charge_limit(self, vehicle_id: str, soc: float, *, key: str) -> None:
        await self._command(vehicle_id, key, self._act(vehicle_id, "limit", soc), _OWN)

    async def wake(self, vehicle_id: str) -> None:
        await self.serve_wake(vehicle_id, _OWN)

    async def serve_command(self, vehicle_id: str, command: str, token: object, value: float | None = None) -> None:
        """A command (``start``, ``stop``, ``current`` in A, ``limit`` as a fraction) as the
        cloud serves it to a request carrying ``token``."""
        await self._command(vehicle_id, None, self._act(vehicle_id, command, value), token)

    async def serve_wake(self, vehicle_id: str, token: object) -> None:
        """A wake-up as the cloud serves it: returns once the car is awake."""
        car, cloud = self._lookup(vehicle_id)
        t = await self._arrive(car, cloud, self.profile.wake_latency, token)
        self.stats["wakes"] += 1
        self._keep_awake(cloud, t)

    def _act(self, vehicle_id: str, command: str, value: float | None = None) -> Callable[[Car, _Cloud, float], None]:
        """What ``command`` does to the car once it arrives; refuses what the car cannot do."""
        if command == "start":
            return lambda car, cloud, t: self._rejecting(self._world.start, car, t)
        if command == "stop":
            return self._stop
        if command == "current":
            caps = self.capabilities(vehicle_id)
            if not caps.can_set_current:
                raise CommandRejected(vehicle_id, "not_capable")
            if value is None or not caps.min_amps <= value <= caps.max_amps:
                raise CommandRejected(vehicle_id, "out_of_range")
            kw = value * caps.kw_per_amp()
            return lambda car, cloud, t: self._world.set_power_cap(car, t, kw)
        if command == "limit":
            self._lookup(vehicle_id)
            if not self.profile.charge_limit_control:
                raise CommandRejected(vehicle_id, "not_capable")
            if value is None or not 0.5 <= value <= 1.0:  # Smartcar accepts 0.5..1, Tesla soc_min..max
                raise CommandRejected(vehicle_id, "out_of_range")
            return lambda car, cloud, t: self._world.set_limit(car, t, value)
        raise ValueError(f"unknown command {command!r}")

    async def _arrive(self, car: Car, cloud: _Cloud, latency: Latency, token: object) -> float:
        """The way of every call: an access token, the latency, the cloud's checks. Returns when
        the call reached the car (s).

        ``token`` is what an HTTP request carried; for this head's own calls (``_OWN``) the token
        comes from the account's :class:`~twin.auth.AccountTokens` (refreshed when due), and a
        token the cloud rejects is refreshed and the call sent again, as HTTP heads do on a 401."""
        if token is not _OWN:
            await self._latency(latency)
            return self._check(car, cloud, token if self.tokens is not None else None)
        if self.tokens is None:
            await self._latency(latency)
            return self._check(car, cloud, None)
        token = await self.tokens.access_token(cloud.account, car.vehicle_id)
        await self._latency(latency)
        try:
            return self._check(car, cloud, token)
        except AuthExpired:
            token = await self.tokens.after_rejection(cloud.account, car.vehicle_id, token)
            await self._latency(latency)
            return self._check(car, cloud, token)

    async def _command(self, vehicle_id: str, key: str | None, act: Callable[[Car, _Cloud, float], None],
                       token: object) -> None:
        """A command: sent once per key (``None``: a request over HTTP, which has no key),
        carried out by ``act`` on an awake car; a change of the charging state is pushed. Once
        sent it is carried out even if the caller stops waiting."""
        car, cloud = self._lookup(vehicle_id)
        if key is not None and self._duplicate(key):
            return
        if token is not _OWN:
            # served to an HTTP request: a server carries on whether or not the client still
            # waits (the heads themselves shield their commands from their callers' timeouts)
            await self._carry_out(car, cloud, key, act, token)
            return
        await self._clock.spawn(self._carry_out(car, cloud, key, act, token))

    async def _carry_out(self, car: Car, cloud: _Cloud, key: str | None, act: Callable[[Car, _Cloud, float], None],
                         token: object) -> None:
        t = await self._arrive(car, cloud, self.profile.command_latency, token)
        self._require_awake(car, cloud, t)
        was = car.charging
        act(car, cloud, t)
        if key is not None:
            self._ack(key)
        if car.charging != was:
            self._push(car, t)

    def _stop(self, car: Car, cloud: _Cloud, t: float) -> None:
        self._world.advance(car, t)
        if car.charging and (cloud.ignores_stop or self._draw(self.profile.ignore_stop_probability)):
            # acknowledged, not obeyed: the API says success and the car keeps charging
            self.stats["stops_ignored"] += 1
            self._world.log.append((t, car.vehicle_id, "fault", "stop ignored"))
            return
        self._rejecting(self._world.stop, car, t)

    def subscribe(self, sink: Callable[[VehicleReading], None]) -> None:
        self._sinks.append(sink)

    # -- webhooks -----------------------------------------------------------------------------

    def webhook_delivery(self, readings: list[VehicleReading]) -> tuple[dict[str, str], bytes]:
        """The signed HTTP delivery (headers, body) this cloud sends for ``readings``."""
        self._delivery_seq += 1
        body = json.dumps({
            "delivery_id": f"{self.name}-{self._delivery_seq}",
            "readings": [{"vehicle_id": r.vehicle_id, "taken_at": r.taken_at.isoformat(), "soc": r.soc,
                          "plugged_in": r.plugged_in, "charging": r.charging} for r in readings],
        }, sort_keys=True).encode()
        signature = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        return {"Content-Type": "application/json", SIGNATURE_HEADER: signature}, body

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[VehicleReading]:
        """Readings of a delivery; [] for one already seen. Raises :class:`WebhookRejected`."""
        given = {k.lower(): v for k, v in headers.items()}.get(SIGNATURE_HEADER.lower())
        if not given:
            raise WebhookRejected(f"{self.name} webhook without {SIGNATURE_HEADER} header")
        expected = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, expected):
            raise WebhookRejected(f"{self.name} webhook signature does not match its body")
        try:
            data = json.loads(body)
            delivery = str(data["delivery_id"])
            readings = [VehicleReading(r["vehicle_id"], datetime.fromisoformat(r["taken_at"]),
                                       None if r["soc"] is None else float(r["soc"]), bool(r["plugged_in"]),
                                       bool(r["charging"])) for r in data["readings"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookRejected(f"{self.name} webhook body is not a delivery: {exc}") from None
        if delivery in self._deliveries:
            return []
        _remember(self._deliveries, delivery)
        return readings

    # -- test and scenario hooks --------------------------------------------------------------

    def revoke(self, account_id: str) -> None:
        """The driver revoked the platform's access in the OEM's app: refreshes are refused."""
        grant = self._grants.get(account_id)
        if grant is not None:
            grant.revoked = True
            grant.expires = min(grant.expires, self._clock.seconds)

    def relink(self, account_id: str) -> None:
        """The driver linked the account again (a new grant, stored in the head's token store)."""
        if self.tokens is not None:
            self.tokens.store.put(account_id, self._issue(account_id, self._clock.seconds))

    def forget(self, vehicle_id: str) -> None:
        """The cloud no longer knows the car (sold, or removed from the account)."""
        self._cars.pop(vehicle_id, None)
        self._cloud.pop(vehicle_id, None)

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

    def _check(self, car: Car, cloud: _Cloud, token: str | None) -> float:
        """Checks every call passes when it reaches the cloud; returns the time (s)."""
        t = self._clock.seconds
        vid = car.vehicle_id
        self.stats["calls"] += 1
        if self._in_outage(t):
            self.stats["failed"] += 1
            raise TransientUpstream(vid, f"{self.name} cloud unavailable (outage)")
        if token is not None:
            grant = self._grants[cloud.account]
            if token != grant.access or t >= grant.expires:
                self.stats["auth_expired"] += 1
                raise AuthExpired(vid, "access token expired or revoked")
        p = self.profile
        if p.calls_per_vehicle_per_hour is not None:
            self._quota(vid, cloud.calls, p.calls_per_vehicle_per_hour, _HOUR_S, t, "vehicle")
        if p.calls_per_account_per_hour is not None:
            window = self._account_calls.setdefault(cloud.account, deque())
            self._quota(vid, window, p.calls_per_account_per_hour, _HOUR_S, t, "account")
        if p.calls_per_application_per_minute is not None:
            self._quota(vid, self._app_calls, p.calls_per_application_per_minute, _MINUTE_S, t, "application")
        if self._draw(p.failure_rate):
            self.stats["failed"] += 1
            raise TransientUpstream(vid, "upstream returned 502")
        return t

    def _quota(self, vid: str, calls: deque[float], quota: int, period: float, t: float, scope) -> None:
        while calls and calls[0] <= t - period:
            calls.popleft()
        if len(calls) >= quota:
            self.stats["rate_limited"] += 1
            raise RateLimited(vid, retry_after_s=math.ceil(calls[0] + period - t), scope=scope)
        calls.append(t)

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

    def _rejecting(self, command: Callable[[Car, float], None], car: Car, t: float) -> None:
        try:
            command(car, t)
        except CommandRejected:
            self.stats["rejected"] += 1
            raise

    def _duplicate(self, key: str) -> bool:
        if key in self._acked:
            self.stats["duplicates"] += 1
            return True
        return False

    def _ack(self, key: str) -> None:
        _remember(self._acked, key)

    def _draw(self, probability: float) -> bool:
        return probability > 0.0 and self._rng.random() < probability

    def _in_outage(self, t: float) -> bool:
        return any(start <= t < end for start, end in self._outages)

    def _outage_end(self, t: float) -> float:
        for start, end in self._outages:
            if start <= t < end:
                return end
        return t

    # -- the auth server ----------------------------------------------------------------------

    def _issue(self, account: str, t: float) -> Token:
        self._token_seq += 1
        access, refresh = f"at-{self.name}-{self._token_seq}", f"rt-{self.name}-{self._token_seq}"
        grant = self._grants.get(account)
        self._refresh_owner[refresh] = account
        self._access_owner[access] = account
        lifetime = self.profile.token_lifetime_s or math.inf
        if grant is None or grant.revoked:
            self._grants[account] = grant = _Grant(access, t + lifetime, refresh)
        else:
            grant.previous, grant.previous_until = grant.refresh, t + _REFRESH_GRACE_S
            grant.access, grant.expires, grant.refresh = access, t + lifetime, refresh
        expires_at = self._clock.at(t + lifetime) if math.isfinite(lifetime) else self._clock.at(t) + timedelta(days=3650)
        return Token(access, refresh, expires_at)

    async def _refresh(self, account: str, token: Token) -> Token:
        """The OAuth refresh-token grant at this cloud's auth server."""
        await self._latency(self.profile.read_latency)
        t = self._clock.seconds
        if self._in_outage(t):
            self.stats["failed"] += 1
            raise RefreshFailed(f"{self.name} auth server unavailable")
        grant = self._grants.get(account)
        valid = grant is not None and not grant.revoked and (
            token.refresh_token == grant.refresh
            or (token.refresh_token == grant.previous and t < grant.previous_until)
        )
        if not valid:
            self.stats["refresh_refused"] += 1
            self._world.log.append((t, account, "auth", "refresh refused: invalid_grant"))
            raise RefreshRefused("invalid_grant")
        self.stats["token_refreshes"] += 1
        self._world.log.append((t, account, "auth", "token refreshed"))
        return self._issue(account, t)

    async def serve_refresh(self, refresh_token: str) -> tuple[str, Token]:
        """The refresh-token grant as the token endpoint serves it: (account, new tokens).
        Raises :class:`~twin.auth.RefreshRefused` (``invalid_grant``) or
        :class:`~twin.auth.RefreshFailed` (the auth server is down)."""
        account = self._refresh_owner.get(refresh_token, "")
        return account, await self._refresh(account, Token("", refresh_token, self._clock.now()))

    def linked_token(self, account_id: str) -> Token:
        """The tokens the account's grant started with (what the code exchange would give)."""
        if self.tokens is None:  # this cloud does not check tokens
            return Token(f"at-{self.name}-open-{account_id}", f"rt-{self.name}-open-{account_id}",
                         self._clock.start + timedelta(days=3650))
        token = self.tokens.store.get(account_id)
        if token is None:
            raise KeyError(f"no account {account_id!r} at OEM {self.name}")
        return token

    def link(self, account_id: str) -> Token:
        """A new grant for the account (an authorization code exchanged at the token endpoint)."""
        if self.tokens is None:
            return self.linked_token(account_id)
        return self._issue(account_id, self._clock.seconds)

    def account_for_token(self, access_token: str) -> str | None:
        """The account an access token was issued to (current or not), else None."""
        if self.tokens is None:
            prefix = f"at-{self.name}-open-"
            return access_token[len(prefix):] if access_token.startswith(prefix) else None
        return self._access_owner.get(access_token)

    def car(self, vehicle_id: str) -> Car:
        """The simulated car (raises :class:`~twin.oem.UnknownVehicle`), brought up to now."""
        car, _ = self._lookup(vehicle_id)
        self._world.advance(car, self._clock.seconds)
        return car

    def awake(self, vehicle_id: str) -> bool:
        """Whether the car is awake now, as the cloud's vehicle summary says (not a call)."""
        car, cloud = self._lookup(vehicle_id)
        if self.profile.sleep_after_s is None:
            return True
        t = self._clock.seconds
        self._world.advance(car, t)
        return car.charging or t < max(cloud.awake_until, car.last_charge_end + self.profile.sleep_after_s)

    def accounts(self) -> dict[str, str]:
        """vehicle id -> account id of every car this cloud serves."""
        return {vid: cloud.account for vid, cloud in self._cloud.items()}

    # -- readings and webhooks ----------------------------------------------------------------

    def _seconds(self, reading: VehicleReading) -> float:
        return (reading.taken_at - self._clock.start).total_seconds()

    def _fresh(self, car: Car, cloud: _Cloud, t: float) -> VehicleReading:
        soc, plugged, charging = self._world.state(car, t)
        step = self.profile.soc_step
        if step > 0:
            # floor to the step; the epsilon keeps exact multiples (0.8) from dropping a step.
            # A step of 1/n is counted in n-ths (57/100, as a cloud reporting whole percent has it)
            per = round(1.0 / step)
            if abs(per * step - 1.0) < 1e-9:
                soc = math.floor(soc * per + 1e-9) / per
            else:
                soc = math.floor(soc / step + 1e-9) * step
        # clouds date readings to the millisecond
        reading = VehicleReading(car.vehicle_id, self._clock.at(math.floor(t * 1000.0 + 1e-6) / 1000.0), soc, plugged,
                                 charging)
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


def _remember(seen: OrderedDict[str, None], key: str) -> None:
    seen[key] = None
    if len(seen) > _REMEMBER:
        seen.popitem(last=False)
