"""The two llama.cpp paths with the real SmolLM2 model: a real `llama_cpp.server` as the
OpenAI-compatible upstream, and the embedded in-process model (the `make serve` default)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam

from proxy.main import create_app
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.conftest import make_settings
from tests.servers.runner import serving

pytestmark = pytest.mark.slow
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def via_server(llama_server: str) -> Iterator[str]:
    settings = make_settings(
        backends={"llamacpp": BackendSettings(kind="openai", base_url=f"{llama_server}/v1")},
        models=[RouteSettings(name="llamacpp/smollm2", backend="llamacpp", model="smollm2")],
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def embedded_app() -> FastAPI:
    """Anima with no backend configured: the embedded SmolLM2 default."""
    settings = make_settings()
    assert settings.models[0].name == "local/smollm2"
    return create_app(settings)


@pytest.fixture(scope="module")
def embedded(embedded_app: FastAPI) -> Iterator[str]:
    with serving(embedded_app) as url:
        yield url


def sync_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def async_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize(
    ("fixture", "model"), [("via_server", "llamacpp/smollm2"), ("embedded", "local/smollm2")]
)
def test_llamacpp_sync_sdk_both_modes(request: pytest.FixtureRequest, fixture: str, model: str) -> None:
    url = request.getfixturevalue(fixture)
    client = sync_client(url)
    completion = client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=12, temperature=0, seed=1
    )
    text = completion.choices[0].message.content
    assert text and text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=12, temperature=0, seed=1, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text  # greedy: same text


@pytest.mark.parametrize(
    ("fixture", "model"), [("via_server", "llamacpp/smollm2"), ("embedded", "local/smollm2")]
)
async def test_llamacpp_async_sdk_respects_max_tokens(
    request: pytest.FixtureRequest, fixture: str, model: str
) -> None:
    url = request.getfixturevalue(fixture)
    client = async_client(url)
    long_prompt: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Write a long story about a dragon."}
    ]
    completion = await client.chat.completions.create(model=model, messages=long_prompt, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    stream = await client.chat.completions.create(
        model=model, messages=long_prompt, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


async def test_embedded_concurrent_requests_queue(embedded: str) -> None:
    client = async_client(embedded)
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(model="local/smollm2", messages=HELLO, max_tokens=8)
            for _ in range(4)
        )
    )
    assert all(r.choices[0].message.content for r in replies)


async def test_embedded_stream_cancel_frees_the_model(
    embedded_app: FastAPI, embedded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that leaves mid-stream stops its generation, which frees the model for the next request.
    The abandoned generation is made endless (the real model's chunks with their finish reason taken
    off, then filler until it is closed), so the next request can complete at all only if the
    disconnect stopped it: no timing, however loaded the machine (the timeout only ends a hang)."""
    backend = embedded_app.state.pipeline.registry.backends["local"]
    real = backend._chunks
    closed: list[threading.Event] = []  # one per generation, set when the backend closed it

    def chunks(llama: Any, request: Any) -> Generator[dict[str, Any], None, None]:
        done = threading.Event()
        closed.append(done)
        endless, generation = len(closed) == 1, real(llama, request)
        try:
            if not endless:
                yield from generation
                return
            for chunk in generation:
                yield chunk | {"choices": [chunk["choices"][0] | {"finish_reason": None}]}
            while True:  # the model would never finish: only the backend's stop ends this
                time.sleep(0.01)
                yield {"choices": [{"delta": {"content": " more"}, "finish_reason": None}]}
        finally:
            generation.close()
            done.set()

    monkeypatch.setattr(backend, "_chunks", chunks)
    body = {"model": "local/smollm2", "messages": HELLO, "stream": True, "max_tokens": 400}
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", f"{embedded}/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if '"content"' in line:
                    break  # leave mid-stream: closing the response closes the connection
        resp2 = await http.post(
            f"{embedded}/v1/chat/completions",
            json={"model": "local/smollm2", "messages": HELLO, "max_tokens": 4},
        )
    assert resp2.status_code == 200 and resp2.json()["choices"][0]["message"]["content"]
    assert len(closed) == 2 and closed[0].is_set()  # the second ran after the first was stopped


def test_embedded_models_and_health(embedded: str) -> None:
    models = sync_client(embedded).models.list()
    assert [m.id for m in models.data] == ["local/smollm2"]
    health = httpx.get(f"{embedded}/health").json()
    assert health["status"] == "ok" and health["backends"]["local"]["status"] == "ok"


def test_llamacpp_server_prompt_beyond_context_is_a_clear_error(via_server: str) -> None:
    huge: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(openai.APIStatusError) as info:
        sync_client(via_server).chat.completions.create(model="llamacpp/smollm2", messages=huge, max_tokens=4)
    assert 400 <= info.value.status_code < 600
    assert info.value.body is not None and "message" in info.value.body  # type: ignore[operator]


TOOL: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
IMAGE: list[Any] = [
    {"type": "text", "text": "What is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": TOOL}, "tools"),
        ({"messages": [{"role": "user", "content": IMAGE}]}, "messages"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
    ],
)
def test_embedded_refuses_what_it_cannot_do_naming_the_model(
    embedded: str, extra: dict[str, Any], param: str
) -> None:
    client = openai.OpenAI(base_url=f"{embedded}/v1", api_key="x", max_retries=0)
    body: dict[str, Any] = {"model": "local/smollm2", "messages": HELLO} | extra
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**body)
    assert info.value.code == "unsupported_parameter"
    assert "backend 'local' (model 'smollm2') cannot" in info.value.message
    assert info.value.param == param


@pytest.mark.parametrize("stream", [False, True])
def test_llamacpp_server_named_tool_choice_returns_a_tool_call(via_server: str, stream: bool) -> None:
    """llama-cpp-python constrains the reply to the named function's schema with a grammar: a real
    upstream tool call, passed through (and, streamed, reassembled by the SDK)."""
    client = openai.OpenAI(base_url=f"{via_server}/v1", api_key="x", max_retries=0)
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                },
            },
        }
    ]
    body: dict[str, Any] = {
        "model": "llamacpp/smollm2",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 40,
        "temperature": 0,
    }
    if stream:
        with client.chat.completions.stream(**body) as events:
            for _ in events:
                pass
            message = events.get_final_completion().choices[0].message
    else:
        message = client.chat.completions.create(**body).choices[0].message
    calls = [c for c in message.tool_calls or [] if c.type == "function"]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
