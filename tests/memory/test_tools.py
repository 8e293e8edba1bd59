"""Memory on, a tool-using and an image-sending client (official SDK → Anima → OpenAI-compatible stub,
real Postgres): tool calls and results are stored once, recalled in order with their ids, and
reach the backend as the client sent them; images are stored as a marker, never as base64."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.journal import from_journal, journal_row
from memory.types import Message, ToolCall
from memory.users import create_key
from proxy.main import create_app
from proxy.settings import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.servers.openai_stub import TOOL_ARGS, StubState
from tests.servers.runner import serving

pytestmark = pytest.mark.slow
ARGS = "".join(TOOL_ARGS)
WEATHER: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def anima(pg_url: str, stub_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")},
        models=[RouteSettings(name="stub/echo", backend="stub", model="echo")],
        memory=MemorySettings(),
        database_url=pg_url,
        data_dir=tmp_path_factory.mktemp("anima-tools"),
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, secret = await create_key(s, "tools")
    return secret


def stored(url: str, key: str, conversation: str, count: int) -> list[dict[str, Any]]:
    """The conversation's stored messages, once `count` of them have landed (stores are background)."""
    deadline = time.monotonic() + 30
    while True:
        got = (
            httpx.get(
                f"{url}/v1/conversations/{conversation}/messages",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            .json()
            .get("data", [])
        )
        if len(got) >= count or time.monotonic() > deadline:
            return list(got)
        time.sleep(0.1)


def test_a_tool_using_conversation_is_stored_once_and_resumed(anima: str, key: str, stub: StubState) -> None:
    client = openai.OpenAI(
        base_url=f"{anima}/v1",
        api_key=key,
        max_retries=0,
        default_headers={"X-Anima-Conversation": "weather"},
    )
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    first = client.chat.completions.create(model="stub/echo", messages=ask, tools=WEATHER)
    calls = [c for c in first.choices[0].message.tool_calls or [] if c.type == "function"]
    assert [c.id for c in calls] == ["call_0", "call_1"]
    assert len(stored(anima, key, "weather", 2)) == 2
    history: list[Any] = [
        *ask,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "call_0", "content": "21 C"},
        {"role": "tool", "tool_call_id": "call_1", "content": "25 C"},
    ]
    second = client.chat.completions.create(model="stub/echo", messages=history, tools=WEATHER)
    assert second.choices[0].message.content == "The tool said: 21 C; 25 C"
    sent = [m for m in stub.requests[-1]["messages"] if m["role"] != "system"]
    assert sent == [
        ask[0],
        {"role": "assistant", "content": None, "tool_calls": history[1]["tool_calls"]},
        history[2],
        history[3],
    ]
    rows = stored(anima, key, "weather", 5)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "Weather in Paris and Rome?"),
        ("assistant", ""),
        ("tool", "21 C"),
        ("tool", "25 C"),
        ("assistant", "The tool said: 21 C; 25 C"),
    ]
    assert [c["id"] for c in rows[1]["metadata"]["tool_calls"]] == ["call_0", "call_1"]
    assert rows[1]["metadata"]["tool_calls"][0]["arguments"] == ARGS
    assert rows[2]["metadata"]["tool_call_id"] == "call_0"

    client.chat.completions.create(model="stub/echo", messages=[{"role": "user", "content": "Thanks!"}])
    resumed = [m for m in stub.requests[-1]["messages"] if m["role"] != "system"]
    assert resumed[:4] == sent  # the history from the store, tool calls and ids included
    assert resumed[-1] == {"role": "user", "content": "Thanks!"}
    assert len(stored(anima, key, "weather", 7)) == 7


def test_images_are_stored_as_markers_and_resent_from_the_client(
    anima: str, key: str, stub: StubState
) -> None:
    client = openai.OpenAI(
        base_url=f"{anima}/v1", api_key=key, max_retries=0, default_headers={"X-Anima-Conversation": "photo"}
    )
    content: list[Any] = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    first = client.chat.completions.create(model="stub/echo", messages=[{"role": "user", "content": content}])
    rows = stored(anima, key, "photo", 2)
    assert rows[0]["content"] == "What is in this picture?"
    assert PIXEL not in json.dumps(rows)
    [marker] = rows[0]["metadata"]["parts"]
    assert marker["type"] == "image_url" and marker["ref"].startswith("sha256:")
    history: list[Any] = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And the colours?"},
    ]
    client.chat.completions.create(model="stub/echo", messages=history)
    sent = [m for m in stub.requests[-1]["messages"] if m["role"] != "system"]
    assert sent[0] == {"role": "user", "content": content}  # the client's copy, image and all
    assert len(stored(anima, key, "photo", 4)) == 4


def test_journal_rows_keep_tool_fields_and_read_old_entries() -> None:
    call = ToolCall("call_0", "get_weather", ARGS)
    for message in (
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "21 C", tool_call_id="call_0"),
        Message("user", "hi", "Ann"),
    ):
        assert from_journal(json.loads(json.dumps(journal_row(message)))) == message
    assert from_journal(["user", "hi", None]) == Message("user", "hi")  # written before tool fields
