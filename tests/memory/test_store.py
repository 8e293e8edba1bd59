"""Storing answered turns (issue 12 items 1, 2 and 5): any failure journals the turn, the journal never
holds a request up, and a store that stalls past the next request's wait is still stored once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker
from memory.journal import InFlight, JournalEntry, TurnJournal
from memory.models import MessageRow
from memory.service import BehindJournal, MemoryConfig, MemoryService
from memory.types import Message, SessionKey, TurnRecord
from tests.fakes import FakeEmbedder


def record(reply: str, *incoming: Message) -> TurnRecord:
    return TurnRecord(reply=reply, status="complete", model="m", prompt=[], tokens={}, incoming=incoming)


async def rows(sessions: async_sessionmaker[AsyncSession], user: int) -> list[tuple[str, str, int | None]]:
    async with sessions() as s:
        found = await s.execute(
            select(MessageRow.role, MessageRow.content, MessageRow.parent_id)
            .where(MessageRow.user_id == user)
            .order_by(MessageRow.id)
        )
    return [(r.role, r.content, r.parent_id) for r in found]


async def test_a_store_that_fails_for_any_reason_is_journaled_then_stored_once(
    pg_url: str, user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Item 1: with the pool exhausted the store failed with QueuePool's TimeoutError, which was not
    counted as an outage, so the answered turn was logged and dropped."""
    engine = make_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    tiny = make_sessionmaker(engine)
    journal = TurnJournal(tmp_path / "turns.jsonl")
    memory = MemoryService(tiny, counter, FakeEmbedder(), MemoryConfig(deadline_s=30), journal=journal)
    session = SessionKey(user_id=user, conversation="pool-1")
    question = Message("user", "Will this survive?")
    thread = await memory.recognise(session, [question])
    try:
        async with tiny() as holder:  # the pool's only connection is taken
            await holder.execute(text("SELECT 1"))
            memory.remember(session, thread, record("Yes.", question))
            await memory.settle()
            assert [e.turn.reply for e in journal.entries()] == ["Yes."]
        assert await memory.drain_journal() == 1
        assert await memory.drain_journal() == 0 and len(journal) == 0
    finally:
        await engine.dispose()
    stored = await rows(sessions, user)
    assert [(r, c) for r, c, _ in stored] == [("user", "Will this survive?"), ("assistant", "Yes.")]


async def test_recognition_never_waits_on_the_journal(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Item 2: after an outage, `recognise()` drained the whole journal under a lock before every
    request; requests hung for minutes. The journal drains in the background only."""
    journal = TurnJournal(tmp_path / "turns.jsonl")
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30), journal=journal)
    waiting = SessionKey(user_id=user, conversation="journaled")
    journal.append(JournalEntry(waiting, record("Later.", Message("user", "Journaled question"))))
    assert memory.drain is not None
    async with memory.drain.lock((user, "journaled")):  # a drain in progress (or stuck on a slow database)
        thread = await asyncio.wait_for(
            memory.recognise(SessionKey(user_id=user, conversation="other"), [Message("user", "Hi")]), 60
        )
    assert thread.created and len(journal) == 1
    assert await memory.drain_journal() == 1


async def test_a_store_stalled_past_the_next_requests_wait_is_stored_once(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Item 5: the first store was blocked by a row lock, the next request's wait (`store_wait_s`)
    expired, it recognised a stale branch and stored the turn again under the same parent."""
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30, store_wait_s=0.2))
    session = SessionKey(user_id=user, conversation="stall-1")
    first = [Message("user", "first question")]
    await memory.store_turn(session, await memory.recognise(session, first), record("first answer"))
    second = [*first, Message("assistant", "first answer"), Message("user", "second question")]
    thread2 = await memory.recognise(session, second)
    async with sessions.begin() as blocker:  # like the embedding worker's long-held row locks
        await blocker.execute(text("SELECT id FROM message WHERE user_id = :u FOR UPDATE"), {"u": user})
        memory.remember(session, thread2, record("second answer"))
        third = [*second, Message("assistant", "second answer"), Message("user", "third question")]
        thread3 = await memory.recognise(session, third)  # the wait expires: a stale branch
        assert thread3.new[0] == Message("user", "second question")
        memory.remember(session, thread3, record("third answer"))
        await asyncio.sleep(0.5)
    await memory.settle()
    stored = await rows(sessions, user)
    assert [c for _, c, _ in stored] == [
        "first question",
        "first answer",
        "second question",
        "second answer",
        "third question",
        "third answer",
    ]


