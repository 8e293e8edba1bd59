"""One encoder pass per message: the recall query's vector is the vector its message is stored with.

The app runs with the real MiniLM embedder and chunker and with its embedding worker off, so whatever
vector a row has after a turn was stored by the turn itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emotion.detector import MiniLMEmotionDetector
from emotion.joint import JointEncoder
from emotion.joint import build_graph as build_joint
from emotion.joint import graph_name as joint_graph
from emotion.service import EmotionConfig, EmotionService
from memory import chain, history, model_cache
from memory.budget import TokenCounter
from memory.embedder import Embedder, chunk_text
from memory.service import MemoryConfig, MemoryService
from memory.types import Message
from memory.users import Users, create_key
from memory.workers import store_known
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.memory.test_api import running, say

SHORT = "My sister Amelia moved to Lisbon last spring and she loves the trams there."
FOLLOW_UP = "Do you remember where my sister lives now?"
LONG = " ".join(
    f"Sentence {i} of a very long story about the old lighthouse keeper and his dog." for i in range(40)
)


@pytest.fixture
async def app(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, embedder: Embedder
) -> AsyncIterator[tuple[str, MemoryService]]:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(backends=backends, models=routes, memory=MemorySettings(enabled=True), retries=0)
    service = MemoryService(sessions, counter, embedder, MemoryConfig(deadline_s=10), chunker=chunk_text)
    service.embeddings = None  # the worker off: nothing but the turn itself can embed a row
    services = Services(
        Registry(build_backends(backends), routes), counter, memory=service, users=Users(sessions)
    )
    async with running(create_app(settings, services)) as url:
        yield url, service


async def stored_vectors(
    sessions: async_sessionmaker[AsyncSession], user_id: int
) -> dict[str, tuple[bool, list[np.ndarray]]]:
    """Each stored message's text → (marked embedded, its chunk vectors)."""
    async with sessions() as s:
        rows = (
            await s.execute(
                text(
                    "SELECT m.content, m.embedded, e.embedding::text AS v FROM message m"
                    " LEFT JOIN message_embedding e ON e.message_id = m.id"
                    " WHERE m.user_id = :u ORDER BY m.id, e.chunk"
                ),
                {"u": user_id},
            )
        ).all()
    found: dict[str, tuple[bool, list[np.ndarray]]] = {}
    for r in rows:
        chunks = found.setdefault(r.content, (r.embedded, []))[1]
        if r.v is not None:
            chunks.append(np.array([float(x) for x in r.v.strip("[]").split(",")]))
    return found


async def test_the_query_vector_is_stored_with_its_message_without_the_worker(
    app: tuple[str, MemoryService], sessions: async_sessionmaker[AsyncSession], embedder: Embedder
) -> None:
    url, service = app
    async with sessions.begin() as s:
        user_id, key = await create_key(s, "known-vectors")
    chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": SHORT}]
    await say(url, key, chat, extra_headers={"X-Anima-Conversation": "amelia"})  # new chat: no recall
    await service.settle()
    chat += [{"role": "assistant", "content": "Hello from the stub!"}, {"role": "user", "content": FOLLOW_UP}]
    await say(url, key, chat, extra_headers={"X-Anima-Conversation": "amelia"})  # recall awaits the vector
    await service.settle()
    await say(url, key, [{"role": "user", "content": LONG}], extra_headers={"X-Anima-Conversation": "long"})
    await service.settle()

    found = await stored_vectors(sessions, user_id)
    worker = {t: np.array((await embedder.embed(chunk_text(t)))[0]) for t in (SHORT, FOLLOW_UP)}
    for said in (SHORT, FOLLOW_UP):
        embedded, chunks = found[said]
        assert embedded and len(chunks) == 1, said
        assert np.abs(chunks[0] - worker[said]).max() < 1e-5  # the worker's vector for that text
    assert found["Hello from the stub!"] == (False, [])  # the reply: the worker's (no request embedded it)
    assert len(chunk_text(LONG)) > 1 and found[LONG] == (False, [])  # chunked: not the query's vector


class Counted:
    """The real embedder, counting the calls that reach it."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner, self.dim, self.calls = embedder, embedder.dim, 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        return await self.inner.embed(texts)


async def test_with_emotion_on_one_joint_pass_reads_and_embeds_the_message(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    embedder: Embedder,
    detector: MiniLMEmotionDetector,
) -> None:
    """The newest user message's emotion and recall vector come from the joint graph: the separate
    embedder is never asked, and the stored vector is the one it would have made."""
    joint = JointEncoder.from_file(model_cache.ensure(joint_graph(), build_joint, "joint"))
    emotion = EmotionService(detector.with_joint(joint), EmotionConfig(deadline_s=10))
    counted = Counted(embedder)
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(backends=backends, models=routes, memory=MemorySettings(enabled=True), retries=0)
    service = MemoryService(
        sessions, counter, counted, MemoryConfig(deadline_s=10), chunker=chunk_text, annotate=emotion.annotate
    )
    service.embeddings = None
    registry = Registry(build_backends(backends), routes)
    services = Services(registry, counter, memory=service, users=Users(sessions), emotion=emotion)
    async with sessions.begin() as s:
        user_id, key = await create_key(s, "joint-pass")
    said = "I'm so scared about the exam tomorrow, I can't sleep."
    async with running(create_app(settings, services)) as url:
        await say(
            url, key, [{"role": "user", "content": said}], extra_headers={"X-Anima-Conversation": "exam"}
        )
        await service.settle()
    assert counted.calls == 0
    embedded, chunks = (await stored_vectors(sessions, user_id))[said]
    assert embedded and np.abs(chunks[0] - np.array((await embedder.embed([said]))[0])).max() < 1e-5
    async with sessions() as s:
        label = await s.scalar(
            text("SELECT emotion_label FROM message WHERE user_id = :u AND role = 'user'"), {"u": user_id}
        )
    assert label == (await detector.detect([said]))[0].label


async def test_a_known_vector_waits_for_the_worker_where_it_still_has_work(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """Rows already embedded keep their vector; rows the worker must still annotate (stored without
    importance) and texts it would chunk are left to it."""
    texts = ["annotated already", "not annotated yet", LONG, "embedded already"]
    async with sessions.begin() as s:
        row = await history.create_conversation(s, user_id=user, public_id="known")
        rows = await chain.append(
            s,
            user_id=user,
            conversation_id=row.id,
            parent_id=None,
            messages=[Message("user", t) for t in texts],
            token_counts=[counter.count(t) for t in texts],
            extras=[{"importance": 0.5}, {}, {"importance": 0.5}, {"importance": 0.5, "embedded": True}],
        )
        known = {t: [1.0] + [0.0] * 383 for t in texts}
        taken = await store_known(
            s, rows, known, user_id=user, conversation_id=row.id, chunker=chunk_text, annotating=True
        )
    assert taken == {rows[0].id}
    async with sessions() as s:
        embedded: dict[int, bool] = dict(
            (
                await s.execute(
                    text("SELECT id, embedded FROM message WHERE conversation_id = :c"), {"c": row.id}
                )
            ).all()
        )
        vectors = await s.scalar(
            text("SELECT count(*) FROM message_embedding WHERE conversation_id = :c"), {"c": row.id}
        )
    assert (
        embedded == {rows[0].id: True, rows[1].id: False, rows[2].id: False, rows[3].id: True}
        and vectors == 1
    )
