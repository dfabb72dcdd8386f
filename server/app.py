"""The live control server: ``create_app(settings)`` is the FastAPI application.

Pipeline (each stage consumes and publishes events on the bus, :mod:`server.bus`):

* **registration**: linking an OEM account (``/oem/{oem}/connect`` → the OEM's consent page →
  ``/oem/{oem}/callback``) stores its tokens encrypted, discovers its cars and publishes
  ``vehicle.registered`` per car;
* **telemetry**: OEM webhooks (``/webhooks/{oem}``, signature verified, de-duplicated) publish
  ``telemetry.received``; polling is the controller's own (within each head's rate limits);
* **planning and dispatch**: the hosted controller (:class:`server.control.ControlService`)
  consumes those events and the drivers' ``preferences.changed``, plans, and sends commands
  through the heads with their idempotency keys, publishing ``command.sent`` /
  ``command.finished``;
* **driver information**: ``notification.created`` (the plan at plug-in with its start time,
  escalations) is stored, streamed to the driver (Server-Sent Events, ``/notifications/stream``)
  and posted to the driver's webhook URLs (HMAC-signed, retried with back-off, dead-lettered).

Every query is scoped to the signed-in user: another user's vehicle is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from collections.abc import AsyncIterator
from datetime import datetime, time, timedelta, timezone
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm

from server import db as store
from server import ui
from server.bus import connect_bus
from server.control import ControlService, VehicleSpec, key_of, preferences_from_event, reading_to_event
from server.models import (
    WEEKDAYS, DayPlan, ApiKeyIn, ApiKeyOut, OverrideIn, PreferencesIn, SignUp, TokenOut, UserOut, VehiclePatch, WebhookEndpointIn,
)
from server.oems import OEMS, OemLink
from server.security import (
    InvalidCredentials, TokenCipher, api_key_hash, check_password_strength, hash_password, issue_access_token,
    new_api_key, new_state, sign_body, user_from_access_token, verify_password,
)
from server.settings import Settings
from server.tokens import PersistentTokenStore
from twin.oem import OEMError, WebhookRejected

__all__ = ["create_app"]

log = logging.getLogger("server")

_oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


class Server:
    """What the routes share while the app runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.demo = None
        if settings.demo:
            from server.demo import Demo

            self.demo = Demo(self)
            settings = settings.model_copy(update=self.demo.settings_update(settings.public_url))
        self.settings = settings
        self.db = store.Database(settings.database_url)
        nats = {"stream": settings.bus_stream, "prefix": settings.bus_prefix} if settings.bus_url.startswith("nats") else {}
        self.bus = connect_bus(settings.bus_url, **nats)
        # outside the demo both are required (Settings.check); the demo's are fixed, so that a
        # demo restarted on its database still reads what it stored (emulator tokens only)
        key = settings.token_key.get_secret_value() if settings.token_key else _demo_secret("token-key", fernet=True)
        self.cipher = TokenCipher(key)
        self.jwt_secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else _demo_secret("jwt")
        self.tokens = PersistentTokenStore(self._persist_tokens)
        self.links: dict[str, OemLink] = {}
        self.control: ControlService | None = None
        self.clock = None
        self.streams: dict[str, set[asyncio.Queue]] = {}
        self.http = httpx.AsyncClient(timeout=10.0)
        self._tasks: set[asyncio.Task] = set()

    # -- background work ----------------------------------------------------------------------

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _persist_tokens(self, account_id: str, token) -> None:
        async with self.db.session() as s:
            await store.set_account_tokens(s, account_id, None if token is None else self.cipher.encrypt(token))
            await s.commit()

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Every event goes through the outbox: stored first (with its id), then handed to the
        bus and marked published. A crash in between leaves it pending, and the next start
        publishes it again (same id: consumers can tell)."""
        async with self.db.session() as s:
            row = await store.outbox_put(s, topic, event)
            await s.commit()
        await self._relay([row])

    async def _relay(self, rows) -> None:
        for row in rows:
            await self.bus.publish(row.topic, {**row.payload, "id": f"outbox-{row.seq}"})
        async with self.db.session() as s:
            await store.outbox_mark_published(s, [row.seq for row in rows])
            await s.commit()

    async def relay_pending(self) -> int:
        """Publish what the outbox still holds (after a crash); returns how many."""
        done = 0
        while True:
            async with self.db.session() as s:
                rows = await store.outbox_pending(s, 500)
            if not rows:
                return done
            await self._relay(rows)
            done += len(rows)

    # -- stages -------------------------------------------------------------------------------

    async def on_control_event(self, topic: str, event: dict[str, Any]) -> None:
        assert self.control is not None
        await self.control.on_event(topic, event)

    async def on_command(self, event: dict[str, Any]) -> None:
        """The recording stage: every command sent and how it ended."""
        async with self.db.session() as s:
            if "kind" in event:
                await store.record_command(s, event["command_id"], event["vehicle"], event["kind"], event["detail"],
                                           sent_at=datetime.fromisoformat(event["at"]))
            else:
                await store.finish_command(s, event["command_id"], event["outcome"], error=event.get("error"),
                                           finished_at=datetime.fromisoformat(event["at"]))
            await s.commit()

    async def on_notification(self, event: dict[str, Any]) -> None:
        async with self.db.session() as s:
            vehicle = await store.vehicle_by_oem_id(s, event.get("oem"), event["vehicle_id"])
            if vehicle is None:
                return
            body = {k: v for k, v in event.items() if k not in ("id", "topic", "kind", "notice", "vehicle_id")}
            body["vehicle"] = vehicle.id
            note = await store.add_notification(s, vehicle.user_id, vehicle.id, event.get("notice", "plan"), body)
            endpoints = await store.webhook_endpoints_of(s, vehicle.user_id)
            await s.commit()
            payload = {"id": note.id, "kind": note.kind, "created_at": note.created_at.isoformat(), **body}
        for queue in self.streams.get(vehicle.user_id, set()):
            queue.put_nowait(payload)
        for endpoint in endpoints:
            self.spawn(self.deliver_webhook(endpoint.id, endpoint.url, endpoint.secret, note.id, payload))

    async def deliver_webhook(self, endpoint_id: str, url: str, secret: str, notification_id: str,
                              payload: dict[str, Any]) -> None:
        """POST ``payload`` signed to ``url``, retried with exponential back-off, dead-lettered
        after ``webhook_max_attempts`` tries; every attempt is recorded."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        delay = 1.0
        attempts = self.settings.webhook_max_attempts
        for attempt in range(1, attempts + 1):
            ts = int(datetime.now(timezone.utc).timestamp())
            headers = {"Content-Type": "application/json", "Chargetwin-Signature": sign_body(secret, body, ts)}
            status_code, error = None, None
            try:
                response = await self.http.post(url, content=body, headers=headers)
                status_code = response.status_code
                ok = 200 <= status_code < 300
            except httpx.HTTPError as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            async with self.db.session() as s:
                await store.record_delivery(s, endpoint_id, notification_id, attempt, status_code, error,
                                            delivered=ok, dead=not ok and attempt == attempts)
                await s.commit()
            if ok:
                return
            if attempt < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300.0)
        log.warning("notification %s dead-lettered after %d attempts to %s", notification_id, attempts, url)

    # -- start and stop -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.db.migrate()
        await self.bus.start()
        if self.demo is not None:
            self.clock = self.demo.clock
        else:
            from twin.host.aio import AsyncClock

            self.clock = AsyncClock(datetime.now(timezone.utc))
        transports = {} if self.demo is None else self.demo.transports
        links = {name: make(self, transports.get(name)) for name, make in OEMS.items()}
        self.links = {name: link for name, link in links.items() if link is not None}
        snapshot = None
        async with self.db.session() as s:
            for account in await store.linked_accounts(s):
                if account.tokens_encrypted:
                    try:
                        self.tokens.load(account.id, self.cipher.decrypt(account.tokens_encrypted))
                    except ValueError as exc:
                        log.error("OEM account %s: %s; the driver must link it again", account.id, exc)
            saved = await store.load_snapshot(s, "controller")
            vehicles = await store.active_vehicles(s)
        if saved is not None:
            snapshot = json.loads(saved)
        heads = {name: link.head for name, link in self.links.items()}
        known = []
        for v in vehicles:  # a restart: the cars the database knows are managed again
            e = await self.vehicle_event(v)
            known.append((v.id, VehicleSpec(e["oem_vehicle_id"], e["oem"], e["account_id"], e["battery_kwh"],
                                            e["max_kw"], preferences_from_event(e["preferences"]))))
        self.control = ControlService(heads, self.clock, self.publish, policy=self.settings.policy,
                                      slot_minutes=self.settings.slot_minutes, vehicles=known, snapshot=snapshot)
        for topic in ("vehicle.registered", "vehicle.unregistered", "preferences.changed", "telemetry.received"):
            await self.bus.subscribe(topic, "control", lambda e, t=topic: self.on_control_event(t, e))
        # one consumer for both topics: a command's outcome is recorded after its sending
        await self.bus.subscribe("command.>", "recorder", self.on_command)
        await self.bus.subscribe("notification.created", "notifier", self.on_notification)
        pending = await self.relay_pending()
        if pending:
            log.info("published %d events the outbox held from before the restart", pending)
        self.control.start()
        from server.forecasts import forecast_frame

        self.control.forecast(forecast_frame(self.settings, self.clock.now()))
        self.spawn(self._refresh_forecasts(forecast_frame))
        self.spawn(self._save_snapshots())
        if self.demo is not None:
            await self.demo.start()

    async def save_snapshot(self) -> None:
        """The controller's state (plans, pending calls with their idempotency keys, back-off
        timers, escalations) into the database."""
        # taken on the loop (a consistent state), turned into text off it: at thousands of cars
        # the dump takes long enough to hold up requests
        text = await asyncio.to_thread(json.dumps, self.control.snapshot())
        async with self.db.session() as s:
            await store.save_snapshot(s, "controller", text)
            await s.commit()

    async def _save_snapshots(self) -> None:
        """Every ``snapshot_interval_s`` of wall time: what a restart after a crash resumes from."""
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_s)
            try:
                await self.save_snapshot()
            except Exception as exc:  # noqa: BLE001 - try again at the next interval
                log.error("the controller's state could not be saved: %s", exc)

    async def _refresh_forecasts(self, make) -> None:
        """A new forecast every hour (the feeds publish day-ahead prices once a day and carbon
        forecasts every half hour); each triggers a re-plan."""
        while True:
            await self.clock.sleep(3600.0)
            try:
                self.control.forecast(make(self.settings, self.clock.now()))
            except Exception as exc:  # noqa: BLE001 - keep the last forecast, say why
                log.error("forecast refresh failed, keeping the last one: %s", exc)

    async def receive_webhook(self, oem: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """An OEM webhook delivery: verified (raises :class:`WebhookRejected`), de-duplicated
        across restarts, its readings published as ``telemetry.received``."""
        link = self.links.get(oem)
        if link is None:
            raise WebhookRejected(f"no OEM {oem!r} configured")
        readings, delivery = link.parse_webhook(headers, body)
        if delivery is not None:
            async with self.db.session() as s:
                seen = await store.seen_webhook(s, oem, delivery)
                await s.commit()
            if seen:
                return {"accepted": 0, "duplicate": True}
        for r in readings:
            await self.publish("telemetry.received", reading_to_event(replace(r, vehicle_id=key_of(oem, r.vehicle_id))))
        return {"accepted": len(readings), "duplicate": False}

    async def link_demo_user(self, email: str, password: str, accounts: dict[str, tuple[str, Any]]) -> None:
        """The demo's user with its OEM accounts linked (the tokens a code exchange would give)."""
        async with self.db.session() as s:
            user = await store.user_by_email(s, email)
            if user is None:
                user = await store.create_user(s, email, hash_password(password))
            await s.commit()
        for oem, (_, tok) in accounts.items():
            link = self.links[oem]
            async with self.db.session() as s:
                # one account per user and OEM, as the link callback records it
                account = await store.upsert_oem_account(s, user.id, oem, f"{user.id}:{oem}", self.cipher.encrypt(tok))
                await s.commit()
            self.tokens.load(account.id, tok)
            found = await link.head.discover(account.id)
            async with self.db.session() as s:
                added = [await store.add_vehicle(s, user.id, account.id, oem, d.vehicle_id, battery_kwh=60.0,
                                                 max_kw=7.4, model=d.model or oem) for d in found]
                await s.commit()
            for v in added:
                await self.publish("vehicle.registered", await self.vehicle_event(v))

    async def stop(self) -> None:
        if self.control is not None:
            await self.save_snapshot()
            await self.control.stop()
        if self.demo is not None:
            await self.demo.stop()
        # background work ends before what it uses closes: a task cancelled inside a database
        # call must finish unwinding while the connection is still there
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=10.0)
            if stuck:
                log.error("%d background tasks did not stop within 10 s", len(stuck))
        await self.tokens.flush()
        await self.bus.close()
        await self.http.aclose()
        for link in self.links.values():
            await link.close()
        await self.db.close()

    # -- helpers for the routes ---------------------------------------------------------------

    async def vehicle_event(self, v) -> dict[str, Any]:
        async with self.db.session() as s:
            prefs = await store.preferences_of(s, v.user_id, v.id)
        return {"vehicle": v.id, "oem": v.oem, "oem_vehicle_id": v.oem_vehicle_id, "account_id": v.account_id,
                "battery_kwh": v.battery_kwh, "max_kw": v.max_kw,
                "preferences": controller_preferences(prefs, self.clock.now() if self.clock else None)}


