"""Async Alembic environment. The URL is passed in by Anima (`config.attributes["url"]`) or read
from ANIMA_DATABASE_URL; autogenerate compares against memory.schema.metadata (every table)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import Connection

from alembic import context
from memory.db import make_engine
from memory.schema import metadata

target_metadata = metadata


def _url() -> str:
    url = context.config.attributes.get("url")
    if url:
        return str(url)
    from proxy.settings import get_settings

    configured = get_settings().database_url
    if configured is None:
        raise SystemExit(
            "set ANIMA_DATABASE_URL (or run `anima db upgrade`, which starts the embedded Postgres)"
        )
    return configured.get_secret_value()


MIGRATION_LOCK = 7_262_026  # several workers starting at once migrate one at a time


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _run_async() -> None:
    engine = make_engine(_url(), pool_size=1)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
