"""server.db: migrations and the data-access layer, on SQLite and on PostgreSQL.

PostgreSQL: with ``CI`` set the PostgreSQL cases must run (an unreachable server fails them);
without it they are skipped when nothing answers on 127.0.0.1:5432. Every PostgreSQL case gets
its own throw-away database, dropped afterwards, so runs never see each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, text

from server import db as dbm
from server.db import Database

PG_HOST, PG_PORT, PG_ADMIN_DB = "127.0.0.1", 5432, "test"
PG_USERS = ("postgres", "root")
SKIP_MSG = "PostgreSQL not reachable on 127.0.0.1:5432; start it or set CI=1 to require it"

TABLES = {
    "users", "api_keys", "oauth_states", "oem_accounts", "vehicles", "preferences", "overrides",
    "commands", "notifications", "webhook_endpoints", "webhook_deliveries", "outbox", "snapshots",
    "seen_webhooks",
}


async def _pg_admin() -> tuple[object, str]:
    """An asyncpg connection to the admin database and the user it logged in as."""
    import asyncpg

    last: Exception | None = None
    for user in PG_USERS:
        try:
            conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user,
                                         database=PG_ADMIN_DB, timeout=3)
            return conn, user
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            last = exc
    raise ConnectionError(f"{SKIP_MSG} ({last!r})")


def _pg_create() -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        conn, user = await _pg_admin()
        name = f"chargetwin_test_{uuid.uuid4().hex[:12]}"
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name, user

    return asyncio.run(go())


def _pg_drop(name: str) -> None:
    async def go() -> None:
        conn, _ = await _pg_admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'chargetwin.db'}"
        return
    try:
        name, user = _pg_create()
    except ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so PostgreSQL is required: {exc}")
        pytest.skip(SKIP_MSG)
    try:
        yield f"postgresql+asyncpg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _pg_drop(name)


def run(url: str, body: Callable[[Database], Awaitable[None]], *, migrate: bool = True) -> None:
    """Open a Database on ``url`` (migrated unless told not to), run ``body``, close it."""

    async def go() -> None:
        db = Database(url)
        try:
            if migrate:
                await db.migrate()
            await body(db)
        finally:
            await db.close()

    asyncio.run(go())


async def _user_with_car(s, email: str = "a@example.com", ref: str = "acct-a", vin: str = "VIN-A"):
    user = await dbm.create_user(s, email, "hash")
    acct = await dbm.upsert_oem_account(s, user.id, "tesla", ref, "ciphertext")
    car = await dbm.add_vehicle(s, user.id, acct.id, "tesla", vin, battery_kwh=75.0, max_kw=11.0,
                                model="Model 3")
    return user, acct, car


def _aware_utc(value: datetime) -> None:
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


# -- migrations -----------------------------------------------------------------------------------


def test_migrate_creates_every_table_and_is_idempotent(url: str) -> None:
    async def body(db: Database) -> None:
        async def state() -> tuple[set[str], list[str]]:
            async with db.engine.connect() as conn:
                tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
                heads = list((await conn.execute(text("SELECT version_num FROM alembic_version")))
                             .scalars())
            return tables, heads

        await db.migrate()
        first = await state()
        assert first[0] == TABLES | {"alembic_version"}
        assert first[1] == ["0001"]
        await db.migrate()  # second run: nothing to do
        assert await state() == first

        # the migration and the models describe the same schema
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), dbm.Base.metadata))
        assert diff == []

    run(url, body, migrate=False)


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path) -> None:
    async def body(db: Database) -> None:
        async with db.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == \
                dbm.SQLITE_BUSY_TIMEOUT_MS

    run(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", body)


# -- users, keys, OAuth ---------------------------------------------------------------------------


def test_email_is_lower_cased_and_unique(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            user = await dbm.create_user(s, "  Alice@Example.COM ", "h1")
            assert user.email == "alice@example.com"
            with pytest.raises(dbm.Conflict):
                await dbm.create_user(s, "alice@example.com", "h2")
            with pytest.raises(dbm.Conflict):
                await dbm.create_user(s, "ALICE@example.com", "h3")
            # the savepoint kept the transaction usable
            await dbm.create_user(s, "bob@example.com", "h4")
        async with db.session() as s:
            found = await dbm.user_by_email(s, "ALICE@EXAMPLE.com")
            assert found is not None and found.id == user.id and found.password_hash == "h1"
            assert await dbm.user_by_email(s, "nobody@example.com") is None

    run(url, body)


def test_api_keys_resolve_until_revoked(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            user = await dbm.create_user(s, "k@example.com", "h")
            other = await dbm.create_user(s, "o@example.com", "h")
            key = await dbm.add_api_key(s, user.id, "sha256:abc", "laptop")
        async with db.transaction() as s:
            assert (await dbm.user_for_api_key_hash(s, "sha256:abc")).id == user.id
            assert await dbm.user_for_api_key_hash(s, "sha256:nope") is None
            assert not await dbm.revoke_api_key(s, other.id, key.id)  # not theirs
            assert await dbm.revoke_api_key(s, user.id, key.id)
        async with db.session() as s:
            assert await dbm.user_for_api_key_hash(s, "sha256:abc") is None

    run(url, body)


def test_oauth_state_is_single_use(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            user = await dbm.create_user(s, "o@example.com", "h")
            await dbm.save_oauth_state(s, "st-1", user.id, "tesla", code_verifier="cv",
                                       redirect_to="/cars")
            await dbm.save_oauth_state(s, "st-old", user.id, "tesla")
        async with db.transaction() as s:
            row = await dbm.use_oauth_state(s, "st-1")
            assert row is not None
            assert (row.user_id, row.oem, row.code_verifier, row.redirect_to) == \
                (user.id, "tesla", "cv", "/cars")
            _aware_utc(row.used_at)
        async with db.transaction() as s:
            assert await dbm.use_oauth_state(s, "st-1") is None  # replay
            assert await dbm.use_oauth_state(s, "never-issued") is None
            assert await dbm.use_oauth_state(s, "st-old", max_age=timedelta(0)) is None  # stale

    run(url, body)


def test_oauth_state_race_has_one_winner(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            user = await dbm.create_user(s, "r@example.com", "h")
            await dbm.save_oauth_state(s, "st-race", user.id, "smartcar")

        async def attempt() -> bool:
            async with db.transaction() as s:
                got = await dbm.use_oauth_state(s, "st-race")
                await asyncio.sleep(0.05)  # hold the transaction open while the other tries
                return got is not None

        assert sorted(await asyncio.gather(attempt(), attempt())) == [False, True]

    run(url, body)


# -- vehicles are owner-scoped --------------------------------------------------------------------


def test_a_user_cannot_reach_another_users_vehicle(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            alice, _, car = await _user_with_car(s)
            bob, bob_acct, _ = await _user_with_car(s, "b@example.com", "acct-b", "VIN-B")
        async with db.transaction() as s:
            assert (await dbm.vehicle_of(s, alice.id, car.id)).oem_vehicle_id == "VIN-A"
            assert await dbm.vehicle_of(s, bob.id, car.id) is None
            assert await dbm.vehicle_of(s, alice.id, "no-such-car") is None
            assert [v.id for v in await dbm.vehicles_of(s, alice.id)] == [car.id]
            assert await dbm.set_preferences(s, bob.id, car.id, schedule={}, min_soc=0.2,
                                             carbon_weight_gbp_per_kg=0.1) is None
            assert await dbm.add_override(s, bob.id, car.id, "charge_now") is None
            assert await dbm.preferences_of(s, bob.id, car.id) is None
            # the same car cannot be registered to Bob while Alice has it
            with pytest.raises(dbm.Conflict):
                await dbm.add_vehicle(s, bob.id, bob_acct.id, "tesla", "VIN-A",
                                      battery_kwh=75.0, max_kw=11.0)
            # nor can Alice's OEM account be linked to Bob
            with pytest.raises(dbm.Conflict):
                await dbm.upsert_oem_account(s, bob.id, "tesla", "acct-a", "x")

        async with db.transaction() as s:
            prefs = await dbm.set_preferences(
                s, alice.id, car.id, schedule={0: {"ready_by": "07:30", "target_soc": 0.8}},
                min_soc=0.2, carbon_weight_gbp_per_kg=0.05)
            assert prefs is not None
            ov = await dbm.add_override(s, alice.id, car.id, "ready_by",
                                        ready_by_at=datetime(2030, 1, 1, 6, tzinfo=UTC),
                                        target_soc=0.9)
            assert ov is not None
        async with db.transaction() as s:
            prefs = await dbm.preferences_of(s, alice.id, car.id)
            assert prefs.schedule == {"0": {"ready_by": "07:30", "target_soc": 0.8}}
            pending = await dbm.pending_overrides(s, car.id)
            assert [o.id for o in pending] == [ov.id]
            _aware_utc(pending[0].ready_by_at)
            assert await dbm.consume_override(s, ov.id)
            assert not await dbm.consume_override(s, ov.id)
            assert await dbm.pending_overrides(s, car.id) == []

    run(url, body)


# -- commands, outbox, snapshots, inbound de-duplication ------------------------------------------


def test_command_record_and_finish(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            _, _, car = await _user_with_car(s)
            cmd = await dbm.record_command(s, "act-1", car.id, "start_charge", {"amps": 16})
            assert cmd.outcome is None and cmd.finished_at is None
            again = await dbm.record_command(s, "act-1", car.id, "start_charge", {"amps": 99})
            assert again.detail == {"amps": 16}  # a retry keeps the first record
        async with db.transaction() as s:
            done = await dbm.finish_command(s, "act-1", "RateLimited", error="429 from OEM")
            assert done is not None
            assert await dbm.finish_command(s, "no-such-action", "ok") is None
            assert await dbm.set_command_verified(s, "act-1", "disobeyed")
        async with db.session() as s:
            got = await s.get(dbm.Command, "act-1")
            assert (got.kind, got.detail, got.outcome, got.error, got.verified) == \
                ("start_charge", {"amps": 16}, "RateLimited", "429 from OEM", "disobeyed")
            _aware_utc(got.sent_at)
            _aware_utc(got.finished_at)
            assert got.finished_at >= got.sent_at

    run(url, body)


def test_outbox_keeps_order_and_marks_published(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            for i in range(5):
                await dbm.outbox_put(s, f"topic.{i % 2}", {"n": i})
        with pytest.raises(RuntimeError):  # a rolled-back transaction publishes nothing
            async with db.transaction() as s:
                await dbm.outbox_put(s, "topic.x", {"n": "lost"})
                raise RuntimeError("boom")
        async with db.transaction() as s:
            pending = await dbm.outbox_pending(s, limit=10)
            assert [m.payload["n"] for m in pending] == [0, 1, 2, 3, 4]
            assert [m.topic for m in pending] == ["topic.0", "topic.1"] * 2 + ["topic.0"]
            seqs = [m.seq for m in pending]
            assert seqs == sorted(seqs)
            assert [m.payload["n"] for m in await dbm.outbox_pending(s, limit=2)] == [0, 1]
            assert await dbm.outbox_mark_published(s, seqs[:3]) == 3
            assert await dbm.outbox_mark_published(s, seqs[:3]) == 0
            assert await dbm.outbox_mark_published(s, []) == 0
        async with db.transaction() as s:
            await dbm.outbox_put(s, "topic.0", {"n": 5})
        async with db.session() as s:
            rest = await dbm.outbox_pending(s)
            assert [m.payload["n"] for m in rest] == [3, 4, 5]
            published = await s.get(dbm.Outbox, seqs[0])
            _aware_utc(published.published_at)

    run(url, body)


def test_seen_webhook_deduplicates(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            assert await dbm.seen_webhook(s, "tesla", "d-1") is False
            assert await dbm.seen_webhook(s, "tesla", "d-1") is True
            assert await dbm.seen_webhook(s, "smartcar", "d-1") is False  # other OEM, other id
        async with db.transaction() as s:
            assert await dbm.seen_webhook(s, "tesla", "d-1") is True
            assert await dbm.seen_webhook(s, "tesla", "d-2") is False
            later = dbm.utcnow() + timedelta(seconds=1)
            assert await dbm.forget_seen_webhooks(s, later) == 3
            assert await dbm.seen_webhook(s, "tesla", "d-1") is False

    run(url, body)


def test_snapshot_round_trip(url: str) -> None:
    snap = {"version": 1, "cars": {"v1": {"soc": 0.4321, "plan": [1, 2.5, None]}}, "t": "x"}

    async def body(db: Database) -> None:
        async with db.transaction() as s:
            assert await dbm.load_snapshot(s, "controller") is None
            await dbm.save_snapshot(s, "controller", snap)
        async with db.transaction() as s:
            assert json.loads(await dbm.load_snapshot(s, "controller")) == snap
            await dbm.save_snapshot(s, "controller", '{"version": 2}')  # JSON text: verbatim
        async with db.session() as s:
            assert await dbm.load_snapshot(s, "controller") == '{"version": 2}'
            row = await s.get(dbm.Snapshot, "controller")
            _aware_utc(row.saved_at)

    run(url, body)


# -- time -----------------------------------------------------------------------------------------


def test_timestamps_come_back_aware_utc(url: str) -> None:
    plus_two = timezone(timedelta(hours=2))

    async def body(db: Database) -> None:
        async with db.transaction() as s:
            user, acct, car = await _user_with_car(s)
            ov = await dbm.add_override(s, user.id, car.id, "ready_by",
                                        ready_by_at=datetime(2030, 6, 1, 9, 15, 30, 123456,
                                                             tzinfo=plus_two))
            with pytest.raises(Exception, match="naive datetime"):
                async with s.begin_nested():
                    await dbm.add_override(s, user.id, car.id, "ready_by",
                                           ready_by_at=datetime(2030, 6, 1, 9))
        async with db.session() as s:
            u = await s.get(dbm.User, user.id)
            a = await s.get(dbm.OemAccount, acct.id)
            v = await s.get(dbm.Vehicle, car.id)
            o = await s.get(dbm.Override, ov.id)
            for value in (u.created_at, a.linked_at, v.registered_at, o.created_at, o.ready_by_at):
                _aware_utc(value)
            assert o.ready_by_at == datetime(2030, 6, 1, 7, 15, 30, 123456, tzinfo=UTC)
            assert abs(dbm.utcnow() - u.created_at) < timedelta(minutes=1)

    run(url, body)


# -- what the pipelines use -----------------------------------------------------------------------


def test_accounts_notifications_and_webhook_deliveries(url: str) -> None:
    async def body(db: Database) -> None:
        async with db.transaction() as s:
            user, acct, car = await _user_with_car(s)
            other, other_acct, _ = await _user_with_car(s, "b@example.com", "acct-b", "VIN-B")
            assert await dbm.set_account_tokens(s, acct.id, "new-cipher")
            assert await dbm.unlink_oem_account(s, other.id, other_acct.id)
            assert not await dbm.unlink_oem_account(s, user.id, other_acct.id)  # not theirs
            ep = await dbm.add_webhook_endpoint(s, user.id, "https://example.com/h", "sekrit")
            note = await dbm.add_notification(s, user.id, car.id, "plan", {"soc": 0.5})
        async with db.transaction() as s:
            assert [a.id for a in await dbm.linked_accounts(s)] == [acct.id]
            assert (await s.get(dbm.OemAccount, acct.id)).tokens_encrypted == "new-cipher"
            assert await dbm.vehicles_of(s, other.id) == []  # unlinking deactivated the car
            assert (await dbm.vehicle_by_oem_id(s, "tesla", "VIN-A")).id == car.id
            assert await dbm.vehicle_by_oem_id(s, "tesla", "VIN-B") is None
            assert [e.id for e in await dbm.webhook_endpoints_of(s, user.id)] == [ep.id]
            assert await dbm.webhook_endpoints_of(s, other.id) == []
            assert [n.id for n in await dbm.notifications_of(s, user.id)] == [note.id]
            assert await dbm.notifications_of(s, other.id) == []
            await dbm.record_delivery(s, ep.id, note.id, 1, 500, None)
            row = await dbm.record_delivery(s, ep.id, note.id, 2, None, "ConnectError", dead=True)
            assert (row.attempts, row.last_status, row.last_error) == (2, None, "ConnectError")
        async with db.session() as s:
            row = await s.get(dbm.WebhookDelivery, row.id)
            _aware_utc(row.dead_at)
            assert row.delivered_at is None

    run(url, body)
