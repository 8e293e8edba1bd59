"""The production path end to end, on uvicorn: settings → lifespan → Postgres → ONNX embedder → workers.

- `make serve`'s default: nothing configured, so an embedded Postgres starts in a fresh data folder,
  is migrated, and the embedded SmolLM2 model answers; turns are stored and embedded.
- A configured ANIMA_DATABASE_URL: real MiniLM recall finds a fact by meaning, not by shared words.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import model_cache
from memory.db import DatabaseError, make_engine
from memory.embedded_pg import EmbeddedPostgres
from memory.embedder import Embedder, graph_name
from memory.users import create_key
from personas.prompt import MEMORY_PREAMBLE
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, EmotionSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.servers.openai_stub import StubState
from tests.servers.runner import serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def models_cache(embedder: Embedder) -> Path:
    """The shared model cache (memory/model_cache.py) every data folder's start-up reads from."""
    found = model_cache.find(graph_name())
    assert found is not None
    return found.parent


def data_dir_with_models(tmp: Path, models_cache: Path, emotion_cache: Path | None = None) -> Path:
    """A fresh data folder: the graphs come from the shared cache, nothing is exported or copied."""
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def poll(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_make_serve_default_stores_embeds_and_recognises(
    tmp_path: Path, models_cache: Path, emotion_cache: Path
) -> None:
    settings = make_settings(
        memory=MemorySettings(),
        emotion=EmotionSettings(),
        data_dir=data_dir_with_models(tmp_path, models_cache, emotion_cache),
    )
    assert settings.database_url is None and settings.models[0].name == "local/smollm2"
    with serving(create_app(settings)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages: list[Any] = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi!"},
        ]
        raw = client.chat.completions.with_raw_response.create(
            model="local/smollm2", messages=messages, max_tokens=12
        )
        reply = raw.parse().choices[0].message.content or ""
        conversation = raw.headers["x-anima-conversation"]
        assert reply and raw.headers["x-anima-memory"] == "ok"
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again?"}]
        stream = client.chat.completions.with_raw_response.create(
            model="local/smollm2", messages=messages, max_tokens=8, stream=True
        )
        assert stream.headers["x-anima-conversation"] == conversation  # recognised from its messages
        assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)

        def embedded() -> dict[str, Any] | None:
            info = httpx.get(f"{url}/v1/conversations/{conversation}").json()
            return info if info["message_count"] == 4 and info["pending_embeddings"] == 0 else None

        assert poll(embedded), httpx.get(f"{url}/v1/conversations/{conversation}").json()
        stored = httpx.get(f"{url}/v1/conversations/{conversation}/messages").json()["data"]
        assert all(m["importance"] is not None for m in stored)  # replies annotated by the worker
        assert [m["emotion"] is not None for m in stored] == [True, False, True, False]  # user turns
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["database"]["status"] == "ok"
    assert (tmp_path / "postgres" / "PG_VERSION").exists()


@pytest.fixture
def stub_anima(pg_url: str, stub_url: str, tmp_path: Path, models_cache: Path) -> Iterator[str]:
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")},
        models=[RouteSettings(name="stub/echo", backend="stub", model="echo")],
        memory=MemorySettings(recall_scope="user"),
        database_url=pg_url,
        data_dir=data_dir_with_models(tmp_path, models_cache),
    )
    with serving(create_app(settings)) as url:
        yield url


async def test_configured_database_recalls_by_meaning(
    stub_anima: str, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    async with sessions.begin() as s:
        _, key = await create_key(s, "e2e")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=f"{stub_anima}/v1", headers=headers) as client:
        facts = [
            "My dog Rex goes crazy for tennis balls.",
            "I work night shifts as a nurse.",
            "Yesterday I repainted the kitchen yellow.",
        ]
        body = {"messages": [{"role": "user", "content": f} for f in facts]}
        assert (await client.post("/conversations", json=body)).status_code == 201
        for _ in range(200):
            listed = (await client.get("/conversations")).json()["data"]
            if listed and listed[0]["pending_embeddings"] == 0:
                break
            await asyncio.sleep(0.05)
        chat = {
            "model": "stub/echo",
            "messages": [{"role": "user", "content": "Which animal lives with me?"}],
        }
        assert (await client.post("/chat/completions", json=chat)).status_code == 200
    block = next(
        m["content"] for m in stub.last_chat()["messages"] if m["content"].startswith(MEMORY_PREAMBLE)
    )
    lines = block.splitlines()[1:]
    assert "Rex" in lines[0]  # ranked first by meaning: no word of the question occurs in it


async def test_configured_database_without_schema_fails_clearly(pg_url: str, tmp_path: Path) -> None:
    engine = make_engine(pg_url, pool_size=1, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        from sqlalchemy import text

        await conn.execute(text("DROP DATABASE IF EXISTS unmigrated"))
        await conn.execute(text("CREATE DATABASE unmigrated"))
    await engine.dispose()
    settings = make_settings(
        memory=MemorySettings(),
        backends={"stub": BackendSettings(kind="openai")},
        database_url=pg_url.replace("/anima?", "/unmigrated?"),
        data_dir=tmp_path,
    )
    app = create_app(settings)
    with pytest.raises(DatabaseError, match="anima db upgrade"):
        async with app.router.lifespan_context(app):
            pass


def test_embedded_postgres_is_reused_and_stopped(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path)
    url = server.start()
    assert "/anima?" in url
    server.stop()
    again = EmbeddedPostgres(tmp_path)
    assert again.start() == url  # same data folder, same database, kept across restarts
    again.stop()


async def test_a_stream_cut_by_the_client_is_stored_as_partial(
    stub_anima: str, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    async with sessions.begin() as s:
        _, key = await create_key(s, "hang-up")
    headers = {"Authorization": f"Bearer {key}", "X-Anima-Conversation": "cut-short"}
    body = {
        "model": "stub/slow",
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=f"{stub_anima}/v1", headers=headers) as client:
        async with client.stream("POST", "/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if "tick2" in line:
                    break
        for _ in range(100):
            stored = (await client.get("/conversations/cut-short/messages")).json().get("data", [])
            if len(stored) == 2:
                break
            await asyncio.sleep(0.05)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "partial")]
    assert stored[1]["content"].startswith("tick0 tick1 tick2")
    assert stub.outcomes == ["cancelled"]
