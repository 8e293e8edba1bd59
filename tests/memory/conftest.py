"""Memory tests run on the real embedded Postgres+pgvector (tests/conftest.py), migrated once per session."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.service import MemoryConfig, MemoryService
from tests.fakes import FakeEmbedder


@pytest.fixture
def memory(sessions: async_sessionmaker[AsyncSession], counter: TokenCounter) -> MemoryService:
    return MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=10))
