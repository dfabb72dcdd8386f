"""Persistence for the live server: SQLAlchemy 2 models, the :class:`Database` handle and small
repository functions the routes and pipelines call.

Conventions
-----------
* Every datetime is UTC and timezone-aware, both going in and coming out (:class:`UTCDateTime`;
  a naive datetime is refused rather than guessed at). SQLite keeps them as naive UTC text.
* Ids are strings: uuid4 hex unless the caller owns the id (``commands.id`` is the controller's
  action id, which is also the OEM idempotency key).
* Repository functions take an :class:`~sqlalchemy.ext.asyncio.AsyncSession`, flush but never
  commit: the caller owns the transaction (``async with db.transaction() as s: ...``). That is what
  makes :func:`outbox_put` transactional with the change it announces.
* Functions a route calls on behalf of a user take ``user_id`` and answer ``None`` for rows that
  belong to somebody else, so "not yours" and "does not exist" look the same (404).
* Uniqueness clashes a caller can cause surface as :class:`Conflict`, raised inside a savepoint so
  the surrounding transaction stays usable.

The schema itself lives in Alembic migrations (``server/migrations``); :meth:`Database.migrate`
runs them programmatically, no ``alembic.ini`` needed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    delete,
    event,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "MIGRATIONS_DIR",
    "ApiKey",
    "Base",
    "Command",
    "Conflict",
    "Database",
    "Notification",
    "OAuthState",
    "OemAccount",
    "Outbox",
    "Override",
    "Preferences",
    "SeenWebhook",
    "Snapshot",
    "UTCDateTime",
    "User",
    "Vehicle",
    "WebhookDelivery",
    "WebhookEndpoint",
    "active_vehicles",
    "add_api_key",
    "add_notification",
    "add_override",
    "add_vehicle",
    "add_webhook_endpoint",
    "alembic_config",
    "commands_of",
    "consume_override",
    "create_user",
    "deactivate_vehicle",
    "finish_command",
    "forget_seen_webhooks",
    "load_snapshot",
    "new_id",
    "notifications_of",
    "oem_account_of",
    "outbox_mark_published",
    "outbox_pending",
    "outbox_put",
    "pending_overrides",
    "preferences_of",
    "record_command",
    "revoke_api_key",
    "save_oauth_state",
    "save_snapshot",
    "seen_webhook",
    "set_command_verified",
    "set_preferences",
    "unlink_oem_account",
    "upsert_oem_account",
    "use_oauth_state",
    "user_by_email",
    "user_by_id",
    "user_for_api_key_hash",
    "utcnow",
    "vehicle_of",
    "vehicles_of",
]

#: the Alembic environment shipped inside the package (package data, see pyproject.toml)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: SQLite waits this long for a competing writer before answering "database is locked"
SQLITE_BUSY_TIMEOUT_MS = 5000


def utcnow() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh row id: uuid4 as 32 hex characters."""
    return uuid.uuid4().hex


