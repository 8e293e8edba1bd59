"""Memory through Anima's HTTP API on the real Postgres: chat turns stored and recalled, the memory
API, the context inspector, isolation between keys, delete, and restart.

The app runs in this event loop (httpx's ASGITransport, lifespan entered by hand) so the test can
wait on the memory service directly; tests/memory/test_e2e.py runs the production path on uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.models import MessageEmbedding, MessageRow, SummaryRow, TurnContext
from memory.service import MemoryConfig, MemoryService
from memory.users import Users, create_key
from personas.prompt import MEMORY_PREAMBLE, SUMMARY_PREAMBLE
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.fakes import FakeEmbedder
from tests.openai_sdk import asgi_sdk
from tests.servers.openai_stub import StubState


def build(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, **memory: Any
) -> Any:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [
        RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192),
        RouteSettings(name="stub/small", backend="stub", model="echo", context_window=1024),
        RouteSettings(name="stub/die", backend="stub", model="die", context_window=8192),
    ]
    settings = make_settings(backends=backends, models=routes, memory=MemorySettings(enabled=True), retries=0)
    service = MemoryService(
        sessions, counter, memory.pop("embedder", FakeEmbedder()), MemoryConfig(deadline_s=5, **memory)
    )
    services = Services(
        Registry(build_backends(backends), routes), counter, memory=service, users=Users(sessions)
    )
    return create_app(settings, services), service


URL = "http://anima"


@asynccontextmanager
async def running(application: Any) -> AsyncIterator[str]:
    async with application.router.lifespan_context(application):
        TRANSPORTS[URL] = httpx.ASGITransport(app=application)
        yield URL


TRANSPORTS: dict[str, httpx.ASGITransport] = {}


@pytest.fixture
async def app(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> AsyncIterator[tuple[str, MemoryService]]:
    application, service = build(stub_url, sessions, counter)
    async with running(application) as url:
        yield url, service


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, value = await create_key(s, "api-test")
    return value


def sdk(url: str, key: str) -> openai.AsyncOpenAI:
    return asgi_sdk(TRANSPORTS[url], f"{url}/v1", key)


async def say(
    url: str, key: str, messages: Sequence[ChatCompletionMessageParam], **kwargs: Any
) -> Mapping[str, str]:
    raw = await sdk(url, key).chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "stub/echo"), messages=messages, **kwargs
    )
    raw.parse()
    headers: Mapping[str, str] = raw.headers  # `**kwargs` leaves `stream` open: mypy sees `raw` as Any
    return headers


def api(url: str, key: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.AsyncClient(transport=TRANSPORTS[url], base_url=f"{url}/v1", headers=headers)


async def test_chat_turns_are_stored_and_the_id_is_echoed(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    headers = await say(
        url, key, [{"role": "system", "content": "Be Bob."}, {"role": "user", "content": "Hi Bob"}]
    )
    conversation = headers["x-anima-conversation"]
    assert headers["x-anima-memory"] == "ok"
    await service.settle()
    async with api(url, key) as client:
        messages = (await client.get(f"/conversations/{conversation}/messages")).json()["data"]
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "Hi Bob", "complete"),
        ("assistant", "Hello from the stub!", "complete"),
    ]
    assert messages[1]["parent_id"] == messages[0]["id"]


async def test_explicit_id_header_beats_metadata_and_thin_clients_get_history(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    await say(
        url,
        key,
        [{"role": "user", "content": "I live in Lyon."}],
        extra_headers={"X-Anima-Conversation": "lyon"},
    )
    await service.settle()
    headers = await say(
        url,
        key,
        [{"role": "user", "content": "Where do I live?"}],
        metadata={"conversation_id": "elsewhere"},
        extra_headers={"X-Anima-Conversation": "lyon"},
    )
    assert headers["x-anima-conversation"] == "lyon"
    sent = [m["content"] for m in stub.last_chat()["messages"]]
    assert sent[:3] == ["I live in Lyon.", "Hello from the stub!", "Where do I live?"]
    await service.settle()
    by_metadata = await say(
        url, key, [{"role": "user", "content": "x"}], metadata={"conversation_id": "meta-id"}
    )
    assert by_metadata["x-anima-conversation"] == "meta-id"


async def test_long_chat_recalls_an_early_fact_after_history_is_cut(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    header = {"X-Anima-Conversation": "long-chat"}
    for turn in range(300):
        content = (
            "By the way, my cat is called Whiskerface."
            if turn == 3
            else f"Small talk number {turn} about weather."
        )
        await say(url, key, [{"role": "user", "content": content}], model="stub/small", extra_headers=header)
    await service.settle()
    assert service.embeddings is not None
    await service.embeddings.drain()
    await say(
        url,
        key,
        [{"role": "user", "content": "What is my cat called?"}],
        model="stub/small",
        extra_headers=header,
    )
    sent = stub.last_chat()["messages"]
    history = [m["content"] for m in sent if m["role"] in ("user", "assistant")]
    assert "By the way, my cat is called Whiskerface." not in history  # cut from the history window...
    memory_block = next(m["content"] for m in sent if m["content"].startswith(MEMORY_PREAMBLE))
    assert "Whiskerface" in memory_block  # ...but recalled, quoted as past conversation
    assert sent[-1] == {"role": "user", "content": "What is my cat called?"}
    await service.settle()
    async with api(url, key) as client:
        context = (await client.get("/conversations/long-chat/context")).json()
        first = (await client.get("/conversations/long-chat/context", params={"turn": 1})).json()
    assert context["turn"] == context["turns"] == 301
    assert context["tokens"]["cut_messages"] > 500 and context["tokens"]["volatile"] > 0
    assert (
        sum(v for k, v in context["tokens"].items() if k != "cut_messages") <= 1024 - 204
    )  # the reply reserve
    assert first["messages"] == [{"role": "user", "content": "Small talk number 0 about weather."}]


async def test_cut_history_is_summarised_and_the_summary_used(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    header = {"X-Anima-Conversation": "summarised"}
    for turn in range(60):
        await say(
            url,
            key,
            [{"role": "user", "content": f"Turn {turn}: " + "blah " * 20}],
            model="stub/small",
            extra_headers=header,
        )
    await service.settle()
    for _ in range(100):
        if service.summaries.written:
            break
        await asyncio.sleep(0.05)
    assert service.summaries.written >= 1
    await say(url, key, [{"role": "user", "content": "Go on."}], model="stub/small", extra_headers=header)
    summary = [
        m["content"] for m in stub.last_chat()["messages"] if m["content"].startswith(SUMMARY_PREAMBLE)
    ]
    assert summary and "Hello from the stub!" in summary[0]  # the stub wrote the summary
    summariser = [
        r for r in stub.requests if r["messages"][0]["content"].startswith("Summarise this excerpt")
    ]
    assert "Turn 0:" in summariser[0]["messages"][0]["content"]


async def test_memory_api_import_append_list_search(app: tuple[str, MemoryService], key: str) -> None:
    url, service = app
    body = {
        "id": "imported-1",
        "title": "Trip planning",
        "persona": "aria",
        "messages": [
            {"role": "user", "content": "We fly to Reykjavik on May 3rd.", "metadata": {"source": "mail"}},
            {
                "role": "assistant",
                "content": "Noted: Reykjavik, May 3rd.",
                "created_at": "2026-01-02T03:04:05Z",
            },
        ],
    }
    async with api(url, key) as client:
        created = await client.post("/conversations", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["message_count"] == 2 and created.json()["persona"] == "aria"
        assert (await client.post("/conversations", json=body)).status_code == 409
        appended = await client.post(
            "/conversations/imported-1/messages",
            json={"messages": [{"role": "user", "content": "Book a hotel."}]},
        )
        assert appended.status_code == 201 and appended.json()["message_count"] == 3
        assert 0 <= (await client.get("/conversations/imported-1")).json()["pending_embeddings"] <= 3
        assert service.embeddings is not None
        await service.embeddings.drain()  # rows the app's own worker claimed finish there: poll for them
        for _ in range(600):
            if (await client.get("/conversations/imported-1")).json()["pending_embeddings"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/conversations/imported-1")).json()["pending_embeddings"] == 0
        listed = (await client.get("/conversations", params={"limit": 1})).json()
        assert listed["data"][0]["id"] == "imported-1" and listed["has_more"] in (True, False)
        page = (
            await client.get("/conversations/imported-1/messages", params={"limit": 2, "offset": 0})
        ).json()
        assert page["has_more"] is True and page["data"][0]["metadata"] == {"source": "mail"}
        assert page["data"][1]["created_at"].startswith("2026-01-02T03:04:05")
        hits = (
            await client.post("/memory/search", json={"query": "when do we fly to Reykjavik", "k": 2})
        ).json()
        assert hits["data"][0]["content"] == "We fly to Reykjavik on May 3rd."
        assert set(hits["data"][0]) >= {
            "message_id",
            "conversation_id",
            "role",
            "content",
            "score",
            "created_at",
            "metadata",
        }
        bad = await client.post("/conversations", json={"messages": []})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        missing = await client.get("/conversations/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_a_second_key_never_sees_recalls_or_deletes_the_first_keys_rows(
    app: tuple[str, MemoryService], key: str, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    url, service = app
    async with sessions.begin() as s:
        _, other = await create_key(s, "intruder")
    await say(
        url,
        key,
        [{"role": "user", "content": "My bank PIN is 4321."}],
        extra_headers={"X-Anima-Conversation": "private"},
    )
    await service.settle()
    assert service.embeddings is not None
    await service.embeddings.drain()
    async with api(url, other) as client:
        assert (await client.get("/conversations/private")).status_code == 404
        assert (await client.delete("/conversations/private")).status_code == 404
        assert (await client.get("/conversations")).json()["data"] == []
        hits = (await client.post("/memory/search", json={"query": "bank PIN", "scope": "user"})).json()[
            "data"
        ]
        assert hits == []
    await say(
        url,
        other,
        [{"role": "user", "content": "What is my bank PIN?"}],
        extra_headers={"X-Anima-Conversation": "private"},
    )
    assert "4321" not in str(stub.last_chat()["messages"])
    async with api(url, key) as client:
        assert (await client.get("/conversations/private")).status_code == 200
    async with api(url, "anima-not-a-key") as client:
        assert (await client.get("/conversations")).status_code == 401


async def test_delete_leaves_nothing_behind(
    app: tuple[str, MemoryService], key: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    url, service = app
    for i in range(3):
        await say(
            url,
            key,
            [{"role": "user", "content": f"note {i}"}],
            extra_headers={"X-Anima-Conversation": "doomed"},
        )
        await service.settle()
    assert service.embeddings is not None
    await service.embeddings.drain()
    async with sessions() as s:
        conversation_id = await s.scalar(text("SELECT id FROM conversation WHERE public_id = 'doomed'"))
    async with api(url, key) as client:
        deleted = await client.delete("/conversations/doomed")
        assert deleted.json() == {"id": "doomed", "object": "conversation.deleted", "deleted": True}
        assert (await client.get("/conversations/doomed")).status_code == 404
    async with sessions() as s:
        for table in (MessageRow, MessageEmbedding, SummaryRow, TurnContext):
            left = await s.scalar(select(func.count()).where(table.conversation_id == conversation_id))
            assert left == 0, table.__tablename__
    assert service.window.get(conversation_id, None) is None


async def test_restart_keeps_everything_and_the_embedding_worker_catches_up(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, key: str
) -> None:
    first, _ = build(stub_url, sessions, counter, embedder=None)  # no embedder: nothing gets embedded
    async with running(first) as url, api(url, key) as client:
        body = {"id": "restart", "messages": [{"role": "user", "content": f"fact {i}"} for i in range(40)]}
        assert (await client.post("/conversations", json=body)).status_code == 201
        assert (await client.get("/conversations/restart")).json()["pending_embeddings"] == 40
    second, _ = build(stub_url, sessions, counter)
    async with running(second) as url, api(url, key) as client:
        for _ in range(100):
            info = (await client.get("/conversations/restart")).json()
            if info["pending_embeddings"] == 0:
                break
            await asyncio.sleep(0.05)
    assert info["message_count"] == 40 and info["pending_embeddings"] == 0


async def test_a_backend_dying_mid_stream_leaves_a_marked_partial_turn(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    body = {
        "model": "stub/die",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a story."}],
    }
    async with api(url, key) as client, client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        conversation = response.headers["x-anima-conversation"]
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert '"error"' in lines[-1] and "broke off" in lines[-1]  # reported in-band, then the stream ends
    await service.settle()
    async with api(url, key) as client:
        stored = (await client.get(f"/conversations/{conversation}/messages")).json()["data"]
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "Tell me a story.", "complete"),
        ("assistant", "Hello from the", "partial"),
    ]
