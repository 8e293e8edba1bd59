"""Deleting a conversation leaves no trace of its text (issue 12, item 8): a unique string is planted in
one conversation, recalled into another's prompt, then the first is deleted; the string must be in no
column of any table, in no journal file, in no RAM window and in no API read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.journal import TurnJournal
from memory.models import ConversationRow
from memory.personas import PersonaRecords
from memory.quoting import REDACTED, memory_line, redact_messages
from memory.service import MemoryConfig, MemoryService
from memory.types import Memory
from memory.users import Users
from personas.store import PersonaStore
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.fakes import FakeEmbedder
from tests.proxy.test_access import client, new_key, running

PLANTED = "QUOKKA-7731-PLANTED"


def app_with_user_recall(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, journal: Path
) -> tuple[Any, MemoryService]:
    """Recall across all of the user's chats, so one chat's text reaches another's prompt."""
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(backends=backends, models=routes, memory=MemorySettings(enabled=True), retries=0)
    memory = MemoryService(
        sessions,
        counter,
        FakeEmbedder(),
        MemoryConfig(deadline_s=5, scope="user"),
        journal=TurnJournal.open(journal),
    )
    services = Services(
        Registry(build_backends(backends), routes),
        counter,
        memory=memory,
        users=Users(sessions, ttl_s=0),
        personas=PersonaStore(None, examples=False, records=PersonaRecords(sessions), cache_ttl_s=0),
    )
    return create_app(settings, services), memory


async def chat(c: httpx.AsyncClient, conversation: str, content: str) -> None:
    body = {"model": "stub/echo", "messages": [{"role": "user", "content": content}]}
    resp = await c.post("/chat/completions", json=body, headers={"X-Anima-Conversation": conversation})
    assert resp.status_code == 200, resp.text


async def settle(memory: MemoryService) -> None:
    await memory.settle()
    if memory.embeddings is not None:
        await memory.embeddings.drain()


async def rows_holding(sessions: async_sessionmaker[AsyncSession], needle: str) -> dict[str, int]:
    """Every table, every column (the whole row as text: text, varchar, json, jsonb, tsvector)."""
    async with sessions() as s:
        tables = list(
            await s.scalars(
                text(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                )
            )
        )
        found = {}
        for table in tables:
            count = await s.scalar(
                text(f'SELECT count(*) FROM "{table}" t WHERE t::text ILIKE :needle'),
                {"needle": f"%{needle}%"},
            )
            if count:
                found[table] = int(count)
    assert "message" in tables and "turn_context" in tables
    return found


async def test_a_deleted_conversation_leaves_no_trace_of_its_text(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, tmp_path: Path
) -> None:
    application, memory = app_with_user_recall(stub_url, sessions, counter, tmp_path / "journal")
    user_id, key = await new_key(sessions, "eraser")
    async with running(application) as transport, client(transport, key) as c:
        await chat(c, "secret", f"my locker combination is {PLANTED} so remember the locker combination")
        await settle(memory)
        await chat(c, "other", "what was my locker combination again")
        await chat(c, "other", "and the locker combination, one more time")
        await settle(memory)
        before = await c.get("/conversations/other/context")
        assert PLANTED in before.text, "recall did not quote the planted text: the test would prove nothing"
        assert set(await rows_holding(sessions, PLANTED)) >= {"message", "turn_context"}
        async with sessions() as s:
            secret_id = await s.scalar(
                text("SELECT id FROM conversation WHERE user_id = :u AND public_id = 'secret'"),
                {"u": user_id},
            )

        deleted = await c.delete("/conversations/secret")
        assert deleted.status_code == 200
        await settle(memory)

        assert await rows_holding(sessions, PLANTED) == {}
        journal = [p for p in (tmp_path / "journal").rglob("*") if p.is_file()]
        assert not [p for p in journal if PLANTED in p.read_text(errors="replace")]
        assert memory.window.latest(secret_id) == ()
        assert PLANTED not in repr(memory.window._entries)  # every conversation's RAM window
        reads = [
            "/conversations",
            "/conversations/other",
            "/conversations/other/messages",
            "/conversations/other/context",
            "/conversations/other/context?turn=1",
            "/conversations/other/context?turn=2",
            "/users/me/export",
        ]
        for path in reads:
            resp = await c.get(path)
            assert resp.status_code == 200 and PLANTED not in resp.text, path
        for scope in ("user", "persona"):
            hits = await c.post(
                "/memory/search", json={"query": f"locker combination {PLANTED}", "scope": scope}
            )
            assert hits.status_code == 200 and PLANTED not in hits.text
        assert (await c.get("/conversations/secret")).status_code == 404
        other = await c.get("/conversations/other/context?turn=1")
        assert "[deleted]" in other.text  # the recalled line is still there, redacted
    async with sessions() as s:
        assert await s.get(ConversationRow, secret_id) is None


def test_redaction_takes_quoted_memories_and_whole_messages_only() -> None:
    day = datetime(2026, 1, 31, tzinfo=UTC)
    line = memory_line(Memory(1, "a", "user", None, 'he said: "hi"\nthen left', 1.0, day))
    kept = memory_line(Memory(2, "a", "assistant", "Ana", "hi", 1.0, day))
    prompt = [
        {"role": "system", "content": f"Memories:\n{line}\n{kept}"},
        {"role": "user", "content": 'he said: "hi"\nthen left'},
        {"role": "user", "content": 'hi, he said: "hi"\nthen left, didn\'t he'},
    ]
    redacted = redact_messages(prompt, {'he said: "hi"\nthen left'})
    assert redacted is not None
    assert redacted[0]["content"] == f'Memories:\n- 2026-01-31, user said: "{REDACTED}"\n{kept}'
    assert redacted[1]["content"] == REDACTED
    assert redacted[2] == prompt[2]  # a message merely containing the text is the client's own
    assert redact_messages(prompt, {"nothing like it"}) is None
