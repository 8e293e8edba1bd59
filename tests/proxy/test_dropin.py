"""Drop-in for every OpenAI client (issue 14), checked with the official SDK against Anima on uvicorn in
front of the OpenAI-compatible stub: tool calling (streaming and not), content parts, logprobs, n > 1,
and JSON bodies whatever their content-type."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.servers.openai_stub import REPLY, TOOL_ARGS, TOOL_REPLY, StubState

WEATHER: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather at a place.",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
]
ASK: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
ARGS = "".join(TOOL_ARGS)
IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


def test_tool_calls_non_streaming_parse_with_the_sdk(anima_url: str, stub: StubState) -> None:
    completion = client(anima_url).chat.completions.create(
        model="stub/echo", messages=ASK, tools=WEATHER, tool_choice="auto"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = [c for c in choice.message.tool_calls or [] if c.type == "function"]
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_0", "get_weather", ARGS),
        ("call_1", "get_weather", ARGS),
    ]
    assert json.loads(calls[0].function.arguments) == {"location": "Paris"}
    sent = stub.requests[0]
    assert sent["tools"] == WEATHER
    assert sent["tool_choice"] == "auto"


def test_tool_calls_streaming_accumulate_in_the_sdk(anima_url: str, stub: StubState) -> None:
    sdk = client(anima_url)
    with sdk.chat.completions.stream(
        model="stub/echo", messages=ASK, tools=WEATHER, parallel_tool_calls=False
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [c for c in choice.message.tool_calls or [] if c.type == "function"]
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [("call_0", "get_weather", ARGS)]
    assert stub.requests[0]["parallel_tool_calls"] is False


def test_streamed_tool_call_fragments_keep_their_indices(anima_url: str, stub: StubState) -> None:
    chunks = list(
        client(anima_url).chat.completions.create(model="stub/echo", messages=ASK, tools=WEATHER, stream=True)
    )
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    heads = [f for f in fragments if f.id]
    assert [(f.index, f.id, f.type, f.function and f.function.name) for f in heads] == [
        (0, "call_0", "function", "get_weather"),
        (1, "call_1", "function", "get_weather"),
    ]
    for index in (0, 1):
        assert (
            "".join(f.function.arguments or "" for f in fragments if f.index == index and f.function) == ARGS
        )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_named_tool_choice_and_tool_results_reach_the_backend(anima_url: str, stub: StubState) -> None:
    history: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "21 C and sunny"},
    ]
    completion = client(anima_url).chat.completions.create(
        model="stub/echo",
        messages=history,
        tools=WEATHER,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert completion.choices[0].message.content == TOOL_REPLY + "21 C and sunny"
    assert completion.choices[0].finish_reason == "stop"
    sent = stub.requests[0]
    assert sent["messages"] == history
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_image_parts_are_forwarded_as_sent(anima_url: str, stub: StubState) -> None:
    content: list[Any] = [
        {"type": "text", "text": "What is in"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
        {"type": "text", "text": " this picture?"},
    ]
    completion = client(anima_url).chat.completions.create(
        model="stub/echo", messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content == "".join(REPLY)
    assert stub.requests[0]["messages"] == [{"role": "user", "content": content}]


def test_logprobs_pass_through_streaming_and_not(anima_url: str, stub: StubState) -> None:
    sdk = client(anima_url)
    completion = sdk.chat.completions.create(model="stub/echo", messages=ASK, logprobs=True, top_logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == list(REPLY)
    assert all(len(t.top_logprobs) == 2 for t in logprobs.content)
    assert stub.requests[0]["logprobs"] is True and stub.requests[0]["top_logprobs"] == 2
    chunks = list(sdk.chat.completions.create(model="stub/echo", messages=ASK, logprobs=True, stream=True))
    tokens = [
        t.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert tokens == list(REPLY)


def test_n_choices_pass_through_streaming_and_not(anima_url: str, stub: StubState) -> None:
    sdk = client(anima_url)
    completion = sdk.chat.completions.create(model="stub/echo", messages=ASK, n=3)
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (i, f"choice {i}: " + "".join(REPLY), "stop") for i in range(3)
    ]
    assert stub.requests[0]["n"] == 3
    chunks = list(sdk.chat.completions.create(model="stub/echo", messages=ASK, n=2, stream=True))
    texts = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    }
    assert texts == {i: f"choice {i}: " + "".join(REPLY) for i in (0, 1)}
    finishes = [
        (c.choices[0].index, c.choices[0].finish_reason)
        for c in chunks
        if c.choices and c.choices[0].finish_reason
    ]
    assert sorted(finishes) == [(0, "stop"), (1, "stop")]


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-8"],
)
def test_json_bodies_are_read_whatever_the_content_type(
    anima_url: str, stub: StubState, content_type: str | None
) -> None:
    body = json.dumps({"model": "stub/echo", "messages": [{"role": "user", "content": "Hi!"}]})
    request = httpx.Request("POST", f"{anima_url}/v1/chat/completions", content=body.encode())
    request.headers.pop("content-type", None)
    if content_type is not None:
        request.headers["content-type"] = content_type
    with httpx.Client(timeout=30) as http:
        response = http.send(request)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "".join(REPLY)


def test_curl_style_form_body_that_is_not_json_is_a_clear_400(anima_url: str, stub: StubState) -> None:
    response = httpx.post(
        f"{anima_url}/v1/chat/completions",
        content=b"model=stub/echo&messages=hi",
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]
    assert stub.requests == []