_DUMMY_HASH = hash_password("not a password anyone has")


def _error(description: str, detail: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": {"detail": detail}}}}


#: the error answers every route may give, with examples (OpenAPI)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("not signed in, or the token expired", "access token expired: sign in again"),
    404: _error("no such resource for this user (another user's ids are answered the same)",
                "no vehicle 7be40ee6bf114382a59a30c28297aa0f"),
    409: _error("a conflict with what exists", "a user with this email exists"),
    422: _error("the request is not valid; the message names the field",
                "ready_by_at 2020-01-01T06:00:00+00:00 is in the past (now 2026-12-02T03:20:00+00:00)"),
}


def _demo_secret(purpose: str, fernet: bool = False) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(f"chargetwin-demo:{purpose}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode() if fernet else digest.hex()


def schedule_of(p: PreferencesIn) -> dict[int, dict[str, Any]]:
    """The weekday schedule as stored: weekday 0-6 -> ready_by "HH:MM" and target."""
    return {i: {"ready_by": p.for_weekday(i).ready_by.strftime("%H:%M"), "target_soc": p.for_weekday(i).target_soc}
            for i in range(7)}


def preferences_in(row) -> PreferencesIn:
    """Stored preferences as the API shows them (every weekday spelt out)."""
    if row is None:
        return PreferencesIn()
    days = {WEEKDAYS[int(k)]: DayPlan(ready_by=time.fromisoformat(v["ready_by"]), target_soc=v["target_soc"])
            for k, v in row.schedule.items()}
    return PreferencesIn(default=days.get("mon", PreferencesIn().default), days=days, min_soc=row.min_soc,
                         carbon_weight_gbp_per_kg=row.carbon_weight_gbp_per_kg)


def controller_preferences(prefs, now: datetime | None, override=None) -> dict[str, Any]:
    """The controller's :class:`Preferences` (as JSON) for the coming session: the weekday
    plan of the next ready-by, the minimum SoC, and a one-off override when there is one."""
    p = preferences_in(prefs)
    now = now or datetime.now(timezone.utc)
    day = p.for_weekday(((now + timedelta(hours=12)).weekday()))
    out = {"ready_by": day.ready_by.isoformat(), "target_soc": day.target_soc, "min_soc": p.min_soc,
           "ready_by_at": None}
    if override is not None:
        if override.kind == "ready_by":
            out["ready_by_at"] = override.ready_by_at.isoformat()
            if override.target_soc is not None:
                out["target_soc"] = override.target_soc
        else:  # charge now: everything up to the target is the minimum
            out["min_soc"] = out["target_soc"] = override.target_soc or day.target_soc
    out["min_soc"] = min(out["min_soc"], out["target_soc"])
    return out


async def current_user(request: Request, token: Annotated[str | None, Depends(_oauth2)],
                       x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The signed-in user's id: from an ``X-API-Key`` header or a Bearer access token."""
    server: Server = request.app.state.server
    if x_api_key:
        async with server.db.session() as s:
            found = await store.user_for_api_key_hash(s, api_key_hash(x_api_key))
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key")
        return found.id
    if token is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in: a Bearer token or an X-API-Key header",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        return user_from_access_token(token, server.jwt_secret)
    except InvalidCredentials as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None


#: the signed-in user's id, for a route's parameter
User = Annotated[str, Depends(current_user)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The server's FastAPI app. Refuses to start (``SettingsError``) without an encryption
    key and a JWT secret outside demo mode."""
    settings = settings or Settings()
    settings.check()
    server = Server(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="chargetwin server", version="0.1.0", lifespan=lifespan, responses=_ERRORS,
                  description="Smart charging through the car makers' cloud APIs: link an OEM account, set "
                              "ready-by preferences, see each car's plan and status.")
    app.state.server = server
    app.include_router(ui.router)  # the driver's pages (/ui)
    if server.demo is not None:
        for oem, emulator in server.demo.apps.items():
            app.mount(f"/demo/{oem}", emulator)

    async def owned_vehicle(vehicle_id: str, user: str):
        async with server.db.session() as s:
            v = await store.vehicle_of(s, user, vehicle_id)
        if v is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no vehicle {vehicle_id}")
        return v

    # -- users --------------------------------------------------------------------------------

    @app.post("/auth/signup", status_code=201, response_model=UserOut, tags=["users"])
    async def signup(body: SignUp):
        """Create a user (email and a password of at least 10 characters)."""
        reason = check_password_strength(body.password)
        if reason:
            raise HTTPException(422, reason)
        async with server.db.session() as s:
            if await store.user_by_email(s, body.email) is not None:
                raise HTTPException(status.HTTP_409_CONFLICT, "a user with this email exists")
            user = await store.create_user(s, body.email, await asyncio.to_thread(hash_password, body.password))
            await s.commit()
        return UserOut(id=user.id, email=user.email)

    @app.post("/auth/token", response_model=TokenOut, tags=["users"])
    async def token(form: Annotated[OAuth2PasswordRequestForm, Depends()]):
        """OAuth2 password flow: ``username`` (the email) and ``password`` → a Bearer token."""
        async with server.db.session() as s:
            user = await store.user_by_email(s, form.username.strip().lower())
        # scrypt off the event loop, and for unknown emails too: the answer's timing does not
        # tell which emails have an account
        encoded = user.password_hash if user is not None else _DUMMY_HASH
        if not await asyncio.to_thread(verify_password, form.password, encoded) or user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong email or password",
                                headers={"WWW-Authenticate": "Bearer"})
        ttl = settings.access_token_ttl_s
        return TokenOut(access_token=issue_access_token(user.id, server.jwt_secret, ttl), expires_in=ttl)

    @app.post("/auth/api-keys", status_code=201, response_model=ApiKeyOut, tags=["users"])
    async def api_key(body: ApiKeyIn, user: User):
        """A long-lived key for scripts (send it as ``X-API-Key``); shown once."""
        key, hashed = new_api_key()
        async with server.db.session() as s:
            row = await store.add_api_key(s, user, hashed, body.label)
            await s.commit()
        return ApiKeyOut(id=row.id, label=body.label, key=key)

    @app.get("/me", response_model=UserOut, tags=["users"])
    async def me(user: User):
        async with server.db.session() as s:
            row = await store.user_by_id(s, user)
        return UserOut(id=row.id, email=row.email)

    # -- linking an OEM account ----------------------------------------------------------------

    def link_of(oem: str) -> OemLink:
        link = server.links.get(oem)
        if link is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                f"no OEM {oem!r} configured; available: {', '.join(sorted(server.links)) or 'none'}")
        return link

    @app.get("/oem/{oem}/connect", tags=["oem accounts"])
    async def connect(oem: str, user: User, redirect: bool = Query(True, description="false: answer the URL as JSON")):
        """Start linking: redirect to the OEM's consent page (with a one-time ``state``, and
        PKCE where the OEM supports it)."""
        link = link_of(oem)
        state = new_state()
        url, verifier = link.authorize_url(state)
        async with server.db.session() as s:
            await store.save_oauth_state(s, state, user, oem, verifier)
            await s.commit()
        if redirect:
            return RedirectResponse(url, status_code=307)
        return {"authorize_url": url, "state": state}

    @app.get("/oem/{oem}/callback", tags=["oem accounts"])
    async def callback(oem: str, code: str | None = None, state: str | None = None, error: str | None = None):
        """Where the OEM sends the driver back: exchanges the code, stores the tokens
        encrypted, discovers the account's cars and registers them."""
        link = link_of(oem)
        if error:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"the OEM refused the link: {error}")
        if not code or not state:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the callback needs code and state")
        async with server.db.session() as s:
            saved = await store.use_oauth_state(s, state)
            await s.commit()
        if saved is None or saved.oem != oem:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "unknown or already used state: start again at /connect")
        try:
            tok = await link.exchange(code, saved.code_verifier)
        except Exception as exc:  # noqa: BLE001 - the OEM's answer, typed by the link
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"the code exchange failed: {exc}") from None
        async with server.db.session() as s:
            try:
                account = await store.upsert_oem_account(s, saved.user_id, oem, f"{saved.user_id}:{oem}",
                                                         server.cipher.encrypt(tok))
            except store.Conflict as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
            await s.commit()
        server.tokens.load(account.id, tok)
        try:
            found = await link.head.discover(account.id)
        except OEMError as exc:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"the OEM did not list the account's cars: {exc}") from None
        out = []
        async with server.db.session() as s:
            try:
                for d in found:
                    v = await store.add_vehicle(s, saved.user_id, account.id, oem, d.vehicle_id, battery_kwh=60.0,
                                                max_kw=7.4, model=d.model or oem)
                    out.append(v)
            except store.Conflict as exc:
                await s.rollback()
                raise HTTPException(status.HTTP_409_CONFLICT, f"{exc}: a car of this account is linked to "
                                                              "another user") from None
            await s.commit()
        for v in out:
            await server.publish("vehicle.registered", await server.vehicle_event(v))
        return {"account": account.id, "oem": oem, "vehicles": [vehicle_json(v) for v in out]}

    @app.delete("/oem/{oem}/accounts/{account_id}", status_code=204, tags=["oem accounts"])
    async def unlink(oem: str, account_id: str, user: User):
        """Unlink: the tokens are deleted and the account's cars are no longer controlled."""
        async with server.db.session() as s:
            account = await store.oem_account_of(s, user, account_id)
            if account is None or account.oem != oem:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {oem} account {account_id}")
            vehicles = [v for v in await store.vehicles_of(s, user) if v.account_id == account.id]
            await store.unlink_oem_account(s, user, account.id)
            await s.commit()
        server.tokens.delete(account_id)
        for v in vehicles:
            await server.publish("vehicle.unregistered", {"vehicle": v.id, "oem": v.oem, "oem_vehicle_id": v.oem_vehicle_id})
        return JSONResponse(status_code=204, content=None)

    # -- vehicles -----------------------------------------------------------------------------

    @app.get("/vehicles", tags=["vehicles"])
    async def vehicles(user: User):
        async with server.db.session() as s:
            return [vehicle_json(v) for v in await store.vehicles_of(s, user)]

    @app.get("/vehicles/{vehicle_id}", tags=["vehicles"])
    async def vehicle(vehicle_id: str, user: User):
        return vehicle_json(await owned_vehicle(vehicle_id, user))

    @app.patch("/vehicles/{vehicle_id}", tags=["vehicles"])
    async def patch_vehicle(vehicle_id: str, body: VehiclePatch, user: User):
        """The battery size and the charger's power (what the OEM does not report)."""
        await owned_vehicle(vehicle_id, user)
        async with server.db.session() as s:
            v = await store.vehicle_of(s, user, vehicle_id)
            for name, value in body.model_dump(exclude_none=True).items():
                setattr(v, name, value)
            await s.commit()
            await s.refresh(v)
        await server.publish("vehicle.unregistered", {"vehicle": v.id, "oem": v.oem, "oem_vehicle_id": v.oem_vehicle_id})
        await server.publish("vehicle.registered", await server.vehicle_event(v))  # with its new curve
        return vehicle_json(v)

    @app.get("/vehicles/{vehicle_id}/preferences", tags=["vehicles"])
    async def get_preferences(vehicle_id: str, user: User):
        await owned_vehicle(vehicle_id, user)
        async with server.db.session() as s:
            prefs = await store.preferences_of(s, user, vehicle_id)
        return preferences_in(prefs)

    @app.put("/vehicles/{vehicle_id}/preferences", tags=["vehicles"])
    async def put_preferences(vehicle_id: str, body: PreferencesIn, user: User):
        """Ready-by and target per weekday, minimum SoC, carbon weight."""
        v = await owned_vehicle(vehicle_id, user)
        async with server.db.session() as s:
            await store.set_preferences(s, user, vehicle_id, schedule=schedule_of(body), min_soc=body.min_soc,
                                        carbon_weight_gbp_per_kg=body.carbon_weight_gbp_per_kg)
            await s.commit()
            prefs = await store.preferences_of(s, user, vehicle_id)
        await server.publish("preferences.changed", {
            "vehicle": v.id, "oem": v.oem, "oem_vehicle_id": v.oem_vehicle_id,
            "preferences": controller_preferences(prefs, server.clock.now())})
        return body

    @app.post("/vehicles/{vehicle_id}/overrides", status_code=201, tags=["vehicles"])
    async def override(vehicle_id: str, body: OverrideIn, user: User):
        """A one-off for the next session: ready by a given time, or charge now."""
        v = await owned_vehicle(vehicle_id, user)
        now = server.clock.now()
        if body.kind == "ready_by" and body.ready_by_at <= now:
            raise HTTPException(422,
                                f"ready_by_at {body.ready_by_at.isoformat()} is in the past (now {now.isoformat()})")
        async with server.db.session() as s:
            prefs = await store.preferences_of(s, user, vehicle_id)
            p = controller_preferences(prefs, now)
            if body.target_soc is not None and body.target_soc < p["min_soc"]:
                raise HTTPException(422,
                                    f"target_soc {body.target_soc:g} is below the minimum SoC {p['min_soc']:g}")
            row = await store.add_override(s, user, vehicle_id, body.kind, ready_by_at=body.ready_by_at,
                                           target_soc=body.target_soc)
            await s.commit()
        await server.publish("preferences.changed", {
            "vehicle": v.id, "oem": v.oem, "oem_vehicle_id": v.oem_vehicle_id,
            "preferences": controller_preferences(prefs, now, body)})
        return {"id": row.id, **body.model_dump(mode="json")}

    @app.get("/vehicles/{vehicle_id}/status", tags=["vehicles"])
    async def vehicle_status(vehicle_id: str, user: User):
        """SoC and its age, plugged in, charging, the next charge start, the SoC expected at
        ready-by, the last command and whether the car obeyed, escalations."""
        v = await owned_vehicle(vehicle_id, user)
        known = server.control.status(v.oem, v.oem_vehicle_id) if server.control else None
        return {"vehicle": v.id, "oem": v.oem, "controlled": known is not None, **(known or {})}

    @app.get("/vehicles/{vehicle_id}/plan", tags=["vehicles"])
    async def vehicle_plan(vehicle_id: str, user: User):
        """The car's plan: kW per slot from now to ready-by ([] when there is none)."""
        v = await owned_vehicle(vehicle_id, user)
        return {"vehicle": v.id, "slots": (server.control.plan(v.oem, v.oem_vehicle_id) or []) if server.control else []}

    # -- notifications ------------------------------------------------------------------------

    @app.get("/notifications", tags=["notifications"])
    async def notifications(user: User, limit: int = Query(50, ge=1, le=500)):
        async with server.db.session() as s:
            rows = await store.notifications_of(s, user, limit)
        return [{"id": n.id, "vehicle": n.vehicle_id, "kind": n.kind, "created_at": n.created_at.isoformat(),
                 **n.body} for n in rows]

    @app.get("/notifications/stream", tags=["notifications"])
    async def stream(user: User, request: Request):
        """Server-Sent Events: each new notification as ``event: <kind>`` with a JSON ``data``."""
        queue: asyncio.Queue = asyncio.Queue()
        server.streams.setdefault(user, set()).add(queue)

        async def events():
            try:
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        item = await asyncio.wait_for(queue.get(), 15.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"id: {item['id']}\nevent: {item['kind']}\ndata: {json.dumps(item)}\n\n"
            finally:
                server.streams.get(user, set()).discard(queue)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/webhook-endpoints", status_code=201, tags=["notifications"])
    async def add_endpoint(body: WebhookEndpointIn, user: User):
        """Notifications are also POSTed to ``url``, signed: header ``Chargetwin-Signature: t=<unix
        time>,v1=<hex HMAC-SHA256 of "<t>." + body, keyed by the secret answered here>``."""
        secret = new_state()
        async with server.db.session() as s:
            row = await store.add_webhook_endpoint(s, user, body.url, secret)
            await s.commit()
        return {"id": row.id, "url": body.url, "secret": secret}

    # -- OEM webhooks -------------------------------------------------------------------------

    @app.post("/webhooks/{oem}", tags=["oem webhooks"])
    async def oem_webhook(oem: str, request: Request):
        """An OEM's webhook delivery: verified, de-duplicated, its readings handed on."""
        link = link_of(oem)
        body = await request.body()
        answer = link.answer_verify(body)
        if answer is not None:
            return answer
        try:
            return await server.receive_webhook(oem, dict(request.headers), body)
        except WebhookRejected as exc:
            log.warning("%s webhook rejected: %s", oem, exc)
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"webhook rejected: {exc}") from None

    @app.get("/health", tags=["operations"])
    async def health():
        return {"status": "ok", "demo": settings.demo,
                "vehicles_controlled": 0 if server.control is None else len(server.control.controller.tracks)}

    return app


def vehicle_json(v) -> dict[str, Any]:
    return {"id": v.id, "oem": v.oem, "oem_vehicle_id": v.oem_vehicle_id, "account": v.account_id,
            "model": v.model, "battery_kwh": v.battery_kwh, "max_kw": v.max_kw, "active": v.active,
            "registered_at": v.registered_at.isoformat()}

