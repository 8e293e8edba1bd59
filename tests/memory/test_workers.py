"""The embedding worker on the real Postgres: what it embeds, and that it holds no lock while it does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import chain, history
from memory.budget import TokenCounter
from memory.types import Message, StoredMessage
from memory.workers import EmbeddingWorker
from tests.fakes import FakeEmbedder


class GatedEmbedder(FakeEmbedder):
    """The fake embedder, held mid-embedding until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = asyncio.Event()
        self.gate = asyncio.Event()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.inside.set()
        await self.gate.wait()
        return await super().embed(texts)


async def stored(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int, texts: Sequence[str]
) -> list[StoredMessage]:
    async with sessions.begin() as s:
        row = await history.create_conversation(s, user_id=user, public_id="w")
        return await chain.append(
            s,
            user_id=user,
            conversation_id=row.id,
            parent_id=None,
            messages=[Message("user", t, "Nadia") for t in texts],
            token_counts=[counter.count(t) for t in texts],
        )


async def vectors(sessions: async_sessionmaker[AsyncSession], ids: list[int]) -> dict[int, list[list[float]]]:
    async with sessions() as s:
        rows = (
            await s.execute(
                text(
                    "SELECT message_id, embedding::text AS v FROM message_embedding"
                    " WHERE message_id = ANY(:ids) ORDER BY message_id, chunk"
                ),
                {"ids": ids},
            )
        ).all()
    found: dict[int, list[list[float]]] = {}
    for r in rows:
        found.setdefault(r.message_id, []).append([float(x) for x in r.v.strip("[]").split(",")])
    return found


async def test_the_text_is_embedded_without_speaker_or_date(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """ "[date] Name: text" pulled the wrong speaker's turns; recall compares the question with the text."""
    said = ["My dream is to sail around the world.", "I adopted a parrot."]
    messages = await stored(sessions, counter, user, said)
    await EmbeddingWorker(sessions, FakeEmbedder(), chunker=lambda t: [t]).drain()
    expected = await FakeEmbedder().embed(said)
    found = await vectors(sessions, [m.id for m in messages])
    for message, vector in zip(messages, expected, strict=True):
        assert [round(x, 5) for x in found[message.id][0]] == [round(x, 5) for x in vector]


async def test_no_row_lock_is_held_while_embedding_and_no_row_is_embedded_twice(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    messages = await stored(sessions, counter, user, ["first turn", "second turn"])
    ids = [m.id for m in messages]
    gated = GatedEmbedder()
    first = asyncio.create_task(EmbeddingWorker(sessions, gated, chunker=lambda t: [t]).step())
    await asyncio.wait_for(gated.inside.wait(), 30)
    async with sessions.begin() as s:  # NOWAIT fails at once if the worker held the rows' locks
        locked = await s.execute(
            text("SELECT id FROM message WHERE id = ANY(:ids) ORDER BY id FOR UPDATE NOWAIT"), {"ids": ids}
        )
        assert list(locked.scalars()) == ids
    other = EmbeddingWorker(sessions, FakeEmbedder(), chunker=lambda t: [t])
    assert await other.step() == 0  # claimed by the first worker: nothing for a second one
    gated.gate.set()
    assert await first == 2
    assert {k: len(v) for k, v in (await vectors(sessions, ids)).items()} == {ids[0]: 1, ids[1]: 1}
    async with sessions() as s:
        left = await s.scalar(
            text(
                "SELECT count(*) FROM message WHERE id = ANY(:ids)"
                " AND (NOT embedded OR embed_claimed_at IS NOT NULL)"
            ),
            {"ids": ids},
        )
    assert left == 0


async def test_a_message_extended_while_embedding_is_embedded_again_with_its_new_text(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    (message,) = await stored(sessions, counter, user, ["The story begins"])
    gated = GatedEmbedder()
    worker = EmbeddingWorker(sessions, gated, chunker=lambda t: [t])
    step = asyncio.create_task(worker.step())
    await asyncio.wait_for(gated.inside.wait(), 30)
    async with asyncio.timeout(60), sessions.begin() as s:  # a `continue` lands mid-embedding
        grown = Message("assistant", "The story begins and ends.")
        await history.revise(s, user_id=user, message_id=message.id, message=grown, tokens=6, keep=False)
    gated.gate.set()
    assert await step == 1
    assert await vectors(sessions, [message.id]) == {}  # the stale vector was not written
    assert await worker.step() == 1  # released at once, not after the claim's lease
    (vector,) = (await vectors(sessions, [message.id]))[message.id]
    (expected,) = await FakeEmbedder().embed(["The story begins and ends."])
    assert [round(x, 5) for x in vector] == [round(x, 5) for x in expected]


async def test_a_row_skipped_while_locked_is_embedded_soon_without_another_wake(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """The worker claims with SKIP LOCKED and then slept its whole idle time (30 s) with a row left
    behind that another transaction (the fact worker marking it read) held at the moment of the claim:
    the store's wake had been spent on that claim. A claim that leaves locked rows behind looks again soon."""
    (message,) = await stored(sessions, counter, user, ["held by another transaction"])
    worker = EmbeddingWorker(sessions, FakeEmbedder(), chunker=lambda t: [t], idle_s=600)
    async with sessions.begin() as s:  # as the fact worker's UPDATE holds it
        await s.execute(text("SELECT id FROM message WHERE id = :id FOR UPDATE"), {"id": message.id})
        running = asyncio.create_task(worker.run())
        worker.wake.set()
        for _ in range(600):  # the first claim runs while the row is held
            if worker.skipped:
                break
            await asyncio.sleep(0.1)
        assert worker.skipped
    try:
        for _ in range(600):  # polls for the background work: a minute at most on a busy machine
            if await vectors(sessions, [message.id]):
                break
            await asyncio.sleep(0.1)
        assert await vectors(sessions, [message.id])  # not after the 600 s idle time
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
