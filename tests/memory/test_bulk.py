"""Bulk stores (issue 12, item 3): a chain of messages is stored with a bounded number of statements in
one transaction, `reuse` still takes what is already stored, and an import whose client leaves is
rolled back, with no transaction left open. Throughput is measured by bench/import_bulk.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from memory import chain, history
from memory.archive import Archive, Incoming
from memory.budget import TokenCounter
from memory.models import ConversationRow, MessageRow
from memory.recall import Fusion
from memory.types import Message
from memory.window import WorkingMemory
from tests.proxy.test_access import build, new_key, running


@contextmanager
def counted_statements(sessions: async_sessionmaker[AsyncSession]) -> Iterator[list[str]]:
    engine: AsyncEngine = sessions.kw["bind"]
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_an_import_is_a_bounded_number_of_statements_and_a_correct_chain(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    archive = Archive(sessions, counter, WorkingMemory(turns=1, conversations=1), None, Fusion())
    messages = [Incoming("user" if i % 2 == 0 else "assistant", f"line {i}") for i in range(2000)]
    with counted_statements(sessions) as statements:
        public_id = await archive.create(user, messages)
    assert len(statements) < 20, f"{len(statements)} statements for 2,000 messages"
    async with sessions() as s:
        rows = (
            await s.execute(
                select(MessageRow.id, MessageRow.parent_id, MessageRow.depth, MessageRow.content)
                .join(ConversationRow)
                .where(ConversationRow.public_id == public_id, ConversationRow.user_id == user)
                .order_by(MessageRow.id)
            )
        ).all()
    assert [r.content for r in rows] == [m.content for m in messages]
    assert [r.depth for r in rows] == list(range(2000))
    assert [r.parent_id for r in rows] == [None] + [r.id for r in rows[:-1]]


async def test_bulk_append_reuses_the_messages_already_under_the_parent(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    said = [Message("user", "a"), Message("assistant", "b"), Message("user", "c")]
    async with sessions.begin() as s:
        conversation = await history.create_conversation(s, user_id=user, public_id="bulk-reuse")
        first = await chain.append(
            s,
            user_id=user,
            conversation_id=conversation.id,
            parent_id=None,
            messages=said,
            token_counts=[1, 1, 1],
        )
        again = await chain.append(
            s,
            user_id=user,
            conversation_id=conversation.id,
            parent_id=None,
            messages=[*said[:2], Message("user", "d"), Message("assistant", "e")],
            token_counts=[1, 1, 1, 1],
            reuse=True,
        )
        total = await s.scalar(select(func.count()).where(MessageRow.conversation_id == conversation.id))
    assert [m.id for m in again[:2]] == [m.id for m in first[:2]]  # taken, not stored again
    assert again[2].parent_id == first[1].id and again[2].depth == 2
    assert again[3].parent_id == again[2].id and again[3].depth == 3
    assert again[2].id > first[2].id and total == 5


async def open_transactions(sessions: async_sessionmaker[AsyncSession]) -> int:
    """Other transactions that have written a conversation row and not ended: an import's (the
    background workers write messages, embeddings and summaries, never conversations)."""
    async with sessions() as s:
        value = await s.scalar(
            text(
                "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE c.relname = 'conversation' AND l.mode = 'RowExclusiveLock'"
                " AND l.pid <> pg_backend_pid()"
            )
        )
    return int(value or 0)


async def test_an_import_whose_client_leaves_is_rolled_back(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    """The client disconnects while 20,000 messages are being stored: nothing is kept, no transaction
    stays open, and the server goes on serving."""
    application, _ = build(stub_url, sessions, counter)
    user_id, key = await new_key(sessions, "leaver")
    body = json.dumps(
        {"id": "left", "messages": [{"role": "user", "content": f"message {i}"} for i in range(20_000)]}
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/conversations",
        "raw_path": b"/v1/conversations",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"anima"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {key}".encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("anima", 80),
    }
    left = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with running(application) as transport:
        request = asyncio.create_task(application(scope, receive, send))
        for _ in range(3000):  # leave once the import is writing (or after 30 s, whatever it does)
            if await open_transactions(sessions) or request.done():
                break
            await asyncio.sleep(0.01)
        left.set()
        await asyncio.wait_for(request, timeout=120)
        for _ in range(3000):  # the rollback finishes in the background at most
            if not await open_transactions(sessions):
                break
            await asyncio.sleep(0.01)
        assert await open_transactions(sessions) == 0
        async with sessions() as s:
            stored = await s.scalar(select(func.count()).where(MessageRow.user_id == user_id))
            conversations = await s.scalar(select(func.count()).where(ConversationRow.user_id == user_id))
        assert (stored, conversations) == (0, 0)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://anima/v1", headers={"Authorization": f"Bearer {key}"}
        ) as c:
            again = await c.post(
                "/conversations", json={"id": "stayed", "messages": [{"role": "user", "content": "hi"}]}
            )
        assert again.status_code == 201
