"""Alembic environment for the chargetwin server, driven programmatically by
:meth:`server.db.Database.migrate` (or ``alembic_config(url)``); no alembic.ini needed.

Two ways in:

* ``config.attributes["connection"]`` holds a *sync* connection (what ``AsyncConnection.run_sync``
  hands over): migrate on it, inside the caller's transaction.
* otherwise an async engine is built from ``sqlalchemy.url`` and the migrations run through it.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from server.db import Base

config = context.config
target_metadata = Base.metadata

#: any fixed number: serialises concurrent ``migrate`` calls on one PostgreSQL database
PG_MIGRATION_LOCK = 0x63686772  # "chgr"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
