"""The OpenAI wire format, checked with the official SDK and raw HTTP against Anima on uvicorn."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params.response_format_json_schema import JSONSchema

from tests.servers.openai_stub import REPLY, USAGE, StubState

TEXT = "".join(REPLY)
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def sync_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


def async_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


def sse_events(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


def test_chat_sync_sdk_non_streaming_returns_completion(anima_url: str, stub: StubState) -> None:
    raw = sync_client(anima_url).chat.completions.with_raw_response.create(model="stub/echo", messages=HELLO)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "stub/echo"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.model_dump() == USAGE | {
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    assert raw.headers["x-anima-backend"] == "stub"
    assert stub.requests[0]["model"] == "echo"
    assert stub.requests[0]["messages"] == HELLO


async def test_chat_async_sdk_streaming_yields_role_content_finish_usage(
    anima_url: str, stub: StubState
) -> None:
    stream = await async_client(anima_url).chat.completions.create(
        model="stub/echo", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == USAGE["total_tokens"]
    assert len({c.id for c in chunks}) == 1


async def test_chat_stream_wire_format_is_exact(anima_url: str, stub: StubState) -> None:
    body = {"model": "stub/echo", "messages": HELLO, "stream": True}
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{anima_url}/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("choices" in c and c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)  # not asked for
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}


def test_chat_sync_sdk_streaming_and_async_non_streaming(anima_url: str, stub: StubState) -> None:
    stream = sync_client(anima_url).chat.completions.create(model="stub/echo", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TEXT


async def test_chat_async_sdk_non_streaming(anima_url: str, stub: StubState) -> None:
    completion = await async_client(anima_url).chat.completions.create(model="stub/echo", messages=HELLO)
    assert completion.choices[0].message.content == TEXT


def test_chat_passes_sampling_parameters_through(anima_url: str, stub: StubState) -> None:
    sync_client(anima_url).chat.completions.create(
        model="stub/echo",
        messages=HELLO,
        temperature=0.3,
        top_p=0.9,
        max_completion_tokens=42,
        stop="END",
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format={"type": "json_object"},
        logit_bias={"50256": -100},
        logprobs=True,
        top_logprobs=2,
        extra_body={"top_k": 20, "repetition_penalty": 1.1, "min_p": 0.05, "made_up_field": [1, 2]},
    )
    sent = stub.requests[0]
    assert {k: sent[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed")} == {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 42,
        "stop": ["END"],
        "seed": 7,
    }
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.5, -0.5)
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["top_k"], sent["min_p"], sent["repetition_penalty"]) == (20, 0.05, 1.1)
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    assert "logit_bias" not in sent and "made_up_field" not in sent


def test_chat_accepts_array_content_and_names(anima_url: str, stub: StubState) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "No emojis."},
        {
            "role": "user",
            "name": "Alice",
            "content": [
                {"type": "text", "text": "What is "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "this?"},
            ],
        },
    ]
    sync_client(anima_url).chat.completions.create(model="stub/echo", messages=messages)
    assert stub.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "No emojis."},
        {"role": "user", "content": messages[2]["content"], "name": "Alice"},  # the image goes along
    ]


def test_chat_max_tokens_spelling_and_json_schema(anima_url: str, stub: StubState) -> None:
    schema: JSONSchema = {
        "name": "answer",
        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }
    sync_client(anima_url).chat.completions.create(
        model="stub/echo",
        messages=HELLO,
        max_tokens=9,
        response_format={"type": "json_schema", "json_schema": schema},
    )
    assert stub.requests[0]["max_tokens"] == 9
    assert stub.requests[0]["response_format"] == {"type": "json_schema", "json_schema": schema}


def test_chat_unknown_model_is_404_model_not_found(anima_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sync_client(anima_url).chat.completions.create(model="nope/never", messages=HELLO)
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b'{"model": "stub/echo"}', "messages"),
        (b'{"model": "stub/echo", "messages": []}', "messages"),
        (b'{"model": "stub/echo", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
        (
            b'{"model": "stub/echo", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            "temperature",
        ),
        (b'{"model": "stub/echo", "messages": [{"role": "user", "content": 5}]}', "messages.0.content.str"),
        (b"[1, 2]", None),
    ],
)
async def test_chat_bad_body_is_400_in_openai_format(
    anima_url: str, content: bytes, param: str | None
) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{anima_url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert set(resp.json()) == {"error"}
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("path", ["/chat/completions", "//chat/completions", "/v1//chat/completions"])
async def test_chat_served_on_sillytavern_path_variants(anima_url: str, stub: StubState, path: str) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{anima_url}{path}", json={"model": "stub/echo", "messages": HELLO})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == TEXT


@pytest.mark.parametrize("path", ["/v1/models", "/models", "//models"])
async def test_models_lists_routes_and_discovered_models(anima_url: str, path: str) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{anima_url}{path}")
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[:4] == ["stub/echo", "mock-model-1", "broken", "dead/model"]
    assert {"stub/reason", "stub/slow"} <= set(ids)
    assert all(m["object"] == "model" and m["owned_by"] for m in body["data"])


def test_chat_reasoning_content_passes_through(anima_url: str, stub: StubState) -> None:
    client = sync_client(anima_url)
    completion = client.chat.completions.create(model="stub/reason", messages=HELLO)
    assert (completion.choices[0].message.model_extra or {})["reasoning_content"] == "Let me think."
    assert completion.choices[0].message.content == TEXT
    stream = client.chat.completions.create(model="stub/reason", messages=HELLO, stream=True)
    reasoning = [(c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in stream if c.choices]
    assert "Let me think." in reasoning


async def test_sillytavern_captured_requests_are_answered(anima_url: str, stub: StubState) -> None:
    from pathlib import Path

    captures = sorted((Path(__file__).parent.parent / "fixtures" / "sillytavern").glob("st119-*.jsonl"))
    replayed = 0
    async with httpx.AsyncClient() as client:
        for capture in captures:
            for line in capture.read_text().splitlines():
                record = json.loads(line)
                headers = {"authorization": record["headers"].get("authorization", "")}
                resp = await client.request(
                    record["method"], anima_url + record["path"], json=record["json"], headers=headers
                )
                assert resp.status_code == 200, resp.text
                assert "content" not in resp.json()  # SillyTavern 1.19 would read a top-level content first
                replayed += 1
    assert replayed == 16
    assert all(r["messages"] for r in stub.requests)
