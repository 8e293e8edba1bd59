"""One set of size limits for every write route, 413 for a body too big however it is sent, and strict
types where a wrong type can only be a client bug (issue 12, items 11-13)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.models import MessageRow
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, LimitSettings, RouteSettings
from tests.conftest import make_settings
from tests.proxy.test_access import build, client, is_error, new_key, running
from tests.servers.runner import serving

HI = [{"role": "user", "content": "Hi there"}]
LIMITS = LimitSettings(max_body_bytes=4096, max_message_chars=1000, max_messages=5)


async def test_a_chunked_body_over_the_limit_is_413_on_a_real_server(stub_url: str) -> None:
    """No Content-Length (a generator body goes out chunked): still 413, not FastAPI's 400."""
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")},
        models=[RouteSettings(name="stub/echo", backend="stub", model="echo")],
        limits=LIMITS,
        sse_ping_s=0,
    )
    head = json.dumps({"model": "stub/echo", "messages": HI})[:-1].encode()

    async def chunked(pad: int) -> AsyncIterator[bytes]:
        yield head + b', "pad": "'
        for _ in range(pad):
            yield b"y" * 1000
        yield b'"}'

    with serving(create_app(settings)) as url:
        json_type = {"content-type": "application/json"}
        async with httpx.AsyncClient(base_url=f"{url}/v1", timeout=30, headers=json_type) as http:
            big = await http.post("/chat/completions", content=chunked(8))
            small = await http.post("/chat/completions", content=chunked(1))
    assert "content-length" not in big.request.headers
    assert is_error(big, 413, "request_too_large"), big.text
    assert small.status_code == 200, small.text  # a chunked body under the limit is read as usual


async def test_import_and_append_share_the_chat_size_limits(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> None:
    application, _ = build(stub_url, sessions, counter, limits=LIMITS)
    user_id, key = await new_key(sessions, "import-sizes")
    long = [{"role": "user", "content": "z" * 1001}]
    async with running(application) as transport, client(transport, key) as c:
        created = await c.post("/conversations", json={"id": "sized", "messages": long})
        assert is_error(created, 413, "request_too_large") and created.json()["error"]["param"] == (
            "messages.0.content"
        )
        many = await c.post("/conversations", json={"messages": HI * 6})
        assert is_error(many, 413) and many.json()["error"]["param"] == "messages"
        ok = await c.post("/conversations", json={"id": "sized", "messages": HI})
        assert ok.status_code == 201
        appended = await c.post("/conversations/sized/messages", json={"messages": long})
        assert is_error(appended, 413) and appended.json()["error"]["param"] == "messages.0.content"
        more = await c.post("/conversations/sized/messages", json={"messages": HI * 6})
        assert is_error(more, 413)
    async with sessions() as s:
        stored = await s.scalar(
            select(func.count()).select_from(MessageRow).where(MessageRow.user_id == user_id)
        )
    assert stored == 1


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"metadata": {"conversation_id": {"a": 1}}}, "metadata.conversation_id"),
        ({"metadata": {"conversation_id": ["x"]}}, "metadata.conversation_id"),
        ({"metadata": {"conversation_id": True}}, "metadata.conversation_id"),
    ],
)
async def test_wrong_types_that_only_a_client_bug_sends_are_400(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    change: dict[str, Any],
    param: str,
) -> None:
    application, memory = build(stub_url, sessions, counter)
    _, key = await new_key(sessions, "strict")
    async with running(application) as transport, client(transport, key) as c:
        resp = await c.post("/chat/completions", json={"model": "stub/echo", "messages": HI} | change)
        assert is_error(resp, 400), resp.text
        assert resp.json()["error"]["param"] == param
        fine = await c.post(
            "/chat/completions",
            json={"model": "stub/echo", "messages": HI, "metadata": {"conversation_id": 42}},
        )
        assert fine.status_code == 200 and fine.headers["x-anima-conversation"] == "42"
        await memory.settle()
