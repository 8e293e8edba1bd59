"""Fact extraction end to end with a real `llama_cpp.server` running the shipped SmolLM2-135M: its
answers are poor, so the test checks the path (turns → worker → model → validation → Postgres) and
that nothing invalid was stored, not what was learned."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.extraction import NOTHING, words
from memory.fact_models import FactRow, FactSource
from memory.facts import KINDS, SUBJECTS, normal
from memory.models import MessageRow
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.proxy.test_facts_api import new_key, running

pytestmark = pytest.mark.slow


async def test_smollm2_extraction_stores_only_valid_grounded_facts(
    llama_server: str,
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    tmp_path: Path,
) -> None:
    backends = {
        "stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1"),
        "llama": BackendSettings(kind="openai", base_url=f"{llama_server}/v1", schema_style="json_object"),
    }
    routes = [
        RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192),
        RouteSettings(name="llama/smollm2", backend="llama", model="smollm2", context_window=2048),
    ]
    async with running(
        sessions, counter, tmp_path, backends, routes, facts_model="llama/smollm2", facts_max_tokens=300
    ) as anima:
        key = await new_key(sessions, "smollm2-facts")
        await anima.say(key, "Hi, my name is Anna and I live in Paris.", "s1")
        await anima.say(key, "My sister Maria is a nurse. I have a dog named Rex.", "s1")
        assert await anima.learn(key) == 4  # two turns read, whatever the model made of them
        worker = anima.app.state.facts
        assert worker.stats.calls >= 1 and worker.stats.prompt_tokens > 0
    async with sessions() as s:
        user = (
            await s.scalars(select(MessageRow).where(MessageRow.content.like("Hi, my name is Anna%")))
        ).first()
        assert user is not None
        facts = (await s.scalars(select(FactRow).where(FactRow.user_id == user.user_id))).all()
        for fact in facts:
            sources = (
                await s.scalars(select(FactSource.message_id).where(FactSource.fact_id == fact.id))
            ).all()
            [cited] = (await s.scalars(select(MessageRow).where(MessageRow.id.in_(sources)))).all()
            assert cited.user_id == fact.user_id and fact.subject in SUBJECTS and fact.kind in KINDS
            assert 0 <= fact.confidence <= 1 and fact.statement and fact.attribute and fact.value
            assert fact.subject != "user" or cited.role == "user"
            nothing = normal(fact.value) in NOTHING or not words(fact.value)
            evidence = words(fact.attribute) if nothing else words(fact.value)
            assert evidence & words(cited.content)
