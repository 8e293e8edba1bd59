"""Fact extraction and reconciliation on the real Postgres, with scripted extractors on real HTTP
(tests/servers/facts_stub.py behind the stub upstream, reached through Anima's own backend adapter)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import fact_store
from memory.archive import Incoming
from memory.budget import TokenCounter
from memory.fact_models import FactRow, RelationshipRow
from memory.fact_store import Scope
from memory.fact_worker import Extract, FactConfig, FactWorker
from memory.factbook import FactBook, FactNotFound, Statement
from memory.models import ConversationRow, MessageRow, PersonaRef
from memory.service import MemoryService
from memory.users import create_key
from proxy.backends.registry import Registry, build_backends
from proxy.knowledge import extractor
from proxy.pipeline import ChatPipeline, RetryPolicy
from proxy.setting_groups import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import closed_port, make_settings
from tests.servers.openai_stub import StubState

MODELS = ("facts-valid", "facts-repeat", "facts-broken", "facts-never", "facts-invent")
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
async def pipeline(stub_url: str, counter: TokenCounter) -> AsyncIterator[ChatPipeline]:
    backends = {
        "stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1"),
        "dead": BackendSettings(kind="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1"),
    }
    routes = [RouteSettings(name=f"stub/{m}", backend="stub", model=m) for m in MODELS]
    routes.append(RouteSettings(name="dead/x", backend="dead", model="x"))
    registry = Registry(build_backends(backends), routes)
    yield ChatPipeline(registry, counter, retry=RetryPolicy(retries=0, backoff_s=0))
    for backend in registry.backends.values():
        await backend.aclose()


def extract_with(pipeline: ChatPipeline, model: str) -> Extract:
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai")},
        models=[],
        memory=MemorySettings(enabled=False, facts_model=model),
    )
    return extractor(pipeline, settings)


def worker(sessions: async_sessionmaker[AsyncSession]) -> FactWorker:
    return FactWorker(sessions, FactConfig(batch_messages=12))


async def chat(
    memory: MemoryService, user: int, *lines: str, at: datetime = T0, persona: str | None = None
) -> str:
    """An imported conversation: user lines, each answered by the assistant; one minute apart."""
    messages = []
    for i, line in enumerate(lines):
        messages.append(Incoming("user", line, created_at=at + timedelta(minutes=2 * i)))
        messages.append(Incoming("assistant", "I see.", created_at=at + timedelta(minutes=2 * i + 1)))
    return await memory.archive.create(user, messages, persona=persona)


async def current(sessions: async_sessionmaker[AsyncSession], user: int) -> dict[str, tuple[str, float]]:
    async with sessions() as s:
        rows = (
            await s.scalars(select(FactRow).where(FactRow.user_id == user, FactRow.valid_to.is_(None)))
        ).all()
    return {f"{r.subject_name or r.subject}.{r.attribute}": (r.value, r.confidence) for r in rows}


async def all_versions(sessions: async_sessionmaker[AsyncSession], user: int) -> list[FactRow]:
    async with sessions() as s:
        return list(
            (await s.scalars(select(FactRow).where(FactRow.user_id == user).order_by(FactRow.id))).all()
        )


async def test_worker_stores_grounded_facts_with_their_sources(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    await chat(memory, user, "Hi! My name is Anna and I live in Paris.", "My sister Maria is a nurse.")
    facts = worker(sessions)
    assert await facts.drain(extract_with(pipeline, "stub/facts-valid"), user_id=user) == 4
    assert await current(sessions, user) == {
        "user.name": ("Anna", 0.8),
        "user.home city": ("Paris", 0.8),
        "Maria.job": ("nurse", 0.8),
    }
    book = FactBook(sessions)
    [sister] = await book.find(user, {"subject": "other"}, limit=10, offset=0)
    async with sessions() as s:
        said = await s.scalar(
            select(MessageRow.id).where(MessageRow.user_id == user, MessageRow.content.like("My sister%"))
        )
        unread = await s.scalar(
            select(func.count()).where(MessageRow.user_id == user, ~MessageRow.facts_done)
        )
    assert sister["sources"] == [said] and sister["name"] == "Maria" and sister["origin"] == "inference"
    assert unread == 0 and facts.stats.calls == 1


async def test_worker_repeat_strengthens_change_supersedes_negation_closes(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    extract, facts = extract_with(pipeline, "stub/facts-valid"), worker(sessions)
    await chat(memory, user, "I live in Paris. I have a dog named Rex.")
    await facts.drain(extract, user_id=user)
    await chat(memory, user, "As I said, I live in Paris.", at=T0 + timedelta(days=1))
    await facts.drain(extract, user_id=user)
    assert await current(sessions, user) == {
        "user.home city": ("Paris", 0.96),
        "user.dog's name": ("Rex", 0.8),
    }
    assert len(await all_versions(sessions, user)) == 2  # one row, more sources
    await chat(
        memory, user, "Big news: I moved to Berlin.", "I don't have a dog anymore.", at=T0 + timedelta(days=2)
    )
    await facts.drain(extract, user_id=user)
    assert await current(sessions, user) == {
        "user.home city": ("Berlin", 0.8),
        "user.dog's name": ("none", 0.8),
    }
    paris = next(f for f in await all_versions(sessions, user) if f.value == "Paris")
    berlin = next(f for f in await all_versions(sessions, user) if f.value == "Berlin")
    assert paris.valid_to == berlin.valid_from and paris.superseded_by == berlin.id
    history = await FactBook(sessions).find(user, {"history": True}, limit=10, offset=0)
    assert sorted(f["value"] for f in history) == ["Berlin", "Paris", "Rex", "none"]


async def test_worker_one_row_for_a_fact_repeated_in_one_answer(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    await chat(memory, user, "I work as a pilot.")
    await worker(sessions).drain(extract_with(pipeline, "stub/facts-repeat"), user_id=user)
    assert [f.value for f in await all_versions(sessions, user)] == ["pilot"]


async def test_worker_repairs_and_retries_broken_answers(
    memory: MemoryService,
    sessions: async_sessionmaker[AsyncSession],
    user: int,
    pipeline: ChatPipeline,
    stub: StubState,
) -> None:
    await chat(memory, user, "My name is Bo.")
    facts = worker(sessions)
    await facts.drain(extract_with(pipeline, "stub/facts-broken"), user_id=user)
    assert await current(sessions, user) == {"user.name": ("Bo", 0.9)}  # "90%" repaired, message 99 refused
    assert facts.stats.calls == 3 and facts.stats.invalid_answers == 0
    assert "message: 99 is not a numbered message" in stub.requests[-1]["messages"][-1]["content"]


async def test_worker_stores_nothing_from_answers_that_never_validate(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    await chat(memory, user, "My name is Cy.")
    facts = worker(sessions)
    assert (
        await facts.drain(extract_with(pipeline, "stub/facts-never"), user_id=user) == 2
    )  # read, nothing learned
    assert await all_versions(sessions, user) == []
    assert facts.stats.invalid_answers == 1 and facts.stats.calls == 3


async def test_worker_drops_what_the_conversation_never_said(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    await chat(memory, user, "My name is Di.")
    await worker(sessions).drain(extract_with(pipeline, "stub/facts-invent"), user_id=user)
    assert await current(sessions, user) == {"user.name": ("Di", 0.8)}


async def test_worker_backend_down_leaves_the_batch_for_later(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    await chat(memory, user, "My name is Eve.")
    assert await worker(sessions).drain(extract_with(pipeline, "dead/x"), user_id=user) == 0
    assert await all_versions(sessions, user) == []
    restarted = worker(sessions)  # a new process finds the work from the database
    assert await restarted.drain(extract_with(pipeline, "stub/facts-valid"), user_id=user) == 2
    assert await current(sessions, user) == {"user.name": ("Eve", 0.8)}


async def test_correction_wins_over_an_older_inference(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    book = FactBook(sessions)
    stated = await book.state(user, Statement("user", "identity", "name", "Anne", "The user's name is Anne."))
    assert stated["origin"] == "correction" and stated["confidence"] == 1.0
    await chat(memory, user, "My name is Anna.", at=T0)  # said before the correction was made
    await worker(sessions).drain(extract_with(pipeline, "stub/facts-valid"), user_id=user)
    assert await current(sessions, user) == {"user.name": ("Anne", 1.0)}
    later = datetime.now(UTC) + timedelta(minutes=1)
    await chat(memory, user, "Call me Annie from now on.", at=later)
    await worker(sessions).drain(extract_with(pipeline, "stub/facts-valid"), user_id=user)
    assert await current(sessions, user) == {"user.name": ("Annie", 0.8)}


async def test_deleting_a_conversation_removes_facts_only_it_supported(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    extract, facts = extract_with(pipeline, "stub/facts-valid"), worker(sessions)
    first = await chat(memory, user, "I live in Paris. I work as a baker.")
    await facts.drain(extract, user_id=user)
    second = await chat(memory, user, "I work as a baker.", "I moved to Lyon.", at=T0 + timedelta(days=1))
    await facts.drain(extract, user_id=user)
    await memory.archive.delete(user, second)  # Lyon goes; Paris is current again; baker keeps a source
    assert await current(sessions, user) == {"user.home city": ("Paris", 0.8), "user.job": ("baker", 0.96)}
    [baker] = await FactBook(sessions).find(user, {"q": "baker"}, limit=5, offset=0)
    assert len(baker["sources"]) == 1
    await memory.archive.delete(user, first)
    assert await all_versions(sessions, user) == []


async def test_facts_and_relationships_stay_with_their_key(
    memory: MemoryService, sessions: async_sessionmaker[AsyncSession], user: int, pipeline: ChatPipeline
) -> None:
    async with sessions.begin() as s:
        other, _ = await create_key(s, "other-user")
    await chat(memory, user, "My name is Fay.", persona="aria")
    await chat(memory, other, "My name is Gus.", persona="aria")
    for who in (user, other):
        await worker(sessions).drain(extract_with(pipeline, "stub/facts-valid"), user_id=who)
    assert await current(sessions, user) == {"user.name": ("Fay", 0.8)}
    assert await current(sessions, other) == {"user.name": ("Gus", 0.8)}
    book = FactBook(sessions)
    [mine] = await book.find(user, {}, limit=5, offset=0)
    with pytest.raises(FactNotFound):
        await book.get(other, mine["id"])
    with pytest.raises(FactNotFound):
        await book.delete(other, mine["id"])
    async with sessions() as s:
        rows = (
            await s.scalars(select(RelationshipRow).where(RelationshipRow.user_id.in_([user, other])))
        ).all()
    assert sorted((r.user_id, r.interactions) for r in rows) == sorted([(user, 1), (other, 1)])


async def test_edit_opens_a_new_version_and_delete_forgets_all_versions(
    sessions: async_sessionmaker[AsyncSession], user: int
) -> None:
    book = FactBook(sessions)
    first = await book.state(user, Statement("user", "work", "job", "nurse", "The user is a nurse."))
    edited = await book.edit(user, first["id"], {"value": "doctor", "statement": "The user is a doctor."})
    assert edited["id"] != first["id"] and edited["origin"] == "correction"
    old = await book.get(user, first["id"])
    assert old["current"] is False and old["superseded_by"] == edited["id"]
    assert [f["value"] for f in await book.find(user, {}, limit=5, offset=0)] == ["doctor"]
    assert await book.delete(user, edited["id"]) == 2
    assert await book.find(user, {"history": True}, limit=5, offset=0) == []


async def test_the_prompt_reads_character_facts_of_its_persona_or_conversation_only(
    sessions: async_sessionmaker[AsyncSession], user: int
) -> None:
    """The prompt's fact read (built once now, with bound parameters): user facts always; facts about
    the character only from this persona's chats, or without a persona from this conversation (a new
    conversation has none: then those of no conversation, as `conversation_id IS NULL` matched)."""
    async with sessions.begin() as s:
        persona = PersonaRef(user_id=user, name="reader", source="api", version=1)
        talk = ConversationRow(user_id=user, public_id="facts-read")
        s.add_all([persona, talk])
        await s.flush()
        facts = {
            "user": ("user", None, None),
            "persona's": ("character", persona.id, None),
            "talk's": ("character", None, talk.id),
            "nowhere's": ("character", None, None),
        }
        for statement, (subject, persona_id, conversation_id) in facts.items():
            s.add(
                FactRow(
                    user_id=user, end_user="", persona_id=persona_id, conversation_id=conversation_id,
                    subject=subject, kind="trait", attribute=statement, value=statement,
                    statement=statement, confidence=0.9, origin="inference",
                )
            )  # fmt: skip
    scopes = {
        Scope(user, "", persona.id, talk.id): {"user", "persona's"},
        Scope(user, "", None, talk.id): {"user", "talk's"},
        Scope(user, "", None, None): {"user", "persona's", "nowhere's"},  # no conversation: theirs
    }
    async with sessions() as s:
        for scope, expected in scopes.items():
            assert {f.statement for f in await fact_store.current(s, scope)} == expected, scope
