"""Open mode is decided at start-up and can only end (issue 12, item 7): revoking the last key never
opens a server, and the first key created on an open server closes it. On a fresh Postgres, since open
mode depends on whether any key exists at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.users import revoke_key
from tests.proxy.test_access import build, client, new_key, running


@pytest.fixture(scope="module")
async def fresh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A Postgres of this module's own: no test elsewhere can have created keys in it."""
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("open-mode")))
    url = await anyio.to_thread.run_sync(server.start)
    engine = make_engine(url, pool_size=2)
    try:
        await anyio.to_thread.run_sync(upgrade_schema, url)
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
        await anyio.to_thread.run_sync(server.stop)


async def revoke_all(sessions: async_sessionmaker[AsyncSession], *names: str) -> None:
    """What `anima keys revoke` does, from outside the server."""
    async with sessions.begin() as s:
        for name in names:
            assert await revoke_key(s, name)


async def anonymous(transport: httpx.ASGITransport) -> int:
    async with client(transport) as c:
        return (await c.get("/conversations")).status_code


async def test_open_mode_ends_with_the_first_key_and_never_comes_back(
    stub_url: str, fresh: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    application, _ = build(stub_url, fresh, counter)  # loopback, no keys yet: open
    async with running(application) as transport:
        assert await anonymous(transport) == 200
        async with client(transport) as c:
            created = await c.post("/admin/keys", json={"name": "first"})
        assert created.status_code == 201
        assert await anonymous(transport) == 401  # the first key closed it
        await revoke_all(fresh, "first")
        assert await anonymous(transport) == 401  # no keys again, and still closed
        async with client(transport, created.json()["key"]) as c:
            assert (await c.get("/conversations")).status_code == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
async def test_revoking_the_last_key_never_opens_a_server(
    stub_url: str, fresh: async_sessionmaker[AsyncSession], counter: TokenCounter, host: str
) -> None:
    _, key = await new_key(fresh, f"only-{host}")
    application, _ = build(stub_url, fresh, counter, host=host, allow_open=True)
    async with running(application) as transport:
        async with client(transport, key) as c:
            assert (await c.get("/conversations")).status_code == 200
        assert await anonymous(transport) == 401
        await revoke_all(fresh, f"only-{host}")  # the last active key
        assert await anonymous(transport) == 401
        async with client(transport) as c:
            assert (
                await c.post("/chat/completions", json={"model": "stub/echo", "messages": []})
            ).status_code == 401
