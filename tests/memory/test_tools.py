"""Memory on, a tool-using and an image-sending client (official SDK → Anima → OpenAI-compatible stub,
real Postgres): tool calls and results are stored once, recalled in order with their ids, and
reach the backend as the client sent them; images are stored as a marker, never as base64."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.journal import from_journal, journal_row
from memory.models import MessageRow
from memory.types import Message, ToolCall
from memory.users import create_key
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.servers.openai_stub import TOOL_ARGS, StubState
from tests.servers.runner import serving

pytestmark = pytest.mark.slow
ARGS = "".join(TOOL_ARGS)
WEATHER: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
SMALL = 1024  # the context window of `stub/small`
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def anima(pg_url: str, stub_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")},
        models=[
            RouteSettings(name="stub/echo", backend="stub", model="echo"),
            RouteSettings(name="stub/small", backend="stub", model="echo", context_window=SMALL),
        ],
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
    sent = [m for m in stub.last_chat()["messages"] if m["role"] != "system"]
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
    resumed = [m for m in stub.last_chat()["messages"] if m["role"] != "system"]
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
    sent = [m for m in stub.last_chat()["messages"] if m["role"] != "system"]
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


def tokens(sent: list[dict[str, Any]], tools: list[Any], counter: TokenCounter) -> int:
    """What a prompt takes, counted independently of Anima: each message's text and calls (name and
    arguments) plus 4 per message and 8 per call, each tool's definition as JSON plus 10."""
    calls = [c["function"] for m in sent for c in m.get("tool_calls") or ()]
    return (
        sum(counter.count(m.get("content") or "") + 4 for m in sent)
        + sum(counter.count(c["name"]) + counter.count(c["arguments"]) + 8 for c in calls)
        + sum(counter.count(json.dumps(t["function"])) + 10 for t in tools)
    )


def paired(messages: list[dict[str, Any]]) -> bool:
    """Every tool result follows its call (only results between them), every call is answered."""
    open_calls: set[str] = set()
    for message in messages:
        if message["role"] == "tool":
            if message["tool_call_id"] not in open_calls:
                return False
            open_calls.discard(message["tool_call_id"])
            continue
        if open_calls:
            return False
        open_calls = {c["id"] for c in message.get("tool_calls") or ()}
    return not open_calls