async def test_a_turn_in_flight_when_its_process_was_killed_is_stored(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Item 6: a SIGKILL mid-stream lost the turn in flight. Its write-ahead file (the request's
    messages, then each streamed piece) becomes a journal entry at the next start, stored once."""
    inflight = InFlight(tmp_path / "inflight")
    session = SessionKey(user_id=user, conversation="killed-1")
    question = Message("user", "Tell me everything.")
    turn = TurnRecord("", "partial", "m", [], {}, incoming=(question,), turn_id="t-killed")
    path = inflight.begin(JournalEntry(session, turn))
    InFlight.add(path, "Once upon")
    InFlight.add(path, " a time")
    dead = path.with_name("999999999-t-killed.wal")  # as left by a process that no longer runs
    path.rename(dead)
    with dead.open("a") as f:
        f.write('"cut sh')  # the piece being written when the process died
    journal = TurnJournal(tmp_path / "turns.jsonl")
    assert inflight.recover(journal) == 1 and not dead.exists()
    (entry,) = journal.entries()
    assert (entry.turn.reply, entry.turn.status, entry.turn_id) == ("Once upon a time", "partial", "t-killed")
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30), journal=journal)
    assert await memory.drain_journal() == 1
    assert [(r, c) for r, c, _ in await rows(sessions, user)] == [
        ("user", "Tell me everything."),
        ("assistant", "Once upon a time"),
    ]


async def test_a_partial_stored_after_the_clients_shorter_copy_is_not_a_second_reply(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Issue 11 item 5, the other order: after Stop the client sent its next turn (carrying the part of
    the reply it kept) before the broken-off stream's own store ran."""
    session = SessionKey(user_id=user)
    opening = [Message("assistant", "Welcome."), Message("user", "Hi")]
    await memory.store_turn(session, await memory.recognise(session, opening), record("Hello."))
    first = [*opening, Message("assistant", "Hello."), Message("user", "Tell me")]
    stopped = await memory.recognise(session, first)
    following = [*first, Message("assistant", "Hello from"), Message("user", "And then?")]
    await memory.store_turn(session, await memory.recognise(session, following), record("More."))
    partial = TurnRecord(reply=" Hello from the stub", status="partial", model="m", prompt=[], tokens={})
    await memory.store_turn(session, stopped, partial)
    stored = [c for _, c, _ in await rows(sessions, user)]
    assert stored == ["Welcome.", "Hi", "Hello.", "Tell me", "Hello from", "And then?", "More."]


async def test_a_partial_stored_between_recognising_and_storing_the_next_turn_is_one_reply(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Issue 11 item 5, the race between the two orders: the next turn was recognised before the
    broken-off stream's store committed (so its copy of the reply counted as new), and stored after it.
    The client's shorter copy must become the stored partial, not a second reply beside it."""
    session = SessionKey(user_id=user)
    opening = [Message("assistant", "Welcome."), Message("user", "Hi")]
    await memory.store_turn(session, await memory.recognise(session, opening), record("Hello."))
    first = [*opening, Message("assistant", "Hello."), Message("user", "Tell me")]
    stopped = await memory.recognise(session, first)
    following = [*first, Message("assistant", "Hello from"), Message("user", "And then?")]
    recognised = await memory.recognise(session, following)
    partial = TurnRecord(reply=" Hello from the stub", status="partial", model="m", prompt=[], tokens={})
    await memory.store_turn(session, stopped, partial)
    await memory.store_turn(session, recognised, record("More."))
    stored = await rows(sessions, user)
    assert [c for _, c, _ in stored] == [
        "Welcome.",
        "Hi",
        "Hello.",
        "Tell me",
        "Hello from",
        "And then?",
        "More.",
    ]


async def test_a_swipe_that_begins_like_a_broken_off_reply_is_a_reply_of_its_own(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Only the client's copy of a reply can be the part of a broken-off one it kept: a generated reply
    that happens to begin the same way is a new swipe, and the stored partial keeps its text."""
    session = SessionKey(user_id=user)
    opening = [Message("assistant", "Welcome."), Message("user", "Tell me")]
    stopped = await memory.recognise(session, opening)
    partial = TurnRecord(reply="Hello from the stub", status="partial", model="m", prompt=[], tokens={})
    await memory.store_turn(session, stopped, partial)
    await memory.store_turn(session, await memory.recognise(session, opening), record("Hello"))
    stored = [c for _, c, _ in await rows(sessions, user)]
    assert stored == ["Welcome.", "Tell me", "Hello from the stub", "Hello"]


async def test_a_turn_behind_journaled_turns_of_its_conversation_comes_after_them(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """After an outage, a conversation's new turn must not be stored before its journaled ones: its
    request stores them first (within the memory deadline) or, if it cannot, is journaled after them."""
    journal = TurnJournal(tmp_path / "turns.jsonl")
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=0.5), journal=journal)
    waiting = SessionKey(user_id=user, conversation="behind-1")
    first = Message("user", "First, during the outage")
    journal.append(JournalEntry(waiting, record("One.", first)))
    second = [first, Message("assistant", "One."), Message("user", "Second")]
    assert memory.drain is not None
    async with memory.drain.lock(
        (user, "behind-1")
    ):  # its turns cannot be stored in time (a drain holds them)
        with pytest.raises(BehindJournal):
            await memory.recognise(waiting, second)
    other = await memory.recognise(SessionKey(user_id=user, conversation="other-1"), [Message("user", "Hi")])
    assert other.created and len(journal) == 1  # another conversation is not held up
    thread = await memory.recognise(waiting, second)  # now its journaled turn is stored first
    assert len(journal) == 0 and thread.new == (Message("user", "Second"),)
    await memory.store_turn(waiting, thread, record("Two."))
    assert [c for _, c, _ in await rows(sessions, user)] == [
        "First, during the outage",
        "One.",
        "Second",
        "Two.",
    ]


async def test_a_turn_the_client_never_saw_end_leaves_the_branch_it_forked_from_intact(
    user: int, counter: TokenCounter, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """The SIGKILL fault run stored a first turn twice. Anima was killed while it streamed turn 2 (the
    whole reply was written ahead, the client never got `[DONE]`); the next process stored it as a
    partial turn, then the client, which had dropped turn 2, sent turn 3 after turn 1's reply. The
    backend's replies repeat their text, so the stored turn 2 ran as long as the client's real branch
    if its user message were an edit: alignment took the newer run, and turn 2's message was rewritten
    into turn 1's (a second copy of it, under turn 1's reply)."""
    folder = tmp_path / "journal"
    inflight = InFlight(folder / "inflight")
    first = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30), inflight=inflight)
    session = SessionKey(user_id=user, conversation="killed-2")
    system, reply = Message("system", "Be brief."), Message("assistant", "Hello from the stub!")
    opening = [system, Message("user", "turn 1")]
    await first.store_turn(session, await first.recognise(session, opening), record(reply.content, *opening))
    cut = [*opening, reply, Message("user", "turn 2")]
    wal = first.begin(session, TurnRecord("", "partial", "m", [], {}, incoming=tuple(cut)))
    assert wal is not None
    InFlight.add(wal, reply.content)  # streamed in full; the process dies before `[DONE]` goes out
    wal.rename(wal.with_name(f"999999999-{wal.name.split('-', 1)[1]}"))  # a process no longer running
    journal = TurnJournal.open(folder)
    assert inflight.recover(journal) == 1
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30), journal=journal)
    after = [*opening, reply, Message("user", "turn 3")]  # the client's history: turn 2 failed
    thread = await memory.recognise(session, after)  # stores the journaled turn 2 first
    assert thread.new == (Message("user", "turn 3"),) and not thread.revisions
    await memory.store_turn(session, thread, record(reply.content, *after))
    stored = await rows(sessions, user)
    assert [(r, c) for r, c, _ in stored] == [
        ("user", "turn 1"),
        ("assistant", "Hello from the stub!"),
        ("user", "turn 2"),  # the partial turn 2 is kept, as a branch the client left
        ("assistant", "Hello from the stub!"),
        ("user", "turn 3"),
        ("assistant", "Hello from the stub!"),
    ]
    parent_of = {c: p for _, c, p in stored if c.startswith("turn")}
    assert parent_of["turn 2"] == parent_of["turn 3"] is not None  # both after turn 1's reply
