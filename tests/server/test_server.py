"""The live server's API: users and owner scoping, linking OEM accounts through their OAuth flows
(against the demo's emulators), preferences reaching the hosted controller, the plug-in
notification on the event stream, OEM webhooks verified and de-duplicated, outbound webhooks
signed, retried and dead-lettered, and bad input answered with a clear 4xx that changes nothing.
Every test runs the whole app (lifespan, SQLite file, in-process bus, the demo's emulators)."""

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from adapters.smartcar.emulator import webhook_delivery
from adapters.smartcar.head import MANAGEMENT_TOKEN
from server import db as store
from server.app import create_app
from server.demo import DEMO_EMAIL, DEMO_PASSWORD
from server.security import verify_body
from server.settings import Settings, SettingsError
from twin.emulate import EmulatorThread
from twin.oem import VehicleReading


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["sqlite+memory", "postgresql+nats"])
def backend(request, tmp_path):
    """The embedded defaults, and PostgreSQL + NATS JetStream (a fresh database and stream per
    test). With ``CI`` set the latter must run; elsewhere it is skipped when either service is
    not reachable on 127.0.0.1."""
    if request.param == "sqlite+memory":
        yield {"database_url": f"sqlite+aiosqlite:///{tmp_path}/server.db"}
        return
    from test_bus import NATS_URL, _nats_problem
    from test_db import PG_HOST, PG_PORT, _pg_create, _pg_drop

    problem = _nats_problem()
    try:
        name, user = _pg_create()
        url = f"postgresql+asyncpg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    except Exception as exc:  # noqa: BLE001 - any failure: not reachable
        problem = problem or f"PostgreSQL: {exc}"
        url = name = None
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so PostgreSQL and NATS are required: {problem}")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 and NATS with JetStream on 127.0.0.1:4222 are needed; "
                    "start them or set CI=1 to require them")
    tag = uuid.uuid4().hex[:10]
    try:
        yield {"database_url": url, "bus_url": NATS_URL, "bus_stream": f"SRV_{tag}", "bus_prefix": f"srv{tag}"}
    finally:
        _pg_drop(name)
        asyncio.run(_drop_stream(NATS_URL, f"SRV_{tag}"))


async def _drop_stream(url, stream):
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:  # noqa: BLE001 - already gone
        pass
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def serving(tmp_path, speed=600.0, backend=None, **settings):
    where = backend or {"database_url": f"sqlite+aiosqlite:///{tmp_path}/server.db"}
    app = create_app(Settings(demo=True, demo_speed=speed, **where, **settings))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:8000") as c:
            yield app, c


async def settle(server):
    """Until the bus has handed every event on and the controller's loop has taken them."""
    await server.bus.idle()
    await asyncio.sleep(0.1)


