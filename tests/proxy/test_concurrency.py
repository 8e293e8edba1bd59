"""Concurrency on the production path: `anima serve --workers 2` (two processes, one Postgres), 50
concurrent requests on one conversation and 50 across conversations. Every turn is stored exactly
once, each reply under its own user message, and no answer reaches another request (the `mirror`
upstream repeats each request's own message back)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from memory.models import ConversationRow, MessageRow
from memory.users import create_key
from tests.conftest import closed_port
from tests.memory.test_e2e import data_dir_with_models, models_cache  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent.parent
N = 50


@pytest.fixture(scope="module")
def two_workers(
    pg_url: str,
    stub_url: str,
    models_cache: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("workers")
    port = closed_port()
    route = [{"name": "stub/mirror", "backend": "stub", "model": "mirror", "context_window": 8192}]
    settings = {
        "CONFIG": os.devnull,
        "DATABASE_URL": pg_url,
        "DATA_DIR": str(data_dir_with_models(tmp / "data", models_cache)),
        "MEMORY__ENABLED": "true",
        "EMOTION__ENABLED": "false",
        "PERSONAS__EXAMPLES": "false",
        "BACKENDS__STUB__KIND": "openai",
        "BACKENDS__STUB__BASE_URL": f"{stub_url}/v1",
        "MODELS": json.dumps(route),
        "SSE_PING_S": "0",
        "LOG_LEVEL": "warning",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMA_")}
    env |= {f"ANIMA_{k}": v for k, v in settings.items()}
    command = [sys.executable, "-m", "proxy", "serve", "--workers", "2", "--port", str(port)]
    process = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:  # both workers up and answering
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else "exited"
            try:
                pids.add(httpx.get(f"{url}/health", timeout=2).json()["workers"]["pid"])
            except httpx.HTTPError:
                time.sleep(0.3)
        assert len(pids) == 2, "the two workers did not both answer"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, value = await create_key(s, "concurrency")
    return value


async def fire(
    url: str, key: str, bodies: list[tuple[dict[str, object], dict[str, str]]]
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=0)  # new connections: both workers
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        auth = {"Authorization": f"Bearer {key}"}
        return await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=body, headers=auth | headers)
                for body, headers in bodies
            )
        )


def text_of(response: httpx.Response) -> str:
    """The answer of a streamed (SSE) or plain completion."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return str(response.json()["choices"][0]["message"]["content"])
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def stored(
    sessions: async_sessionmaker[AsyncSession], prefix: str
) -> list[tuple[str, str, str, str | None]]:
    """(conversation, role, content, parent's content) of every message in conversations `prefix*`."""
    parent = aliased(MessageRow)
    query = (
        select(ConversationRow.public_id, MessageRow.role, MessageRow.content, parent.content)
        .join(MessageRow, MessageRow.conversation_id == ConversationRow.id)
        .outerjoin(parent, parent.id == MessageRow.parent_id)
        .where(ConversationRow.public_id.startswith(prefix))
    )
    async with sessions() as s:
        return [tuple(row) for row in (await s.execute(query)).all()]  # type: ignore[misc]


async def settled(
    sessions: async_sessionmaker[AsyncSession], prefix: str, expected: int
) -> list[tuple[str, str, str, str | None]]:
    """Stores run right after each reply, in the background: wait until they have all landed."""
    rows: list[tuple[str, str, str, str | None]] = []
    for _ in range(100):
        rows = await stored(sessions, prefix)
        if len(rows) >= expected:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # and nothing more arrives
    return await stored(sessions, prefix)


async def test_fifty_concurrent_turns_on_one_conversation(
    two_workers: str, key: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    bodies: list[tuple[dict[str, object], dict[str, str]]] = [
        (
            {"model": "stub/mirror", "messages": [{"role": "user", "content": f"one-{i}"}]},
            {"X-Anima-Conversation": "conc-one"},
        )
        for i in range(N)
    ]
    responses = await fire(two_workers, key, bodies)
    assert [r.status_code for r in responses] == [200] * N
    answers = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert answers == [f"You said: one-{i}" for i in range(N)]  # no cross-talk
    rows = await settled(sessions, "conc-one", 2 * N)
    users = sorted(c for _, role, c, _ in rows if role == "user")
    replies = [(c, p) for _, role, c, p in rows if role == "assistant"]
    assert users == sorted(f"one-{i}" for i in range(N))  # each turn once, none lost
    assert len(replies) == N and all(c == f"You said: {p}" for c, p in replies)  # under its own message


async def test_fifty_concurrent_conversations(
    two_workers: str, key: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    bodies = [
        (
            {
                "model": "stub/mirror",
                "stream": i % 2 == 0,
                "messages": [
                    {"role": "system", "content": f"You are helper number {i}."},
                    {"role": "user", "content": f"many-{i}: hello"},
                ],
            },
            {"X-Anima-Conversation": f"conc-many-{i}"},
        )
        for i in range(N)
    ]
    responses = await fire(two_workers, key, bodies)
    assert [r.status_code for r in responses] == [200] * N
    assert [text_of(r) for r in responses] == [f"You said: many-{i}: hello" for i in range(N)]
    rows = await settled(sessions, "conc-many-", 2 * N)
    by_conversation: dict[str, list[tuple[str, str]]] = {}
    for conversation, role, content, _ in rows:
        by_conversation.setdefault(conversation, []).append((role, content))
    assert len(by_conversation) == N
    for i in range(N):
        assert sorted(by_conversation[f"conc-many-{i}"]) == [
            ("assistant", f"You said: many-{i}: hello"),
            ("user", f"many-{i}: hello"),
        ]
