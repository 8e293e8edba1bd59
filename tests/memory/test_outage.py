"""Postgres stopped while Anima serves: requests are still answered (the RAM window supplies a thin
client's history), `/health` says degraded, turns are journaled on disk, and when Postgres is back they
are stored in order, once. A journal left by a dead process is adopted by the next one."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import select

from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.journal import JournalEntry, TurnJournal
from memory.models import ConversationRow, MessageRow
from memory.service import MemoryConfig, MemoryService
from memory.types import Message, SessionKey, TurnRecord
from memory.users import Users
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.fakes import FakeEmbedder
from tests.servers.openai_stub import StubState

pytestmark = pytest.mark.slow
URL = "http://anima"


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    server = EmbeddedPostgres(tmp_path / "pg")
    url = await anyio.to_thread.run_sync(server.start)
    await anyio.to_thread.run_sync(upgrade_schema, url)
    yield server, url
    await anyio.to_thread.run_sync(server.stop)


async def ask(client: httpx.AsyncClient, text: str, conversation: str = "outage-1") -> httpx.Response:
    body = {"model": "stub/echo", "messages": [{"role": "user", "content": text}]}
    return await client.post(
        "/v1/chat/completions", json=body, headers={"X-Anima-Conversation": conversation}
    )


async def drained(journal: TurnJournal, timeout_s: float = 30) -> None:
    """Poll until the journal worker (which has no event to wait on) stored every turn."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(journal):
        assert asyncio.get_running_loop().time() < deadline, "the journal was not flushed"
        await asyncio.sleep(0.2)


async def test_postgres_outage_answers_journals_and_flushes_once(
    postgres: tuple[EmbeddedPostgres, str],
    stub_url: str,
    stub: StubState,
    counter: TokenCounter,
    tmp_path: Path,
) -> None:
    server, url = postgres
    engine = make_engine(url, pool_size=2)
    sessions = make_sessionmaker(engine)
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(
        backends=backends, models=routes, memory=MemorySettings(enabled=True), retries=0, health_timeout_s=1
    )
    journal = TurnJournal.open(tmp_path / "journal")
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=1), journal=journal)
    services = Services(
        Registry(build_backends(backends), routes), counter, memory=memory, users=Users(sessions)
    )
    app = create_app(settings, services)
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=URL, timeout=30)
            assert (await ask(client, "My name is Ada Lovelace.")).status_code == 200
            await memory.settle()

            await anyio.to_thread.run_sync(server.stop)  # Postgres goes away mid-service
            answered = await ask(client, "What is my name?")
            assert answered.status_code == 200 and answered.headers["x-anima-memory"] == "degraded"
            sent = [m["content"] for m in stub.last_chat()["messages"]]
            assert "My name is Ada Lovelace." in sent and sent[-1] == "What is my name?"  # the RAM window
            third = await ask(client, "And my favourite number is 7.")
            assert third.status_code == 200
            fresh = await ask(client, "Hello, new chat here.", conversation="outage-2")
            assert fresh.status_code == 200
            await memory.settle()
            assert len(journal) == 3
            health = (await client.get("/health")).json()
            assert health["status"] == "degraded" and health["database"]["status"] == "down"
            assert health["workers"]["journal"] == {"waiting": 3, "refused": 0}
            assert (await client.get("/health/ready")).status_code == 503  # memory is not up
            assert (await client.get("/health/live")).status_code == 200  # the process is fine
            lines = journal.path.read_text().splitlines()
            assert json.loads(lines[0])["turn"]["incoming"][-1][1] == "What is my name?"

            await anyio.to_thread.run_sync(server.start)  # back; the journal worker stores the turns
            await drained(journal)
            after = await ask(client, "Thanks!")
            assert after.headers["x-anima-memory"] == "ok"
            await memory.settle()
            assert (await client.get("/health")).json()["workers"]["journal"]["waiting"] == 0
            assert (await client.get("/health/ready")).status_code == 200
    finally:
        await engine.dispose()

    engine = make_engine(url, pool_size=1)
    async with make_sessionmaker(engine)() as s:
        rows = (
            await s.execute(
                select(ConversationRow.public_id, MessageRow.role, MessageRow.content)
                .join(MessageRow, MessageRow.conversation_id == ConversationRow.id)
                .order_by(MessageRow.id)
            )
        ).all()
    await engine.dispose()
    one = [(r, c) for p, r, c in rows if p == "outage-1"]
    assert one == [
        ("user", "My name is Ada Lovelace."),
        ("assistant", "Hello from the stub!"),
        ("user", "What is my name?"),
        ("assistant", "Hello from the stub!"),
        ("user", "And my favourite number is 7."),
        ("assistant", "Hello from the stub!"),
        ("user", "Thanks!"),
        ("assistant", "Hello from the stub!"),
    ]
    assert [(r, c) for p, r, c in rows if p == "outage-2"] == [
        ("user", "Hello, new chat here."),
        ("assistant", "Hello from the stub!"),
    ]


def test_a_dead_processs_journal_is_adopted(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    dead = TurnJournal(folder / "turns-999999999.jsonl")  # no process has this pid
    session = SessionKey(user_id=1, conversation="c")

    def entry(turn_id: str) -> JournalEntry:
        turn = TurnRecord(
            "reply", "complete", "m", [], {}, incoming=(Message("user", "hi"),), turn_id=turn_id
        )
        return JournalEntry(session, turn)

    assert dead.append(entry("t1")) and dead.append(entry("t2"))
    with (folder / "turns-999999999.jsonl").open("a") as f:
        f.write('{"turn_id": "t3", "sess')  # a write cut short by the crash
    mine = TurnJournal.open(folder)
    assert [e.turn_id for e in mine.entries()] == ["t1", "t2"]
    assert mine.entries()[0] == entry("t1")  # the typed entry survives its line format
    assert mine.path.name == f"turns-{os.getpid()}.jsonl" and not (folder / "turns-999999999.jsonl").exists()
    mine.remove({"t1"})
    assert [e.turn_id for e in TurnJournal(mine.path).entries()] == ["t2"]
    full = TurnJournal(folder / "small.jsonl", max_entries=1)
    assert full.append(entry("t4")) and not full.append(entry("t5")) and full.refused == 1