async def sign_in(c, email=DEMO_EMAIL, password=DEMO_PASSWORD):
    r = await c.post("/auth/token", data={"username": email, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def new_user(c, email):
    assert (await c.post("/auth/signup", json={"email": email, "password": "a long password"})).status_code == 201
    return await sign_in(c, email, "a long password")


def test_users_sign_in_and_never_see_each_others_vehicles(tmp_path, backend):
    async def scenario():
        async with serving(tmp_path, backend=backend) as (app, c):
            demo = await sign_in(c)
            cars = (await c.get("/vehicles", headers=demo)).json()
            assert sorted(v["oem"] for v in cars) == ["smartcar", "smartcar", "tesla", "tesla"]
            bob = await new_user(c, "Bob@Example.org")
            assert (await c.get("/me", headers=bob)).json()["email"] == "bob@example.org"
            assert (await c.get("/vehicles", headers=bob)).json() == []
            theirs = cars[0]["id"]
            for method, path, body in [("GET", f"/vehicles/{theirs}", None), ("GET", f"/vehicles/{theirs}/status", None),
                                       ("GET", f"/vehicles/{theirs}/plan", None),
                                       ("GET", f"/vehicles/{theirs}/preferences", None),
                                       ("PUT", f"/vehicles/{theirs}/preferences", {"min_soc": 0.3}),
                                       ("PATCH", f"/vehicles/{theirs}", {"battery_kwh": 80}),
                                       ("POST", f"/vehicles/{theirs}/overrides", {"kind": "charge_now"})]:
                r = await c.request(method, path, headers=bob, json=body)
                assert r.status_code == 404, (method, path, r.text)  # not 403: the id is not theirs to know
            assert (await c.get(f"/vehicles/{theirs}/preferences", headers=demo)).json()["min_soc"] == 0.0
            # sign-in and keys
            assert (await c.post("/auth/signup", json={"email": "bob@example.org", "password": "x" * 12})).status_code == 409
            assert (await c.post("/auth/signup", json={"email": "eve@example.org", "password": "short"})).status_code == 422
            assert (await c.post("/auth/signup", json={"email": "not-an-email", "password": "x" * 12})).status_code == 422
            wrong = await c.post("/auth/token", data={"username": DEMO_EMAIL, "password": "wrong password"})
            assert wrong.status_code == 401
            assert (await c.get("/vehicles")).status_code == 401
            forged = await c.get("/vehicles", headers={"Authorization": "Bearer abc.def.ghi"})
            assert forged.status_code == 401 and "abc.def.ghi" not in forged.text
            key = (await c.post("/auth/api-keys", headers=bob, json={"label": "script"})).json()["key"]
            assert key.startswith("ctk_")
            assert (await c.get("/me", headers={"X-API-Key": key})).json()["email"] == "bob@example.org"
            assert (await c.get("/me", headers={"X-API-Key": "ctk_nope"})).status_code == 401

    run(scenario())


def test_linking_goes_through_the_oems_consent_pages_and_a_state_works_once(tmp_path):
    async def scenario():
        async with serving(tmp_path) as (app, c):
            demo = await sign_in(c)
            before = {v["oem_vehicle_id"]: v["id"] for v in (await c.get("/vehicles", headers=demo)).json()}
            for oem in ("smartcar", "tesla"):
                start = (await c.get(f"/oem/{oem}/connect", params={"redirect": "false"}, headers=demo)).json()
                url = urlsplit(start["authorize_url"])
                assert url.path.startswith(f"/demo/{oem}/") and f"state={start['state']}" in url.query
                if oem == "tesla":
                    assert "code_challenge=" in url.query and "code_challenge_method=S256" in url.query
                consent = await c.get(f"{url.path}?{url.query}")  # the driver approves at the OEM
                assert consent.status_code == 302
                back = urlsplit(consent.headers["location"])
                assert back.path == f"/oem/{oem}/callback"
                linked = await c.get(f"{back.path}?{back.query}")
                assert linked.status_code == 200, linked.text
                got = {v["oem_vehicle_id"]: v["id"] for v in linked.json()["vehicles"]}
                assert got and all(before[k] == v for k, v in got.items())  # the same cars, not new ones
                replay = await c.get(f"{back.path}?{back.query}")
                assert replay.status_code == 400 and "already used state" in replay.json()["detail"]
            # another user linking the same OEM account: its cars belong to the demo user
            bob = await new_user(c, "bob@example.org")
            start = (await c.get("/oem/smartcar/connect", params={"redirect": "false"}, headers=bob)).json()
            url = urlsplit(start["authorize_url"])
            back = urlsplit((await c.get(f"{url.path}?{url.query}")).headers["location"])
            assert (await c.get(f"{back.path}?{back.query}")).status_code == 409
            assert (await c.get("/vehicles", headers=bob)).json() == []
            assert (await c.get("/oem/rivian/connect", headers=demo)).status_code == 404
            assert (await c.get("/oem/smartcar/callback", params={"code": "x", "state": "forged"})).status_code == 400

    run(scenario())


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(tmp_path):
    async def scenario():
        async with serving(tmp_path) as (app, c):
            demo = await sign_in(c)
            car = (await c.get("/vehicles", headers=demo)).json()[0]["id"]
            prefs = f"/vehicles/{car}/preferences"
            before = (await c.get(prefs, headers=demo)).json()
            cases = [
                ({"min_soc": 0.9, "default": {"ready_by": "07:00", "target_soc": 0.8}}, "below min_soc"),
                ({"default": {"ready_by": "25:00", "target_soc": 0.8}}, "ready_by"),
                ({"default": {"ready_by": "07:00", "target_soc": 80}}, "target_soc"),
                ({"days": {"funday": {"ready_by": "07:00", "target_soc": 0.8}}}, "funday"),
                ({"min_soc": "lots"}, "min_soc"),
                ({"colour": "red"}, "colour"),
            ]
            for body, mention in cases:
                r = await c.put(prefs, headers=demo, json=body)
                assert r.status_code == 422 and mention in r.text, (body, r.text)
            broken = await c.put(prefs, headers={**demo, "Content-Type": "application/json"}, content=b'{"min_soc": ')
            assert broken.status_code == 422
            past = await c.post(f"/vehicles/{car}/overrides", headers=demo,
                                json={"kind": "ready_by", "ready_by_at": "2020-01-01T06:00:00Z"})
            assert past.status_code == 422 and "in the past" in past.json()["detail"]
            naive = await c.post(f"/vehicles/{car}/overrides", headers=demo,
                                 json={"kind": "ready_by", "ready_by_at": "2099-01-01T06:00:00"})
            assert naive.status_code == 422 and "timezone" in naive.text
            assert (await c.patch(f"/vehicles/{car}", headers=demo, json={"battery_kwh": 7000})).status_code == 422
            assert (await c.get(prefs, headers=demo)).json() == before
            async with app.state.server.db.session() as s:
                assert await store.pending_overrides(s, car) == []

    run(scenario())


def test_preferences_and_overrides_reach_the_hosted_controller(tmp_path, backend):
    async def scenario():
        async with serving(tmp_path, backend=backend) as (app, c):
            server = app.state.server
            demo = await sign_in(c)
            car = next(v for v in (await c.get("/vehicles", headers=demo)).json() if v["oem"] == "tesla")
            week = {d: {"ready_by": "06:30", "target_soc": 0.9} for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
            r = await c.put(f"/vehicles/{car['id']}/preferences", headers=demo,
                            json={"days": week, "min_soc": 0.3, "carbon_weight_gbp_per_kg": 0.1})
            assert r.status_code == 200
            await settle(server)
            track = server.control.controller.tracks[f"tesla:{car['oem_vehicle_id']}"]
            assert (track.preferences.target_soc, track.preferences.min_soc) == (0.9, 0.3)
            assert track.preferences.ready_by.isoformat() == "06:30:00"
            when = (server.clock.now().replace(microsecond=0) + __import__("datetime").timedelta(hours=10)).isoformat()
            r = await c.post(f"/vehicles/{car['id']}/overrides", headers=demo,
                             json={"kind": "ready_by", "ready_by_at": when, "target_soc": 0.95})
            assert r.status_code == 201
            await settle(server)
            assert track.preferences.ready_by_at.isoformat() == when and track.preferences.target_soc == 0.95
            status = (await c.get(f"/vehicles/{car['id']}/status", headers=demo)).json()
            assert status["controlled"] and status["target_soc"] == 0.95
            assert set(status) >= {"soc", "soc_age_s", "plugged_in", "charging", "next_charge_start",
                                   "expected_soc_at_ready_by", "last_command", "escalated"}

    run(scenario())


def test_a_plug_in_is_announced_with_its_planned_start_on_the_event_stream(tmp_path):
    app = create_app(Settings(demo=True, database_url=f"sqlite+aiosqlite:///{tmp_path}/server.db", demo_speed=60))
    with EmulatorThread(app) as served:  # uvicorn on 127.0.0.1: a real streaming response
        with httpx.Client(base_url=served.base_url, timeout=30) as c:
            token = c.post("/auth/token", data={"username": DEMO_EMAIL, "password": DEMO_PASSWORD}).json()
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            got = []
            deadline = time.monotonic() + 25
            with c.stream("GET", "/notifications/stream", headers=headers) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                event = {}
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        event["kind"] = line[7:]
                    elif line.startswith("data: "):
                        event["data"] = json.loads(line[6:])
                    elif not line and event:
                        got.append(event)
                        event = {}
                        if any(e["kind"] == "plan" for e in got) or time.monotonic() > deadline:
                            break
            plan = next(e["data"] for e in got if e["kind"] == "plan")
            assert plan["charge_start_at"] and plan["ready_by"] and 0 < plan["expected_soc"] <= 1
            stored = c.get("/notifications", headers=headers).json()
            assert any(n["id"] == plan["id"] for n in stored)


def test_oem_webhooks_are_verified_and_deduplicated(tmp_path, backend, caplog):
    async def scenario():
        async with serving(tmp_path, speed=1.0, backend=backend) as (app, c):
            server = app.state.server
            await asyncio.sleep(0.5)  # the controller's first reads are in
            reading = VehicleReading("sc-demo-1", server.clock.now(), 0.42, True, False)
            headers, body = webhook_delivery(reading, MANAGEMENT_TOKEN, event_id="evt-test-1", user_id="u",
                                             delivered_ms=int(time.time() * 1000))
            ok = await c.post("/webhooks/smartcar", headers=headers, content=body)
            assert ok.json() == {"accepted": 1, "duplicate": False}
            again = await c.post("/webhooks/smartcar", headers=headers, content=body)
            assert again.json() == {"accepted": 0, "duplicate": True}
            await settle(server)
            assert server.control.controller.tracks["smartcar:sc-demo-1"].soc == 0.42
            bad = await c.post("/webhooks/smartcar", headers={**headers, "SC-Signature": "0" * 64}, content=body)
            assert bad.status_code == 400 and "does not match" in bad.json()["detail"]
            assert (await c.post("/webhooks/tesla", headers=headers, content=body)).status_code == 400
            assert any("webhook rejected" in r.getMessage() for r in caplog.records)

    run(scenario())


class _Receiver(BaseHTTPRequestHandler):
    """Answers 500 to the first ``fail`` posts, then 204; records every post."""

    def do_POST(self):  # noqa: N802 - the stdlib's name
        length = int(self.headers["Content-Length"])
        self.server.posts.append((dict(self.headers), self.rfile.read(length)))
        code = 500 if len(self.server.posts) <= self.server.fail else 204
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notifications_are_posted_signed_retried_and_dead_lettered(tmp_path):
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    receiver.posts, receiver.fail = [], 2
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    async def scenario():
        async with serving(tmp_path, speed=1.0, webhook_max_attempts=3) as (app, c):  # no demo plug-in yet
            server = app.state.server
            demo = await sign_in(c)
            secret = (await c.post("/webhook-endpoints", headers=demo, json={"url": url})).json()["secret"]
            dead = (await c.post("/webhook-endpoints", headers=demo, json={"url": "http://127.0.0.1:1/x"})).json()
            assert (await c.post("/webhook-endpoints", headers=demo, json={"url": "ftp://x"})).status_code == 422
            await server.bus.publish("notification.created", {
                "vehicle_id": "sc-demo-1", "oem": "smartcar", "notice": "plan", "charge_start_at": None,
                "expected_soc": 0.8, "ready_by": None, "message": "test"})
            await server.bus.idle()
            for _ in range(100):
                await asyncio.sleep(0.1)
                async with server.db.session() as s:
                    rows = (await s.execute(store.select(store.WebhookDelivery))).scalars().all()
                if len(rows) == 2 and all(r.delivered_at or r.dead_at for r in rows):
                    break
            by_endpoint = {r.endpoint_id: r for r in rows}
            live = next(r for r in rows if r.endpoint_id != dead["id"])
            assert live.attempts == 3 and live.delivered_at is not None and live.dead_at is None
            gone = by_endpoint[dead["id"]]
            assert gone.attempts == 3 and gone.dead_at is not None and gone.delivered_at is None
        return secret

    secret = run(scenario())
    receiver.shutdown()
    assert len(receiver.posts) == 3
    headers, body = receiver.posts[-1]
    assert verify_body(secret, body, headers["Chargetwin-Signature"], int(time.time()))
    assert json.loads(body)["kind"] == "plan" and json.loads(body)["message"] == "test"


def test_the_server_refuses_to_start_without_keys_outside_the_demo(tmp_path):
    with pytest.raises(SettingsError, match="CHARGETWIN_TOKEN_KEY.*CHARGETWIN_JWT_SECRET"):
        create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"))


def test_events_the_outbox_held_at_a_crash_are_published_at_the_next_start(tmp_path):
    async def scenario():
        async with serving(tmp_path, speed=1.0) as (app, c):  # first start: the demo user and cars
            demo = await sign_in(c)
            car = (await c.get("/vehicles", headers=demo)).json()[0]
        db = store.Database(f"sqlite+aiosqlite:///{tmp_path}/server.db")
        async with db.session() as s:  # what a crash between storing and publishing leaves behind
            await store.outbox_put(s, "notification.created", {
                "vehicle_id": car["oem_vehicle_id"], "oem": car["oem"], "notice": "plan", "message": "held over"})
            await s.commit()
        await db.close()
        async with serving(tmp_path, speed=1.0) as (app, c):
            await settle(app.state.server)
            notes = (await c.get("/notifications", headers=await sign_in(c))).json()
            assert [n["message"] for n in notes if n.get("message") == "held over"] == ["held over"]
            async with app.state.server.db.session() as s:
                assert await store.outbox_pending(s) == []

    run(scenario())
