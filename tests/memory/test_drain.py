"""The journal after an outage (issue 12, follow-ups): conversations drain side by side, each in order,
and a deleted conversation is not brought back by a store in flight or by its journaled turns."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.journal import JournalEntry, TurnJournal
from memory.models import ConversationRow, MessageRow
from memory.service import MemoryConfig, MemoryService
from memory.store import lock_key
from memory.types import Message, SessionKey, TurnRecord
from tests.fakes import FakeEmbedder


def record(reply: str, *incoming: Message) -> TurnRecord:
    return TurnRecord(reply=reply, status="complete", model="m", prompt=[], tokens={}, incoming=incoming)


def journaled_chat(journal: TurnJournal, session: SessionKey, turns: int) -> None:
    """`turns` turns of one conversation answered during an outage, as its client sent them."""
    sent: list[Message] = []
    for n in range(1, turns + 1):
        sent.append(Message("user", f"{session.conversation} question {n}"))
        journal.append(JournalEntry(session, record(f"{session.conversation} answer {n}", *sent)))
        sent.append(Message("assistant", f"{session.conversation} answer {n}"))


async def branch(sessions: async_sessionmaker[AsyncSession], user: int, public_id: str) -> list[str]:
    """The conversation's messages in order, checking each is the child of the one before."""
    async with sessions() as s:
        found = (
            await s.execute(
                select(MessageRow.id, MessageRow.parent_id, MessageRow.content)
                .join(ConversationRow, ConversationRow.id == MessageRow.conversation_id)
                .where(MessageRow.user_id == user, ConversationRow.public_id == public_id)
                .order_by(MessageRow.id)
            )
        ).all()
    assert [r.parent_id for r in found] == [None, *(r.id for r in found[:-1])]  # one chain, no fork
    return [r.content for r in found]


async def traces(sessions: async_sessionmaker[AsyncSession], user: int, public_id: str) -> int:
    async with sessions() as s:
        conversations = await s.scalar(
            select(func.count())
            .select_from(ConversationRow)
            .where(ConversationRow.user_id == user, ConversationRow.public_id == public_id)
        )
        messages = await s.scalar(
            select(func.count()).select_from(MessageRow).where(MessageRow.content.contains(public_id))
        )
    return int(conversations or 0) + int(messages or 0)


async def test_conversations_drain_side_by_side_each_in_order(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """After a Postgres restart the journal drained one turn at a time (the 100-client run settled 51 s
    after the load stopped). Each conversation's first journaled turn here waits until every
    conversation has one being stored: a drain that takes them one by one never gets there."""
    journal = TurnJournal(tmp_path / "turns.jsonl")
    config = MemoryConfig(deadline_s=30, drain_concurrency=4)
    memory = MemoryService(sessions, counter, FakeEmbedder(), config, journal=journal)
    chats = [SessionKey(user_id=user, conversation=f"drain-{n}") for n in range(3)]
    for session in chats:
        journaled_chat(journal, session, 3)
    assert memory.drain is not None
    store, started, everyone = memory.drain._replay, list[tuple[str, str]](), asyncio.Event()

    async def observed(entry: JournalEntry) -> object:
        started.append((str(entry.session.conversation), entry.turn.reply))
        if len({c for c, _ in started}) == len(chats):
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 30)  # all three conversations are being stored at once
        return await store(entry)

    memory.drain._replay = observed
    assert await memory.drain_journal() == 9 and len(journal) == 0
    assert memory.drain.peak == len(chats)
    for session in chats:
        name = session.conversation
        assert [r for c, r in started if c == name] == [f"{name} answer {n}" for n in (1, 2, 3)]
        assert await branch(sessions, user, str(name)) == [
            text for n in (1, 2, 3) for text in (f"{name} question {n}", f"{name} answer {n}")
        ]


