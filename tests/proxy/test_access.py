"""Access on the real Postgres, over HTTP with the real OpenAI SDK: keys (CLI and admin API), isolation
between keys, open mode only on loopback, rate limits, size limits, CORS, export and erasure, and
logs without message content."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.db import upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.models import AppUser, ConversationRow, MessageRow, PersonaRef
from memory.personas import PersonaRecords
from memory.service import MemoryConfig, MemoryService
from memory.users import Users, create_key
from personas.store import PersonaStore
from proxy.backends.registry import Registry, build_backends
from proxy.cli import main
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, LimitSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.fakes import FakeEmbedder
from tests.openai_sdk import asgi_sdk

URL = "http://anima"
HI = [{"role": "user", "content": "Hi there"}]


def build(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, **values: Any
) -> Any:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(
        backends=backends, models=routes, memory=MemorySettings(enabled=True), retries=0, **values
    )
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=5))
    services = Services(
        Registry(build_backends(backends), routes),
        counter,
        memory=memory,
        users=Users(sessions, ttl_s=0),
        personas=PersonaStore(None, examples=False, records=PersonaRecords(sessions), cache_ttl_s=0),
    )
    return create_app(settings, services), memory


@asynccontextmanager
async def running(application: Any) -> AsyncIterator[httpx.ASGITransport]:
    async with application.router.lifespan_context(application):
        yield httpx.ASGITransport(app=application)


@pytest.fixture
async def app(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> AsyncIterator[tuple[httpx.ASGITransport, MemoryService]]:
    application, memory = build(stub_url, sessions, counter)
    async with running(application) as transport:
        yield transport, memory


async def new_key(sessions: async_sessionmaker[AsyncSession], name: str, **kwargs: Any) -> tuple[int, str]:
    async with sessions.begin() as s:
        return await create_key(s, name, **kwargs)


def client(transport: httpx.ASGITransport, key: str | None = None, **headers: str) -> httpx.AsyncClient:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=transport, base_url=f"{URL}/v1", headers=auth | headers)


async def say(
    transport: httpx.ASGITransport, key: str, messages: list[ChatCompletionMessageParam]
) -> Mapping[str, str]:
    sdk = asgi_sdk(transport, f"{URL}/v1", key)
    raw = await sdk.chat.completions.with_raw_response.create(model="stub/echo", messages=messages)
    raw.parse()
    return raw.headers


def is_error(response: httpx.Response, status: int, code: str | None = None) -> bool:
    body = response.json()
    ok = response.status_code == status and set(body["error"]) == {"message", "type", "param", "code"}
    return ok and (code is None or body["error"]["code"] == code)


def test_keys_from_the_cli_are_shown_once_and_stored_as_hashes(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANIMA_DATABASE_URL", pg_url)
    main(["keys", "create", "cli-alice", "--rpm", "30"])
    key = capsys.readouterr().out.strip()
    assert key.startswith("anima-") and len(key) > 40
    main(["keys", "list"])
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if "\tcli-alice\t" in line)
    assert key not in listing and key[:12] in row and "\t30\t" in row
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(
                select(AppUser.key_hash).where(AppUser.name == "cli-alice")
            ).scalar_one()
    finally:
        engine.dispose()
    assert stored is not None
    assert stored != key and len(stored) == 64 and stored == hashlib.sha256(key.encode()).hexdigest()
    main(["keys", "revoke", "cli-alice"])
    assert "revoked 1 key" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no active key"):
        main(["keys", "revoke", "cli-alice"])


async def test_keys_isolate_users(
    app: tuple[httpx.ASGITransport, MemoryService], sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport, memory = app
    _, alice = await new_key(sessions, "alice")
    _, bob = await new_key(sessions, "bob")
    secret: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "My locker code is 4-8-15, keep it secret."}
    ]
    conversation = (await say(transport, alice, secret))["x-anima-conversation"]
    await memory.settle()
    async with client(transport) as nobody, client(transport, "anima-wrong") as wrong:
        assert is_error(await nobody.get("/conversations"), 401, "invalid_api_key")
        assert is_error(
            await wrong.post("/chat/completions", json={"model": "stub/echo", "messages": HI}), 401
        )
    async with client(transport, **{"x-api-key": bob}) as b:  # the x-api-key header works as well
        assert is_error(await b.get(f"/conversations/{conversation}"), 404)
        assert (await b.get("/conversations")).json()["data"] == []
        found = await b.post("/memory/search", json={"query": "locker code"})
        assert found.status_code == 200 and found.json()["data"] == []
    again = await say(transport, bob, secret)  # the same words from bob are bob's own new chat
    assert again["x-anima-conversation"] != conversation
    async with client(transport) as anyone:
        assert (await anyone.get(f"{URL}/health")).status_code in (200, 503)  # no key needed


async def test_admin_routes_need_an_admin_key(
    app: tuple[httpx.ASGITransport, MemoryService], sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport, _ = app
    _, admin = await new_key(sessions, "root", admin=True)
    _, plain = await new_key(sessions, "carol")
    async with client(transport, plain) as c:
        assert is_error(await c.get("/admin/keys"), 403, "permission_denied")
        assert is_error(await c.post("/admin/keys", json={"name": "x"}), 403)
    async with client(transport, admin) as a:
        made = (await a.post("/admin/keys", json={"name": "dave", "requests_per_minute": 5})).json()
        assert made["key"].startswith("anima-")
        listed = {k["name"]: k for k in (await a.get("/admin/keys")).json()["data"]}
        assert listed["dave"]["requests_per_minute"] == 5 and "key" not in listed["dave"]
        async with client(transport, made["key"]) as d:
            assert (await d.get("/users/me")).json()["name"] == "dave"
        assert (await a.delete(f"/admin/keys/{made['id']}")).json()["revoked"] is True
        async with client(transport, made["key"]) as d:
            assert is_error(await d.get("/users/me"), 401)
        assert is_error(await a.delete(f"/admin/keys/{made['id']}"), 404)


async def test_rate_limits_answer_429_with_retry_after(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    application, _ = build(stub_url, sessions, counter, limits=LimitSettings(tokens_per_minute=60))
    _, limited = await new_key(sessions, "limited", requests_per_minute=2)
    _, wordy = await new_key(sessions, "wordy")
    async with running(application) as transport:
        async with client(transport, limited) as c:
            assert (await c.get("/models")).status_code == 200
            assert (await c.get("/models")).status_code == 200
            refused = await c.get("/models")
        assert (
            is_error(refused, 429, "rate_limit_exceeded")
            and refused.json()["error"]["type"] == "rate_limit_error"
        )
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        long = [{"role": "user", "content": "word " * 200}]  # ~200 tokens, over 60 tokens per minute
        async with client(transport, wordy) as w:
            first = await w.post("/chat/completions", json={"model": "stub/echo", "messages": HI})
            assert first.status_code == 200
            over = await w.post("/chat/completions", json={"model": "stub/echo", "messages": long})
            assert is_error(over, 429) and "tokens per minute" in over.json()["error"]["message"]


async def test_the_token_limit_counts_tool_calls_definitions_and_results(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    """A request whose tokens are mostly tool traffic (an assistant's call arguments, the tool
    definitions, a tool's result) is estimated as the prompt budget counts it, not by its text alone:
    after a short request, each of these is over what is left of 60 tokens per minute, though the
    first two hold a few words of text."""
    application, _ = build(stub_url, sessions, counter, limits=LimitSettings(tokens_per_minute=60))
    bulky = json.dumps({"city": "Lisbon " * 100})  # ~200 tokens of arguments or of a result
    asked = {"role": "user", "content": "Weather?"}
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": bulky}}
    calling = {"role": "assistant", "content": None, "tool_calls": [call]}
    empty_call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [call | {"function": {"name": "weather"}}],
    }
    spec = {"name": "weather", "description": "Weather. " * 200, "parameters": {"type": "object"}}
    bodies: dict[str, dict[str, Any]] = {
        "arguments": {"messages": [asked, calling]},
        "definitions": {"messages": [asked], "tools": [{"type": "function", "function": spec}]},
        "results": {
            "messages": [asked, empty_call, {"role": "tool", "tool_call_id": "call_1", "content": bulky}]
        },
    }
    async with running(application) as transport:
        for case, body in bodies.items():
            _, key = await new_key(sessions, case)
            async with client(transport, key) as c:
                first = await c.post("/chat/completions", json={"model": "stub/echo", "messages": HI})
                assert first.status_code == 200  # a full bucket lets any one request through
                over = await c.post("/chat/completions", json={"model": "stub/echo"} | body)
            assert is_error(over, 429, "rate_limit_exceeded"), (case, over.status_code, over.text)


async def test_the_chat_route_checks_the_key_then_takes_one_request_each_way(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    """The chat route's short way (proxy/routes/chat.py `ChatRoute`: a valid body) and FastAPI's (an
    invalid one) run the same dependencies: the key is checked, then one request is taken."""
    application, _ = build(stub_url, sessions, counter)
    _, key = await new_key(sessions, "twice", requests_per_minute=2)
    chat = {"model": "stub/echo", "messages": HI}
    async with running(application) as transport:
        async with client(transport) as nobody, client(transport, "anima-wrong") as wrong:
            assert is_error(await nobody.post("/chat/completions", json=chat), 401)
            assert is_error(await wrong.post("/chat/completions", json=chat), 401)
            assert is_error(await wrong.post("/chat/completions", json={"model": "stub/echo"}), 401)
        async with client(transport, key) as c:
            invalid = await c.post("/chat/completions", json={"model": "stub/echo", "messages": []})
            assert is_error(invalid, 400) and invalid.json()["error"]["param"] == "messages"
            assert (await c.post("/chat/completions", json=chat)).status_code == 200
            assert is_error(await c.post("/chat/completions", json=chat), 429, "rate_limit_exceeded")


async def test_size_limits_answer_413_and_store_nothing(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    limits = LimitSettings(max_body_bytes=4096, max_message_chars=1000, max_messages=5)
    application, memory = build(stub_url, sessions, counter, limits=limits)
    user_id, key = await new_key(sessions, "sizes")
    async with running(application) as transport, client(transport, key) as c:
        huge = await c.post(
            "/chat/completions",
            json={"model": "stub/echo", "messages": [{"role": "user", "content": "x" * 5000}]},
        )
        assert is_error(huge, 413, "request_too_large")
        streamed = await c.post(
            "/chat/completions",
            content=(
                json.dumps({"model": "stub/echo", "messages": HI})[:-1] + ' ,"pad": "' + "y" * 5000 + '"}'
            ).encode(),
            headers={"content-type": "application/json", "transfer-encoding": "chunked"},
        )
        assert streamed.status_code == 413
        long = await c.post(
            "/chat/completions",
            json={"model": "stub/echo", "messages": [{"role": "user", "content": "z" * 1500}]},
        )
        assert is_error(long, 413) and long.json()["error"]["param"] == "messages.0.content"
        many = await c.post("/chat/completions", json={"model": "stub/echo", "messages": HI * 6})
        assert is_error(many, 413) and many.json()["error"]["param"] == "messages"
        await memory.settle()
    async with sessions() as s:
        assert (
            await s.scalar(select(func.count()).select_from(MessageRow).where(MessageRow.user_id == user_id))
            == 0
        )


async def test_cors_is_closed_unless_configured(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    preflight = {"Origin": "https://chat.example", "Access-Control-Request-Method": "POST"}
    closed, _ = build(stub_url, sessions, counter)
    async with running(closed) as transport, client(transport) as c:
        response = await c.options("/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    opened, _ = build(stub_url, sessions, counter, cors_origins=["https://chat.example"])
    async with running(opened) as transport, client(transport) as c:
        allowed = await c.options("/chat/completions", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
        other = await c.options("/chat/completions", headers=preflight | {"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_export_then_erase_everything_of_a_key(
    app: tuple[httpx.ASGITransport, MemoryService], sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport, memory = app
    erin_id, erin = await new_key(sessions, "erin")
    frank_id, frank = await new_key(sessions, "frank")
    conversation = (
        await say(transport, erin, [{"role": "user", "content": "I grow tomatoes on my balcony."}])
    )["x-anima-conversation"]
    await say(transport, frank, [{"role": "user", "content": "Frank's own chat."}])
    async with client(transport, erin) as c:
        await c.put("/personas/gardener", json={"description": "Knows plants."})
    await memory.settle()
    async with client(transport, erin) as c:
        exported = await c.get("/users/me/export")
        assert exported.status_code == 200 and exported.headers["content-type"] == "application/json"
        data = exported.json()
        assert data["user"]["name"] == "erin"
        assert [c["id"] for c in data["conversations"]] == [conversation]
        contents = [m["content"] for m in data["conversations"][0]["messages"]]
        assert contents == ["I grow tomatoes on my balcony.", "Hello from the stub!"]
        assert (
            data["personas"][0]["name"] == "gardener" and data["personas"][0]["versions"][0]["version"] == 1
        )
        assert "Frank" not in exported.text
        erased = await c.delete("/users/me")
        assert erased.json()["deleted"] is True
        assert is_error(await c.get("/users/me"), 401)  # the key went with its data
    async with sessions() as s:
        for table in (ConversationRow, MessageRow, PersonaRef):
            count = select(func.count()).select_from(table).where(table.user_id == erin_id)
            assert await s.scalar(count) == 0, table.__tablename__
        assert (
            await s.scalar(select(func.count()).select_from(MessageRow).where(MessageRow.user_id == frank_id))
            == 2
        )
        assert (
            await s.scalar(
                text(
                    "SELECT count(*) FROM persona_version v JOIN persona p ON p.id = v.persona_id"
                    " WHERE p.user_id = :u"
                ),
                {"u": erin_id},
            )
            == 0
        )


async def test_logs_carry_no_message_content_unless_enabled(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, key = await new_key(sessions, "quiet")
    secret = "my passport number is QX-7781-SECRET"
    caplog.set_level(logging.DEBUG)
    application, memory = build(stub_url, sessions, counter)
    async with running(application) as transport:
        await say(transport, key, [{"role": "user", "content": secret}])
        await memory.settle()
    assert "prompt of" in caplog.text and "QX-7781" not in caplog.text
    caplog.clear()
    application, memory = build(stub_url, sessions, counter, log_content=True)
    async with running(application) as transport:
        await say(transport, key, [{"role": "user", "content": secret + " again"}])
        await memory.settle()
    assert "QX-7781" in caplog.text


async def test_open_mode_binds_loopback_only_unless_forced(tmp_path: Path, stub_url: str) -> None:
    server = EmbeddedPostgres(tmp_path / "fresh")
    url = await anyio.to_thread.run_sync(server.start)
    try:
        await anyio.to_thread.run_sync(upgrade_schema, url)
        backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
        common: dict[str, Any] = {"backends": backends, "data_dir": tmp_path, "database_url": url}
        exposed = create_app(make_settings(host="0.0.0.0", memory=MemorySettings(enabled=True), **common))
        with pytest.raises(RuntimeError, match="without API keys"):
            async with exposed.router.lifespan_context(exposed):
                pass
        no_memory = create_app(make_settings(host="192.168.1.5", **common))
        with pytest.raises(RuntimeError, match="anima keys create"):
            async with no_memory.router.lifespan_context(no_memory):
                pass
        forced = create_app(make_settings(host="0.0.0.0", allow_open=True, **common))
        async with forced.router.lifespan_context(forced):
            pass
        local = create_app(make_settings(host="127.0.0.1", **common))
        async with local.router.lifespan_context(local):
            pass
    finally:
        await anyio.to_thread.run_sync(server.stop)
