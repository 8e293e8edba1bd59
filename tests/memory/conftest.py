"""Memory tests run on the real embedded Postgres+pgvector, migrated once per session.

Each test makes its own user, so tests never see each other's rows and can assert exact values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.db import EmbeddedPostgres, make_engine, make_sessionmaker, upgrade_schema
from memory.service import MemoryConfig, MemoryService
from memory.users import create_key
from tests.fakes import FakeEmbedder


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("anima-data"))
    url = server.start()
    upgrade_schema(url)
    yield url
    server.stop()


@pytest.fixture(scope="session")
async def sessions(pg_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(pg_url, pool_size=4)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.fixture
async def user(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions.begin() as s:
        user_id, _ = await create_key(s, "test-user")
    return user_id


@pytest.fixture
def memory(sessions: async_sessionmaker[AsyncSession], counter: TokenCounter) -> MemoryService:
    return MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=10))