class Conflict(Exception):
    """A uniqueness rule refused the write (email taken, OEM account or car linked to someone else)."""


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL, naive-UTC text on SQLite; aware UTC datetimes in and out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSON everywhere, JSONB on PostgreSQL
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(32)  # uuid4 hex
REF = String(255)  # ids that come from elsewhere (OEMs, the controller)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _fk(target: str) -> ForeignKey:
    return ForeignKey(target, ondelete="CASCADE")


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # always lower-cased
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ID, _fk("users.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(255), unique=True)
    label: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OAuthState(Base):
    __tablename__ = "oauth_states"
    state: Mapped[str] = mapped_column(REF, primary_key=True)
    user_id: Mapped[str] = mapped_column(ID, _fk("users.id"), index=True)
    oem: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str | None] = mapped_column(Text)
    redirect_to: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OemAccount(Base):
    __tablename__ = "oem_accounts"
    __table_args__ = (UniqueConstraint("oem", "account_ref"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ID, _fk("users.id"), index=True)
    oem: Mapped[str] = mapped_column(String(64))
    account_ref: Mapped[str] = mapped_column(REF)
    tokens_encrypted: Mapped[str] = mapped_column(Text)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    unlinked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Vehicle(Base):
    __tablename__ = "vehicles"
    __table_args__ = (UniqueConstraint("oem", "oem_vehicle_id"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ID, _fk("users.id"), index=True)
    oem: Mapped[str] = mapped_column(String(64))
    oem_vehicle_id: Mapped[str] = mapped_column(REF)
    account_id: Mapped[str] = mapped_column(ID, _fk("oem_accounts.id"), index=True)
    model: Mapped[str | None] = mapped_column(String(255))
    battery_kwh: Mapped[float] = mapped_column(Float)
    max_kw: Mapped[float] = mapped_column(Float)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Preferences(Base):
    __tablename__ = "preferences"
    vehicle_id: Mapped[str] = mapped_column(ID, _fk("vehicles.id"), primary_key=True)
    #: {"0".."6" (Monday=0): {"ready_by": "HH:MM", "target_soc": float}}
    schedule: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    min_soc: Mapped[float] = mapped_column(Float)
    carbon_weight_gbp_per_kg: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Override(Base):
    __tablename__ = "overrides"
    __table_args__ = (CheckConstraint("kind IN ('ready_by', 'charge_now')", name="kind"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    vehicle_id: Mapped[str] = mapped_column(ID, _fk("vehicles.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    ready_by_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    target_soc: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Command(Base):
    __tablename__ = "commands"
    id: Mapped[str] = mapped_column(REF, primary_key=True)  # the controller's action id
    vehicle_id: Mapped[str] = mapped_column(ID, _fk("vehicles.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[Any] = mapped_column(JSONType, nullable=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    outcome: Mapped[str | None] = mapped_column(String(128))  # "ok" or the error class
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified: Mapped[str | None] = mapped_column(String(64))  # "obeyed" / "disobeyed" / ...


class Notification(Base):
    __tablename__ = "notifications"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ID, _fk("users.id"), index=True)
    vehicle_id: Mapped[str | None] = mapped_column(ID, _fk("vehicles.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    body: Mapped[Any] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ID, _fk("users.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("endpoint_id", "notification_id"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    endpoint_id: Mapped[str] = mapped_column(ID, _fk("webhook_endpoints.id"))
    notification_id: Mapped[str] = mapped_column(ID, _fk("notifications.id"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Outbox(Base):
    __tablename__ = "outbox"
    # AUTOINCREMENT on SQLite so a seq is never reused after the newest row is deleted
    __table_args__ = (
        Index("ix_outbox_pending", "published_at", "seq"),
        {"sqlite_autoincrement": True},
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(255))
    payload: Mapped[Any] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Snapshot(Base):
    __tablename__ = "snapshots"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    body: Mapped[str] = mapped_column(Text)  # JSON text, kept verbatim
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SeenWebhook(Base):
    __tablename__ = "seen_webhooks"
    oem: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(REF, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# -- the database handle ------------------------------------------------------------------------


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for the packaged migrations and ``url`` (no ini file involved)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser interpolates "%": escape it (URL-encoded passwords)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_setup(engine: AsyncEngine) -> None:
    """WAL, foreign keys and a busy timeout on every SQLite connection; and let SQLAlchemy, not
    the sqlite3 module, emit BEGIN (IMMEDIATE) so savepoints and transactional DDL behave."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 stops issuing its own BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE: a transaction takes the write lock when it begins and waits for it (busy
        # timeout); a deferred one that reads, then writes after another connection wrote, fails
        # at once with "database is locked" (its snapshot is stale), which the server's
        # concurrent stages would hit
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine plus a session factory. ``url`` is an async SQLAlchemy URL, e.g.
    ``sqlite+aiosqlite:///path.db`` or ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            engine_kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
        self.engine: AsyncEngine = create_async_engine(url, **engine_kwargs)
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self, revision: str = "head") -> None:
        """Alembic ``upgrade revision`` over this engine (a no-op when already there)."""
        from alembic import command

        cfg = alembic_config(self.url)

        def upgrade(sync_conn: Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, revision)

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    def session(self) -> AsyncSession:
        """A new session (``async with db.session() as s:``); begin/commit are the caller's."""
        return self._sessions()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self._sessions() as s, s.begin():
            yield s

    async def close(self) -> None:
        """Dispose of the engine's connections."""
        await self.engine.dispose()


# -- repository: users and keys -------------------------------------------------------------------


async def _add_unique(s: AsyncSession, row: Base, what: str) -> None:
    """Insert ``row`` in a savepoint; a uniqueness clash becomes :class:`Conflict`."""
    try:
        async with s.begin_nested():
            s.add(row)
    except IntegrityError as exc:
        raise Conflict(what) from exc


async def create_user(s: AsyncSession, email: str, password_hash: str) -> User:
    """A new user; the email is stored lower-cased and trimmed; :class:`Conflict` if taken."""
    user = User(id=new_id(), email=email.strip().lower(), password_hash=password_hash,
                created_at=utcnow())
    await _add_unique(s, user, f"email {user.email!r} already registered")
    return user


async def user_by_email(s: AsyncSession, email: str) -> User | None:
    """The user with this email (case-insensitive), or None."""
    return await s.scalar(select(User).where(User.email == email.strip().lower()))


async def user_by_id(s: AsyncSession, user_id: str) -> User | None:
    """The user with this id, or None."""
    return await s.get(User, user_id)


async def add_api_key(s: AsyncSession, user_id: str, key_hash: str, label: str | None = None) -> ApiKey:
    """Store the hash of a new API key for ``user_id`` (the server never stores the key itself)."""
    key = ApiKey(id=new_id(), user_id=user_id, key_hash=key_hash, label=label, created_at=utcnow())
    await _add_unique(s, key, "api key hash already exists")
    return key


async def user_for_api_key_hash(s: AsyncSession, key_hash: str) -> User | None:
    """The owner of an unrevoked API key with this hash, or None."""
    return await s.scalar(
        select(User).join(ApiKey, ApiKey.user_id == User.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


async def revoke_api_key(s: AsyncSession, user_id: str, key_id: str) -> bool:
    """Revoke one of ``user_id``'s keys; False if it is not theirs or already revoked."""
    res = await s.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id,
                             ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return res.rowcount == 1


# -- repository: OAuth and OEM accounts -----------------------------------------------------------


async def save_oauth_state(s: AsyncSession, state: str, user_id: str, oem: str,
                           code_verifier: str | None = None, *,
                           redirect_to: str | None = None) -> OAuthState:
    """Remember a one-time OAuth ``state`` issued to ``user_id`` for ``oem``."""
    row = OAuthState(state=state, user_id=user_id, oem=oem, code_verifier=code_verifier,
                     redirect_to=redirect_to, created_at=utcnow())
    await _add_unique(s, row, "oauth state already exists")
    return row


async def use_oauth_state(s: AsyncSession, state: str, *,
                          max_age: timedelta | None = None) -> OAuthState | None:
    """Consume ``state``: the row the first time, None if unknown, already used (a replay) or
    older than ``max_age``. One conditional UPDATE, so two racing callbacks cannot both win."""
    now = utcnow()
    stmt = update(OAuthState).where(OAuthState.state == state, OAuthState.used_at.is_(None))
    if max_age is not None:
        stmt = stmt.where(OAuthState.created_at >= now - max_age)
    res = await s.execute(
        stmt.values(used_at=now).returning(OAuthState),
        execution_options={"synchronize_session": False, "populate_existing": True},
    )
    return res.scalars().one_or_none()


async def upsert_oem_account(s: AsyncSession, user_id: str, oem: str, account_ref: str,
                             tokens_encrypted: str) -> OemAccount:
    """Link (or re-link, refreshing tokens) the OEM account ``(oem, account_ref)`` to ``user_id``;
    :class:`Conflict` if it is currently linked to another user."""
    acct = await s.scalar(
        select(OemAccount).where(OemAccount.oem == oem, OemAccount.account_ref == account_ref)
        .with_for_update()
    )
    if acct is None:
        acct = OemAccount(id=new_id(), user_id=user_id, oem=oem, account_ref=account_ref,
                          tokens_encrypted=tokens_encrypted, linked_at=utcnow())
        await _add_unique(s, acct, f"{oem} account {account_ref!r} is linked to another user")
        return acct
    if acct.user_id != user_id and acct.unlinked_at is None:
        raise Conflict(f"{oem} account {account_ref!r} is linked to another user")
    if acct.user_id != user_id or acct.unlinked_at is not None:
        acct.linked_at = utcnow()
    acct.user_id = user_id
    acct.tokens_encrypted = tokens_encrypted
    acct.unlinked_at = None
    await s.flush()
    return acct


async def oem_account_of(s: AsyncSession, user_id: str, account_id: str) -> OemAccount | None:
    """``user_id``'s OEM account ``account_id``, or None (someone else's, or unknown)."""
    return await s.scalar(
        select(OemAccount).where(OemAccount.id == account_id, OemAccount.user_id == user_id)
    )


async def linked_accounts(s: AsyncSession) -> list[OemAccount]:
    """Every currently linked OEM account, system-wide (token loading at start-up)."""
    return list(await s.scalars(
        select(OemAccount).where(OemAccount.unlinked_at.is_(None)).order_by(OemAccount.id)
    ))


async def set_account_tokens(s: AsyncSession, account_id: str, tokens_encrypted: str | None) -> bool:
    """Replace an account's encrypted tokens (None stores ""); False if the account is unknown."""
    res = await s.execute(update(OemAccount).where(OemAccount.id == account_id)
                          .values(tokens_encrypted=tokens_encrypted or ""))
    return res.rowcount == 1


async def unlink_oem_account(s: AsyncSession, user_id: str, account_id: str) -> bool:
    """Mark ``user_id``'s account unlinked, wipe its tokens and deactivate its cars; False if not
    theirs or already unlinked."""
    res = await s.execute(
        update(OemAccount).where(OemAccount.id == account_id, OemAccount.user_id == user_id,
                                 OemAccount.unlinked_at.is_(None))
        .values(unlinked_at=utcnow(), tokens_encrypted="")
    )
    if res.rowcount != 1:
        return False
    await s.execute(update(Vehicle).where(Vehicle.account_id == account_id).values(active=False))
    return True


# -- repository: vehicles, preferences, overrides -------------------------------------------------


async def add_vehicle(s: AsyncSession, user_id: str, account_id: str, oem: str,
                      oem_vehicle_id: str, *, battery_kwh: float, max_kw: float,
                      model: str | None = None) -> Vehicle:
    """Register a car under ``user_id`` (re-activating an earlier registration of the same car);
    :class:`Conflict` if it is actively registered to another user."""
    car = await s.scalar(
        select(Vehicle).where(Vehicle.oem == oem, Vehicle.oem_vehicle_id == oem_vehicle_id)
        .with_for_update()
    )
    if car is None:
        car = Vehicle(id=new_id(), user_id=user_id, account_id=account_id, oem=oem,
                      oem_vehicle_id=oem_vehicle_id, model=model, battery_kwh=battery_kwh,
                      max_kw=max_kw, registered_at=utcnow(), active=True)
        await _add_unique(s, car, f"{oem} vehicle {oem_vehicle_id!r} is registered elsewhere")
        return car
    if car.active and car.user_id != user_id:
        raise Conflict(f"{oem} vehicle {oem_vehicle_id!r} is registered to another user")
    if not car.active or car.user_id != user_id:
        car.registered_at = utcnow()
    car.user_id, car.account_id, car.active = user_id, account_id, True
    car.model, car.battery_kwh, car.max_kw = model, battery_kwh, max_kw
    await s.flush()
    return car


async def vehicles_of(s: AsyncSession, user_id: str, *, include_inactive: bool = False) -> list[Vehicle]:
    """``user_id``'s cars (active ones unless ``include_inactive``), oldest registration first."""
    stmt = select(Vehicle).where(Vehicle.user_id == user_id)
    if not include_inactive:
        stmt = stmt.where(Vehicle.active.is_(True))
    return list(await s.scalars(stmt.order_by(Vehicle.registered_at, Vehicle.id)))


async def vehicle_of(s: AsyncSession, user_id: str, vehicle_id: str) -> Vehicle | None:
    """``user_id``'s car ``vehicle_id``, or None if unknown or another user's (answer 404)."""
    return await s.scalar(
        select(Vehicle).where(Vehicle.id == vehicle_id, Vehicle.user_id == user_id)
    )


async def active_vehicles(s: AsyncSession) -> list[Vehicle]:
    """Every active car (the hosted controller's fleet), system-wide."""
    return list(await s.scalars(select(Vehicle).where(Vehicle.active.is_(True)).order_by(Vehicle.id)))


async def vehicle_by_oem_id(s: AsyncSession, oem: str | None, oem_vehicle_id: str) -> Vehicle | None:
    """The active car the OEM calls ``oem_vehicle_id`` (any OEM when ``oem`` is None), or None."""
    stmt = select(Vehicle).where(Vehicle.oem_vehicle_id == oem_vehicle_id, Vehicle.active.is_(True))
    if oem is not None:
        stmt = stmt.where(Vehicle.oem == oem)
    return (await s.scalars(stmt.order_by(Vehicle.id).limit(1))).first()


async def deactivate_vehicle(s: AsyncSession, user_id: str, vehicle_id: str) -> bool:
    """Stop managing ``user_id``'s car; False if not theirs or already inactive."""
    res = await s.execute(
        update(Vehicle).where(Vehicle.id == vehicle_id, Vehicle.user_id == user_id,
                              Vehicle.active.is_(True)).values(active=False)
    )
    return res.rowcount == 1


def _normalise_schedule(schedule: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for day, entry in schedule.items():
        d = int(day)
        if not 0 <= d <= 6:
            raise ValueError(f"weekday {day!r} outside 0..6")
        out[str(d)] = dict(entry)
    return out


async def set_preferences(s: AsyncSession, user_id: str, vehicle_id: str, *,
                          schedule: Mapping[Any, Any], min_soc: float,
                          carbon_weight_gbp_per_kg: float) -> Preferences | None:
    """Create or replace the preferences of ``user_id``'s car; None if the car is not theirs.
    ``schedule`` maps weekday 0-6 (int or str) to ``{"ready_by": "HH:MM", "target_soc": x}``;
    it is stored with string keys ``"0"``..``"6"``."""
    if await vehicle_of(s, user_id, vehicle_id) is None:
        return None
    prefs = await s.get(Preferences, vehicle_id)
    if prefs is None:
        prefs = Preferences(vehicle_id=vehicle_id)
        s.add(prefs)
    prefs.schedule = _normalise_schedule(schedule)
    prefs.min_soc = min_soc
    prefs.carbon_weight_gbp_per_kg = carbon_weight_gbp_per_kg
    prefs.updated_at = utcnow()
    await s.flush()
    return prefs


async def preferences_of(s: AsyncSession, user_id: str, vehicle_id: str) -> Preferences | None:
    """The preferences of ``user_id``'s car, or None (not theirs, or never set)."""
    return await s.scalar(
        select(Preferences).join(Vehicle, Vehicle.id == Preferences.vehicle_id)
        .where(Preferences.vehicle_id == vehicle_id, Vehicle.user_id == user_id)
    )


async def add_override(s: AsyncSession, user_id: str, vehicle_id: str, kind: str, *,
                       ready_by_at: datetime | None = None,
                       target_soc: float | None = None) -> Override | None:
    """A one-off override ("ready_by" or "charge_now") for ``user_id``'s car; None if not theirs."""
    if kind not in ("ready_by", "charge_now"):
        raise ValueError(f"unknown override kind {kind!r}")
    if kind == "ready_by" and ready_by_at is None:
        raise ValueError("a ready_by override needs ready_by_at")
    if await vehicle_of(s, user_id, vehicle_id) is None:
        return None
    row = Override(id=new_id(), vehicle_id=vehicle_id, kind=kind, ready_by_at=ready_by_at,
                   target_soc=target_soc, created_at=utcnow())
    s.add(row)
    await s.flush()
    return row


async def pending_overrides(s: AsyncSession, vehicle_id: str) -> list[Override]:
    """The car's unconsumed overrides, oldest first (system-level: the controller's view)."""
    return list(await s.scalars(
        select(Override).where(Override.vehicle_id == vehicle_id, Override.consumed_at.is_(None))
        .order_by(Override.created_at, Override.id)
    ))


async def consume_override(s: AsyncSession, override_id: str) -> bool:
    """Mark an override consumed; False if unknown or already consumed."""
    res = await s.execute(
        update(Override).where(Override.id == override_id, Override.consumed_at.is_(None))
        .values(consumed_at=utcnow())
    )
    return res.rowcount == 1


# -- repository: commands and notifications -------------------------------------------------------


def _insert(s: AsyncSession, model: type[Base]) -> Any:
    """A dialect ``INSERT`` that knows ``ON CONFLICT DO NOTHING``."""
    name = s.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"dialect {name!r}")


async def record_command(s: AsyncSession, command_id: str, vehicle_id: str, kind: str,
                         detail: Any = None, *, sent_at: datetime | None = None) -> Command:
    """Record that action ``command_id`` was sent; idempotent: a repeat returns the first row."""
    await s.execute(
        _insert(s, Command).values(id=command_id, vehicle_id=vehicle_id, kind=kind, detail=detail,
                                   sent_at=sent_at or utcnow())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = await s.get(Command, command_id, populate_existing=True)
    assert row is not None
    return row


async def finish_command(s: AsyncSession, command_id: str, outcome: str, *,
                         error: str | None = None,
                         finished_at: datetime | None = None) -> Command | None:
    """Record the outcome ("ok" or the error class) of a sent command; None if unknown."""
    row = await s.get(Command, command_id)
    if row is None:
        return None
    row.outcome, row.error, row.finished_at = outcome, error, finished_at or utcnow()
    await s.flush()
    return row


async def set_command_verified(s: AsyncSession, command_id: str, verdict: str) -> bool:
    """Record whether the car obeyed the command ("obeyed"/"disobeyed"/...); False if unknown."""
    res = await s.execute(update(Command).where(Command.id == command_id).values(verified=verdict))
    return res.rowcount == 1


async def commands_of(s: AsyncSession, user_id: str, vehicle_id: str, *,
                      limit: int = 100) -> list[Command]:
    """The newest ``limit`` commands sent to ``user_id``'s car (empty if not theirs)."""
    return list(await s.scalars(
        select(Command).join(Vehicle, Vehicle.id == Command.vehicle_id)
        .where(Command.vehicle_id == vehicle_id, Vehicle.user_id == user_id)
        .order_by(Command.sent_at.desc(), Command.id).limit(limit)
    ))


async def add_notification(s: AsyncSession, user_id: str, vehicle_id: str | None, kind: str,
                           body: Any) -> Notification:
    """A notification for ``user_id`` (optionally about one car)."""
    row = Notification(id=new_id(), user_id=user_id, vehicle_id=vehicle_id, kind=kind, body=body,
                       created_at=utcnow())
    s.add(row)
    await s.flush()
    return row


async def notifications_of(s: AsyncSession, user_id: str, limit: int = 100) -> list[Notification]:
    """``user_id``'s newest ``limit`` notifications."""
    return list(await s.scalars(
        select(Notification).where(Notification.user_id == user_id)
        .order_by(Notification.created_at.desc(), Notification.id).limit(limit)
    ))


async def add_webhook_endpoint(s: AsyncSession, user_id: str, url: str, secret: str) -> WebhookEndpoint:
    """Register an outbound webhook endpoint for ``user_id``."""
    row = WebhookEndpoint(id=new_id(), user_id=user_id, url=url, secret=secret,
                          created_at=utcnow(), active=True)
    s.add(row)
    await s.flush()
    return row


async def webhook_endpoints_of(s: AsyncSession, user_id: str) -> list[WebhookEndpoint]:
    """``user_id``'s active outbound webhook endpoints."""
    return list(await s.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.user_id == user_id,
                                      WebhookEndpoint.active.is_(True))
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ))


async def record_delivery(s: AsyncSession, endpoint_id: str, notification_id: str, attempt: int,
                          status: int | None, error: str | None, *, delivered: bool = False,
                          dead: bool = False,
                          next_attempt_at: datetime | None = None) -> WebhookDelivery:
    """Record attempt number ``attempt`` of delivering a notification to an endpoint (one row per
    pair, updated in place); ``delivered``/``dead`` stamp the final state."""
    row = await s.scalar(select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint_id,
        WebhookDelivery.notification_id == notification_id))
    if row is None:
        row = WebhookDelivery(id=new_id(), endpoint_id=endpoint_id, notification_id=notification_id,
                              attempts=0)
        s.add(row)
    now = utcnow()
    row.attempts = max(row.attempts or 0, attempt)
    row.last_status, row.last_error = status, error
    row.next_attempt_at = None if delivered or dead else next_attempt_at
    if delivered:
        row.delivered_at = now
    if dead:
        row.dead_at = now
    await s.flush()
    return row


# -- repository: outbox, snapshots, inbound de-duplication ----------------------------------------


async def outbox_put(s: AsyncSession, topic: str, payload: Any) -> Outbox:
    """Queue a message in the caller's transaction: published only if that transaction commits."""
    row = Outbox(topic=topic, payload=payload, created_at=utcnow())
    s.add(row)
    await s.flush()
    return row


async def outbox_pending(s: AsyncSession, limit: int = 100) -> list[Outbox]:
    """Up to ``limit`` unpublished messages in ``seq`` order."""
    return list(await s.scalars(
        select(Outbox).where(Outbox.published_at.is_(None)).order_by(Outbox.seq).limit(limit)
    ))


async def outbox_mark_published(s: AsyncSession, seqs: Iterable[int]) -> int:
    """Mark these messages published; returns how many were still pending."""
    seqs = list(seqs)
    if not seqs:
        return 0
    res = await s.execute(
        update(Outbox).where(Outbox.seq.in_(seqs), Outbox.published_at.is_(None))
        .values(published_at=utcnow()),
        execution_options={"synchronize_session": "fetch"},
    )
    return res.rowcount


async def save_snapshot(s: AsyncSession, name: str, body: Any) -> Snapshot:
    """Store (replace) the snapshot ``name``; ``body`` is JSON-serialisable data or a JSON string."""
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    row = await s.get(Snapshot, name)
    if row is None:
        row = Snapshot(name=name, body=text, saved_at=utcnow())
        s.add(row)
    else:
        row.body, row.saved_at = text, utcnow()
    await s.flush()
    return row


async def load_snapshot(s: AsyncSession, name: str) -> str | None:
    """The stored JSON text of snapshot ``name`` (verbatim; ``json.loads`` it), or None."""
    return await s.scalar(select(Snapshot.body).where(Snapshot.name == name))


async def seen_webhook(s: AsyncSession, oem: str, delivery_id: str) -> bool:
    """True if this inbound delivery was already recorded; otherwise records it and answers False.
    ``INSERT .. ON CONFLICT DO NOTHING`` on the primary key, so concurrent duplicates are safe."""
    res = await s.execute(
        _insert(s, SeenWebhook).values(oem=oem, delivery_id=delivery_id, received_at=utcnow())
        .on_conflict_do_nothing(index_elements=["oem", "delivery_id"])
    )
    return res.rowcount == 0


async def forget_seen_webhooks(s: AsyncSession, older_than: datetime) -> int:
    """Drop de-duplication records received before ``older_than``; returns how many."""
    res = await s.execute(delete(SeenWebhook).where(SeenWebhook.received_at < older_than))
    return res.rowcount
