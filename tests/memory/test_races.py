"""A request recognised before the previous turn's store landed (a slow store, another worker) must
not store that turn twice: storing reuses what is already there."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.models import MessageRow
from memory.service import MemoryService, TurnRecord
from memory.types import Message, SessionKey


def record(reply: str) -> TurnRecord:
    return TurnRecord(reply=reply, status="complete", model="m", prompt=[], tokens={})


async def test_a_stale_recognition_stores_only_what_is_new(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    session = SessionKey(user_id=user, conversation="race-1")
    first = [Message("user", "first question")]
    second = [*first, Message("assistant", "first answer"), Message("user", "second question")]
    thread1 = await memory.recognise(session, first)
    thread2 = await memory.recognise(session, second)  # before turn 1 is stored
    assert thread2.anchor_id is None and len(thread2.new) == 3
    await memory.store_turn(session, thread1, record("first answer"))
    await memory.store_turn(session, thread2, record("second answer"))
    async with sessions() as s:
        rows = (
            await s.execute(
                select(MessageRow.id, MessageRow.parent_id, MessageRow.role, MessageRow.content)
                .where(MessageRow.user_id == user)
                .order_by(MessageRow.id)
            )
        ).all()
    assert [(r.role, r.content) for r in rows] == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
        ("assistant", "second answer"),
    ]
    assert [r.parent_id for r in rows] == [None, rows[0].id, rows[1].id, rows[2].id]  # one branch
