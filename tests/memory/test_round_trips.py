"""Round trips to Postgres per turn (issue 15): every statement costs a round trip and CPU on both sides,
so recognising and storing a turn of a growing chat take as few as the data allows. Counted with
SQLAlchemy's cursor event on a real Postgres: no timing involved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker
from memory.service import MemoryConfig, MemoryService
from memory.types import Message, SessionKey, TurnRecord
from tests.fakes import FakeEmbedder

Counted = tuple[async_sessionmaker[AsyncSession], list[str]]


@pytest.fixture
async def counted(pg_url: str) -> AsyncIterator[Counted]:
    """Sessions on an engine that records every statement it sends."""
    engine = make_engine(pg_url, pool_size=2)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    yield make_sessionmaker(engine), statements
    await engine.dispose()


def record(reply: str, incoming: list[Message]) -> TurnRecord:
    return TurnRecord(reply, "complete", "m", [], {}, incoming=tuple(incoming))


async def test_a_growing_chat_is_recognised_in_one_statement_and_stored_in_seven(
    counted: Counted, user: int, counter: TokenCounter
) -> None:
    """SillyTavern resends the chat every turn. Recognition took four statements (candidates, then
    grandchildren, the public id and the earlier-history walk, each a round trip) and storing a turn
    eleven (the reply went in its own INSERT, after a reuse check under a parent stored a moment before)."""
    sessions, statements = counted
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30))
    session = SessionKey(user_id=user)
    chat = [Message("assistant", "*Mira waves from the gangway.*"), Message("user", "Where are the crates?")]
    recognised, stored = [], []
    for turn in range(4):
        statements.clear()
        thread = await memory.recognise(session, chat)
        recognised.append(len(statements))
        statements.clear()
        await memory.store_turn(session, thread, record(f"Reply {turn}.", chat))
        stored.append(len(statements))
        chat += [Message("assistant", f"Reply {turn}."), Message("user", f"And after {turn}?")]
    assert recognised[1:] == [1, 1, 1]  # the first turn of a new chat has no candidates to look further at
    assert stored[1:] == [7, 7, 7]  # lock, stored already?, reuse check, ids, INSERT, conversation, context
    thread = await memory.recognise(session, chat)
    assert thread.kind == "turn" and [m.content for m in thread.new] == ["And after 3?"]


async def test_a_trimmed_chat_walks_the_earlier_history_in_one_more_statement(
    counted: Counted, user: int, counter: TokenCounter
) -> None:
    """Once the client trims its oldest messages, what it no longer sends is read in one walk."""
    sessions, statements = counted
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30))
    session = SessionKey(user_id=user)
    chat = [Message("assistant", "*The storm wall looms.*"), Message("user", "Is anyone aboard?")]
    for turn in range(3):
        thread = await memory.recognise(session, chat)
        await memory.store_turn(session, thread, record(f"Maybe {turn}.", chat))
        chat += [Message("assistant", f"Maybe {turn}."), Message("user", f"Who, {turn}?")]
    statements.clear()
    thread = await memory.recognise(session, chat[3:], earlier_tokens=1000)
    assert len(statements) == 2
    assert [m.content for m in thread.earlier] == [m.content for m in chat[:3]]
    assert [m.content for m in thread.new] == ["Who, 2?"]