def test_a_tool_using_chat_fits_a_small_window_with_nothing_silently_lost(
    anima: str, key: str, stub: StubState
) -> None:
    """Big tool schemas and a huge newest tool result through a 1024-token model: the backend gets the
    call with every result (the huge one cut by tokens, with a marker), within the window."""
    client = openai.OpenAI(
        base_url=f"{anima}/v1", api_key=key, max_retries=0, default_headers={"X-Anima-Conversation": "logs"}
    )
    fields = {
        f"field_{i}": {"type": "string", "description": f"The log field number {i} to read"}
        for i in range(12)
    }
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "read_logs",
                "description": "Read the server logs",
                "parameters": {"type": "object", "properties": fields},
            },
        }
    ]
    logs = "\n".join(f"12:{i:02d} GET /api/items/{i} 200 {i * 7} ms" for i in range(600))
    old_turns: list[Any] = []
    for day in ("Monday", "Tuesday", "Wednesday"):
        old_turns += [
            {"role": "user", "content": f"What happened on {day}? " + "Please look closely. " * 20},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"{day}_0",
                        "type": "function",
                        "function": {
                            "name": "read_logs",
                            "arguments": json.dumps({"day": day, "filter": "errors " * 30}),
                        },
                    },
                    {
                        "id": f"{day}_1",
                        "type": "function",
                        "function": {"name": "read_logs", "arguments": json.dumps({"day": day})},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": f"{day}_0", "content": f"no errors on {day} " * 15},
            {"role": "tool", "tool_call_id": f"{day}_1", "content": f"quiet traffic on {day} " * 15},
            {"role": "assistant", "content": f"{day} was quiet."},
        ]
    messages: list[Any] = [
        *old_turns,
        {"role": "user", "content": "And today?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "today_0",
                    "type": "function",
                    "function": {"name": "read_logs", "arguments": '{"day": "today"}'},
                },
                {
                    "id": "today_1",
                    "type": "function",
                    "function": {"name": "read_logs", "arguments": '{"day": "today", "level": "error"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "today_0", "content": logs},  # ~12,000 tokens
        {"role": "tool", "tool_call_id": "today_1", "content": "no errors today"},
    ]
    reply = client.chat.completions.create(model="stub/small", messages=messages, tools=tools, max_tokens=100)
    assert reply.choices[0].message.content is not None
    sent = stub.last_chat()["messages"]
    assert paired(sent)
    counter = TokenCounter()
    assert tokens(sent, tools, counter) <= SMALL - 100
    results = [m for m in sent if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results][-2:] == ["today_0", "today_1"]
    assert results[-2]["content"].startswith("12:00 GET /api/items/0 200 0 ms")
    assert results[-2]["content"].endswith(f"of {counter.count(logs)} tokens]")
    assert results[-1]["content"] == "no errors today"
    assert sent[-3]["tool_calls"] == messages[-3]["tool_calls"]  # the call itself goes as sent
    chat = [m for m in sent if m["role"] != "system"]
    assert {"role": "user", "content": "And today?"} in chat  # the question is not crowded out
    kept = chat[:-2]  # the client's newest history, verbatim, cut before a whole group only
    assert len(kept) >= 6 and kept == messages[len(messages) - 2 - len(kept) : -2]


async def test_stored_call_only_messages_count_their_calls(
    anima: str, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    async with sessions.begin() as s:
        user_id, secret = await create_key(s, "tool-tokens")
    client = openai.AsyncOpenAI(
        base_url=f"{anima}/v1",
        api_key=secret,
        max_retries=0,
        default_headers={"X-Anima-Conversation": "counted"},
    )
    arguments = json.dumps({"query": "opening hours of every bakery in Paris " * 10})
    sent: list[Any] = [
        {"role": "user", "content": "Find bakeries"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Du Pain et des Idées"},
    ]
    first = await client.chat.completions.create(model="stub/echo", messages=sent, tools=WEATHER)
    sent += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And croissants?"},
    ]
    second = await client.chat.completions.create(model="stub/echo", messages=sent, tools=WEATHER)
    assert second.choices[0].finish_reason == "tool_calls"  # the reply: calls only
    counter = TokenCounter()
    deadline = time.monotonic() + 30
    rows: list[tuple[str, int, dict[str, Any] | None]] = []
    while len(rows) < 6 and time.monotonic() < deadline:
        async with sessions() as s:
            query = select(MessageRow.role, MessageRow.token_count, MessageRow.meta).where(
                MessageRow.user_id == user_id
            )
            rows = [(r.role, r.token_count, r.meta) for r in (await s.execute(query.order_by(MessageRow.id)))]
        await asyncio.sleep(0.1)
    calls = [
        (count, meta["tool_calls"])
        for role, count, meta in rows
        if role == "assistant" and meta and meta.get("tool_calls")
    ]
    assert len(calls) == 2  # the client's call and the reply's calls
    for count, stored in calls:
        assert count >= sum(counter.count(c["name"]) + counter.count(c["arguments"]) for c in stored) > 10


def test_a_resumed_tool_conversation_comes_back_in_whole_groups_within_a_small_window(
    anima: str, key: str, stub: StubState
) -> None:
    """A thin client resuming a stored tool-using conversation on a 1024-token model: memory's earlier
    history holds whole call groups only, counted with their calls, and fits the window."""
    client = openai.OpenAI(
        base_url=f"{anima}/v1", api_key=key, max_retries=0, default_headers={"X-Anima-Conversation": "resume"}
    )
    history: list[Any] = []
    for day in ("Monday", "Tuesday", "Wednesday", "Thursday"):
        arguments = json.dumps({"day": day, "filters": [f"service-{i}" for i in range(40)]})  # ~210 tokens
        history += [
            {"role": "user", "content": f"What happened on {day}?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"{day}_0",
                        "type": "function",
                        "function": {"name": "read_logs", "arguments": arguments},
                    },
                    {
                        "id": f"{day}_1",
                        "type": "function",
                        "function": {"name": "read_logs", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": f"{day}_0", "content": f"no errors on {day} " * 6},
            {"role": "tool", "tool_call_id": f"{day}_1", "content": f"quiet traffic on {day} " * 6},
            {"role": "assistant", "content": f"{day} was quiet."},
        ]
    history.append({"role": "user", "content": "Good."})
    client.chat.completions.create(model="stub/echo", messages=history)
    assert len(stored(anima, key, "resume", len(history) + 1)) == len(history) + 1
    client.chat.completions.create(
        model="stub/small", messages=[{"role": "user", "content": "Thanks!"}], max_tokens=100
    )
    sent = stub.last_chat()["messages"]
    assert paired(sent) and sent[-1] == {"role": "user", "content": "Thanks!"}
    assert tokens(sent, [], TokenCounter()) <= SMALL - 100
    calls = [m for m in sent if m.get("tool_calls")]
    assert calls and all(m["tool_calls"] in [h.get("tool_calls") for h in history] for m in calls)
