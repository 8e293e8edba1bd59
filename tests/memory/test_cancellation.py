"""A task cancelled while it takes a pooled connection gives the connection back (real Postgres).

The reads that run without a transaction (`memory.db.autocommit`) switch a pooled connection to
autocommit as they take it, and psycopg yields to the event loop while it does. A task cancelled right
there (a shutdown stopping the embedding worker, a client leaving) left SQLAlchemy's half-built
connection checked out: the garbage collector dropped it later, in whichever test it happened to run,
and CI failed on that warning (`tests/personas/test_api.py`, about one run in three).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.pool import QueuePool

from memory.db import autocommit, make_engine, make_sessionmaker


async def test_a_read_cancelled_while_it_takes_its_connection_returns_it(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sqlalchemy.pool")
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    reads = autocommit(make_sessionmaker(engine))
    try:

        async def read() -> None:
            async with reads() as s:
                await s.execute(text("SELECT 1"))

        task = asyncio.create_task(read())

        def cancel(*_: Any) -> None:
            """The pool hands the connection out; the task's next await is cancelled. psycopg yields in a
            wait that needs no I/O (the autocommit switch) once the loop has been busy 5 ms: make it so."""
            task.cancel()
            time.sleep(0.01)

        pool = engine.sync_engine.pool
        assert isinstance(pool, QueuePool)
        event.listen(pool, "checkout", cancel, once=True)
        with pytest.raises(asyncio.CancelledError):
            await task
        task = asyncio.create_task(asyncio.sleep(0))  # the cancelled one's traceback held the connection
        gc.collect()
        dropped = [r.getMessage() for r in caplog.records if "garbage collector" in r.getMessage()]
        assert not dropped, dropped
        assert pool.checkedout() == 0
        async with reads() as s:  # the one pooled connection serves the next read
            assert await s.scalar(text("SELECT 2")) == 2
    finally:
        await engine.dispose()
