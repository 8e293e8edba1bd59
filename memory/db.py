"""Database plumbing: engines, sessions, migrations, and the embedded Postgres+pgvector default.

No engine exists at import time; `lifespan` makes one and disposes of it.
"""

from __future__ import annotations

import ast
import logging
import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import PoolProxiedConnection

log = logging.getLogger("anima.db")

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


class DatabaseError(RuntimeError):
    """The database cannot be used (unreachable, or pgvector missing): said clearly at start-up."""


def async_url(url: str) -> str:
    """Accept `postgres://`, `postgresql://` and `postgresql+psycopg://`; always use psycopg 3."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


PING_IDLE_S = 10.0  # a pooled connection unused this long is pinged before use


def make_engine(url: str, *, ping_idle_s: float = PING_IDLE_S, **options: Any) -> AsyncEngine:
    """The engine every Postgres statement goes through (issue 15: each round trip costs CPU on both
    sides). A connection is pinged only after `ping_idle_s` unused (`ping_when_idle`), not on every
    checkout as `pool_pre_ping` did (8 of a turn's 50 statements); the pool hands out the connection
    used last (LIFO), so a busy process keeps a few hot ones and the idle rest age into a ping.
    psycopg prepares nothing server-side (`prepare_threshold=None`): every rollback (a read-only
    session's end) threw its prepared statements away with a `DEALLOCATE ALL` round trip."""
    options.setdefault("pool_size", 10)
    options.setdefault("max_overflow", 20)
    options.setdefault("pool_use_lifo", True)
    options["connect_args"] = {"prepare_threshold": None} | options.get("connect_args", {})
    # Statement parameters are people's messages and emotions: keep them out of errors and logs.
    options.setdefault("hide_parameters", True)
    engine = create_async_engine(async_url(url), **options)
    if not options.get("pool_pre_ping"):
        ping_when_idle(engine, ping_idle_s)
    return engine


_IDLE_SINCE = "anima_idle_since"


def ping_when_idle(engine: AsyncEngine, idle_s: float) -> None:
    """Ping a connection on checkout only when it sat in the pool `idle_s` or longer: one that died
    meanwhile (Postgres restarted, a firewall dropped it) is replaced before a request uses it. One
    that dies while in use within `idle_s` fails its statement once; SQLAlchemy then renews the whole
    pool, a store's turn is journaled (stored when the database answers) and a read degrades."""
    pool, dialect = engine.sync_engine.pool, engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def returned(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < idle_s:
            return  # just connected, or used a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError("the pooled connection is gone") from exc  # the pool reconnects
            raise


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def autocommit(sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """Sessions on the same pool whose statements each commit by themselves: for reads of the request
    path, which in a transaction cost a BEGIN and a ROLLBACK round trip around their one or two
    statements. Under READ COMMITTED a transaction gives a read nothing more (every statement takes
    its own snapshot); never for writes, nor for a read that relies on `set_config(..., true)`."""
    bind = sessions.kw["bind"]
    assert isinstance(bind, AsyncEngine)
    engine = bind.execution_options(isolation_level="AUTOCOMMIT")
    engine.sync_engine._connection_cls = _ReturnedIfCancelled  # (see there: why)
    return async_sessionmaker(engine, expire_on_commit=False)


class _ReturnedIfCancelled(Connection):
    """A connection that gives its pooled connection back when its setup is interrupted. Switching a
    pooled connection to autocommit (SQLAlchemy does it as the connection is made, from its
    `engine_connect` event) awaits psycopg, which yields to the loop once it has been busy 5 ms; a
    task cancelled right there (a shutdown, a client gone) left the pooled connection checked out in
    SQLAlchemy 2.1, for the garbage collector to drop (`tests/memory/test_cancellation.py`).
    Invalidated, not returned: its state is unknown, and returning it would mean more I/O."""

    def __init__(
        self, engine: Engine, connection: PoolProxiedConnection | None = None, **options: Any
    ) -> None:
        try:
            super().__init__(engine, connection, **options)
        except BaseException:
            pooled = getattr(self, "_dbapi_connection", None)
            if connection is None and pooled is not None:  # taken from the pool here: ours to give back
                pooled.invalidate()  # SQLAlchemy checks the slot back in even if the close is cancelled
            raise


async def check_pgvector(engine: AsyncEngine) -> None:
    """Fail at start with a readable reason if the server lacks pgvector."""
    try:
        async with engine.connect() as conn:
            available = await conn.scalar(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"))
    except Exception as exc:
        raise DatabaseError(f"cannot connect to the database: {exc}") from exc
    if not available:
        raise DatabaseError(
            "the database server has no pgvector extension: install pgvector (https://github.com/pgvector/pgvector)"
            " or unset ANIMA_DATABASE_URL to use the embedded Postgres"
        )


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations (blocking: run it in a thread from async code)."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    command.upgrade(config, revision)


_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def script_head(versions: Path = ALEMBIC_INI.parent / "alembic" / "versions") -> str | None:
    """The newest migration's revision, read from the migration files' `revision = ...` and
    `down_revision = ...` lines without importing Alembic (it and Mako are ~0.4 s of a restart's
    CPU). None unless the files name exactly one head in that plain form: then Alembic decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        for path in versions.glob("*.py"):
            for name, literal in _REVISION_LINE.findall(path.read_text()):
                value = ast.literal_eval(literal)
                if name == "revision":
                    revisions.add(value)
                else:
                    parents.update([value] if isinstance(value, str) else value or ())
    except (ValueError, SyntaxError, TypeError, OSError):
        return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def schema_revision(url: str) -> str | None:
    """The revision the database is at (one SELECT), None when it has no Anima schema yet."""
    import psycopg

    conninfo = make_url(async_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('alembic_version')").fetchone() in (None, (None,)):
            return None
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return rows[0][0] if len(rows) == 1 else None


def migrate_schema(url: str) -> bool:
    """Bring the schema to head; a database already there (every restart) costs one SELECT instead
    of importing Alembic and running its environment. True when migrations ran."""
    head = script_head()
    if head is not None and schema_revision(url) == head:
        return False
    upgrade_schema(url)
    return True


async def check_schema(engine: AsyncEngine) -> None:
    """A configured database must be migrated first (`anima db upgrade`): say so instead of failing later."""
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not exists:
        raise DatabaseError("the database has no Anima schema yet: run `anima db upgrade` first")