async def test_a_store_in_flight_does_not_bring_a_deleted_conversation_back(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """DELETE /v1/conversations/{id} did not wait for the conversation's stores in flight: a store
    that was blocked meanwhile failed on the deleted row, was journaled, and its replay stored the
    conversation again, history included."""
    journal = TurnJournal(tmp_path / "turns.jsonl")
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30), journal=journal)
    session = SessionKey(user_id=user, conversation="deleted-in-flight")
    first = [Message("user", "deleted-in-flight first")]
    await memory.store_turn(session, await memory.recognise(session, first), record("deleted-in-flight one"))
    second = [*first, Message("assistant", "deleted-in-flight one"), Message("user", "deleted-in-flight 2")]
    thread = await memory.recognise(session, second)
    async with sessions() as blocker:  # the conversation's store is held up (a slow database)
        await blocker.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(user, "deleted-in-flight")})
        memory.remember(session, thread, record("deleted-in-flight two", *second))
        deleting = asyncio.create_task(memory.archive.delete(user, "deleted-in-flight"))
        await asyncio.wait({deleting}, timeout=3)  # without the fix it is done by now
        await blocker.execute(text("SELECT pg_advisory_unlock_all()"))
        await blocker.commit()
    await deleting
    await memory.settle()
    await memory.drain_journal()
    assert await traces(sessions, user, "deleted-in-flight") == 0


async def test_a_deleted_conversations_journaled_turns_are_not_replayed(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Turns of the conversation journaled during an outage (named by the client, or found by content
    and recorded with its id) were replayed after the deletion and re-created it."""
    journal = TurnJournal(tmp_path / "turns.jsonl")
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30), journal=journal)
    named = SessionKey(user_id=user, conversation="deleted-journaled")
    first = [Message("user", "deleted-journaled first")]
    await memory.store_turn(named, await memory.recognise(named, first), record("deleted-journaled one"))
    journaled_chat(journal, named, 2)
    unnamed = JournalEntry(
        SessionKey(user_id=user),
        record("x", Message("user", "deleted-journaled by content")),
        "deleted-journaled",
    )
    journal.append(unnamed)
    kept = SessionKey(user_id=user, conversation="kept-journaled")
    journaled_chat(journal, kept, 1)
    await memory.archive.delete(user, "deleted-journaled")
    assert memory.drain is not None and memory.drain._discarded  # held while a drain may have read them
    assert await memory.drain_journal() == 1 and len(journal) == 0
    assert not memory.drain._discarded  # gone from the journal and from every read: forgotten, not hoarded
    assert await traces(sessions, user, "deleted-journaled") == 0
    assert await branch(sessions, user, "kept-journaled") == [
        "kept-journaled question 1",
        "kept-journaled answer 1",
    ]


async def test_a_journal_line_carries_no_vector_and_the_worker_embeds_the_replayed_turn(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """The request's query vector made a journal line ≈ 8 kB; it only spared the worker one message, so
    the line leaves it out (an older line's is ignored) and the replayed message is stored unembedded,
    then embedded by the worker like any other."""
    embedder = FakeEmbedder()
    journal = TurnJournal(tmp_path / "turns.jsonl")
    memory = MemoryService(sessions, counter, embedder, MemoryConfig(deadline_s=30), journal=journal)
    asked = Message("user", "where does my sister live now")
    vector = (await embedder.embed([asked.content]))[0]
    turn = dataclasses.replace(record("in Lisbon", asked), vectors={asked.content: vector})
    journal.append(JournalEntry(SessionKey(user_id=user, conversation="unembedded"), turn))
    line = json.loads(journal.path.read_text(encoding="utf-8"))
    assert "vectors" not in line["turn"] and len(json.dumps(line)) < 1000
    older = line | {"turn": line["turn"] | {"vectors": {asked.content: vector}}}
    assert JournalEntry.from_json(older).turn.vectors == {}

    assert await memory.drain_journal() == 1
    query = select(MessageRow.embedded).where(MessageRow.user_id == user, MessageRow.content == asked.content)
    async with sessions() as s:
        assert await s.scalar(query) is False
    assert memory.embeddings is not None
    await memory.embeddings.drain()
    async with sessions() as s:
        assert await s.scalar(query) is True
