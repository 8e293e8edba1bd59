"""The memory-off chat path after issue 15's cuts answers byte for byte as before: a request orjson parsed
skips the storable walk unless a NUL escape may be in it, a read that ends the reply goes out with its
closing chunks in one write, and the reply's bytes (ids and times aside) are the ones main produced."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest

from memory.text import orjson_storable
from memory.types import Message, ToolCall
from proxy.backends.openai_wire import SSELines, deltas_of
from proxy.outgoing import to_message
from proxy.protocol import ChatMessage
from tests.servers.openai_stub import StubState

HELLO = [{"role": "user", "content": "hi"}]
# main's reply (f487f15) to `stub/echo`, streamed with usage and not, its id and time replaced
STREAMED = (
    b'data: {"id":"ID","object":"chat.completion.chunk","created":0,"model":"stub/echo","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null,"logprobs":null}]}\n\n'
    b'data: {"id":"ID","object":"chat.completion.chunk","created":0,"model":"stub/echo","choices":'
    b'[{"index":0,"delta":{"content":"Hello"},"finish_reason":null,"logprobs":null}]}\n\n'
    b'data: {"id":"ID","object":"chat.completion.chunk","created":0,"model":"stub/echo","choices":'
    b'[{"index":0,"delta":{"content":" from the"},"finish_reason":null,"logprobs":null}]}\n\n'
    b'data: {"id":"ID","object":"chat.completion.chunk","created":0,"model":"stub/echo","choices":'
    b'[{"index":0,"delta":{"content":" stub!"},"finish_reason":null,"logprobs":null}]}\n\n'
    b'data: {"id":"ID","object":"chat.completion.chunk","created":0,"model":"stub/echo","choices":'
    b'[{"index":0,"delta":{},"finish_reason":"stop","logprobs":null}]}\n\n'
    b'data: {"id":"ID","object":"chat.completion.chunk","created":0,"model":"stub/echo","choices":[],'
    b'"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}\n\n'
    b"data: [DONE]\n\n"
)
COLLECTED = (
    b'{"id":"ID","object":"chat.completion","created":0,"model":"stub/echo","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hello from the stub!"},"finish_reason":"stop",'
    b'"logprobs":null}],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}'
)


def normalised(body: bytes) -> bytes:
    body = re.sub(rb'"id":"chatcmpl-[0-9a-f]{32}"', b'"id":"ID"', body)
    return re.sub(rb'"created":\d+', b'"created":0', body)


@pytest.mark.parametrize("model", ["stub/echo", "stub/one-write"])
async def test_a_streamed_reply_is_byte_for_byte_mains(anima_url: str, stub: StubState, model: str) -> None:
    body = {"model": model, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{anima_url}/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert normalised(resp.content) == STREAMED.replace(b"stub/echo", model.encode())


async def test_a_collected_reply_is_byte_for_byte_mains(anima_url: str, stub: StubState) -> None:
    body = {"model": "stub/echo", "messages": HELLO}
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{anima_url}/v1/chat/completions", json=body)
    assert resp.status_code == 200 and normalised(resp.content) == COLLECTED


def test_only_a_nul_escape_makes_parsed_json_worth_walking() -> None:
    assert orjson_storable(orjson.dumps({"content": "caf\u00e9 \U0001f600 \\ \t"}))
    assert not orjson_storable(orjson.dumps({"content": "a\x00b"}))
    assert not orjson_storable(orjson.dumps({"a\x00": 1}))
    assert not orjson_storable(orjson.dumps({"content": "\\u0000"}))  # a false alarm: the walk says fine


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"model":"stub/echo","messages":[{"role":"user","content":"a\\u0000b"}]}', 400),
        (b'{"model":"stub/echo\\u0000","messages":[{"role":"user","content":"hi"}]}', 400),
        (b'{"model":"stub/echo","messages":[{"role":"user","content":"hi","x\\u0000":1}]}', 400),
        (b'{"model":"stub/echo","messages":[{"role":"user","content":"a\\\\u0000b"}]}', 200),
    ],
)
async def test_a_nul_escape_is_still_refused_and_an_escaped_backslash_is_not(
    anima_url: str, stub: StubState, raw: bytes, status: int
) -> None:
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{anima_url}/v1/chat/completions", content=raw, headers=headers)
    assert resp.status_code == status, resp.text
    if status == 400:
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and "NUL" in error["message"]
    else:
        assert stub.last_chat()["messages"][-1]["content"] == "a\\u0000b"


def test_a_read_that_ends_the_reply_marks_every_delta_more() -> None:
    """`[DONE]` in the read: the closing chunks follow at once, so nothing waits for another read."""
    event = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
    deltas, done = deltas_of("b", SSELines().feed(event * 2 + b"data: [DONE]\n\n"))
    assert done and [d.more for d in deltas] == [True, True]
    deltas, done = deltas_of("b", SSELines().feed(event * 2))  # the reply goes on: the last is sent now
    assert not done and [d.more for d in deltas] == [True, False]
    assert [d.text for d in deltas] == ["x", "x"]


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ({"role": "user", "content": "hi"}, Message("user", "hi")),
        ({"role": "developer", "content": "be brief", "name": "ops"}, Message("system", "be brief", "ops")),
        ({"role": "assistant", "content": "", "tool_calls": []}, Message("assistant", "")),
        ({"role": "assistant", "content": None}, Message("assistant", "")),
        (
            {"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
            Message("assistant", "x", tool_calls=(ToolCall("c", "f", ""),)),
        ),
        ({"role": "tool", "content": "42", "tool_call_id": "c"}, Message("tool", "42", tool_call_id="c")),
        ({"role": "user", "content": [{"type": "text", "text": "a"}]}, Message("user", "a")),
    ],
)
def test_a_plain_message_converts_as_any_other(sent: dict[str, Any], expected: Message) -> None:
    assert to_message(ChatMessage.model_validate(sent)) == expected
