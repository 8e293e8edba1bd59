"""Ollama: the adapter through the real `ollama.AsyncClient`, and Anima end to end with the OpenAI SDK,
both against a local server speaking Ollama's HTTP protocol (NDJSON /api/chat, /api/tags, /api/show)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from memory.types import Message
from proxy.backends.base import BackendRequest, Delta, TokenUsage
from proxy.backends.ollama import OllamaBackend
from proxy.errors import BackendError, BackendRejected, BackendServerError, BackendUnavailable
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.conftest import closed_port, make_settings
from tests.servers.ollama import OllamaState, ollama_app
from tests.servers.openai_stub import vector_of
from tests.servers.runner import serving

TEXT = "Hello from Ollama!"


@pytest.fixture(scope="module")
def ollama_state() -> OllamaState:
    return OllamaState()


@pytest.fixture(scope="module")
def ollama_url(ollama_state: OllamaState) -> Iterator[str]:
    with serving(ollama_app(ollama_state)) as url:
        yield url


@pytest.fixture
def seen(ollama_state: OllamaState) -> OllamaState:
    ollama_state.requests.clear()
    return ollama_state


def backend(url: str) -> OllamaBackend:
    return OllamaBackend.from_settings("ollama", BackendSettings(kind="ollama", base_url=url, timeout_s=5))


async def collect(b: OllamaBackend, request: BackendRequest) -> list[Delta]:
    return [d async for d in b.stream(request)]


async def test_ollama_adapter_streams_and_maps_options(ollama_url: str, seen: OllamaState) -> None:
    b = backend(ollama_url)
    request = BackendRequest(
        model="llama3.1",
        messages=(Message("system", "Be brief."), Message("user", "Hi", "Ann")),
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        top_k=30,
        min_p=0.05,
        stop=("END",),
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        repetition_penalty=1.1,
        response_format="json",
    )
    deltas = await collect(b, request)
    assert "".join(d.text for d in deltas) == TEXT
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage == TokenUsage(12, 3)
    sent = seen.requests[0]
    assert sent["model"] == "llama3.1" and sent["stream"] is True and sent["format"] == "json"
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert sent["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 30,
        "min_p": 0.05,
        "seed": 7,
        "num_predict": 50,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "repeat_penalty": 1.1,
        "stop": ["END"],
    }
    await b.aclose()


async def test_ollama_adapter_schema_thinking_models_and_context(ollama_url: str, seen: OllamaState) -> None:
    b = backend(ollama_url)
    schema = {"name": "a", "schema": {"type": "object", "properties": {"x": {"type": "string"}}}}
    deltas = await collect(
        b, BackendRequest(model="thinker", messages=(Message("user", "?"),), json_schema=schema)
    )
    assert deltas[0].reasoning == "Pondering." and "".join(d.text for d in deltas) == TEXT
    assert seen.requests[0]["format"] == schema["schema"]
    assert "options" not in seen.requests[0] or not seen.requests[0]["options"]
    assert set(await b.models()) == {"llama3.1", "thinker", "fail-500", "die"}
    assert await b.context_window("llama3.1") == 8192  # model_info's trained length
    assert await b.context_window("thinker") == 16384  # num_ctx in the parameters wins
    await b.aclose()


async def test_ollama_adapter_errors_are_mapped(ollama_url: str) -> None:
    b = backend(ollama_url)
    hello = (Message("user", "hi"),)
    with pytest.raises(BackendRejected) as missing:
        await collect(b, BackendRequest(model="nope", messages=hello))
    assert missing.value.status() == 404 and "nope" in missing.value.message
    with pytest.raises(BackendServerError, match="terminated") as failed:
        await collect(b, BackendRequest(model="fail-500", messages=hello))
    assert failed.value.retryable
    received: list[str] = []
    with pytest.raises(BackendServerError, match="mid-reply: model runner crashed"):
        async for d in b.stream(BackendRequest(model="die", messages=hello)):
            received.append(d.text)
    assert "".join(received) == "Hello from"
    dead = backend(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(BackendUnavailable, match="backend 'ollama' is unreachable"):
        await collect(dead, BackendRequest(model="llama3.1", messages=hello))
    with pytest.raises(BackendError):
        await dead.models()
    await b.aclose()
    await dead.aclose()


@pytest.fixture(scope="module")
def anima(ollama_url: str) -> Iterator[str]:
    settings = make_settings(
        backends={"ollama": BackendSettings(kind="ollama", base_url=ollama_url)},
        models=[RouteSettings(name="ollama/llama3.1", backend="ollama", model="llama3.1")],
        retries=1,
        retry_backoff_s=0,
    )
    with serving(create_app(settings)) as url:
        yield url


def test_ollama_through_anima_with_the_sync_sdk(anima: str, seen: OllamaState) -> None:
    client = openai.OpenAI(base_url=f"{anima}/v1", api_key="x", max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    completion = client.chat.completions.create(
        model="ollama/llama3.1", messages=messages, max_tokens=20, seed=3
    )
    assert completion.choices[0].message.content == TEXT
    assert completion.usage is not None and (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    ) == (12, 3)
    stream = client.chat.completions.create(model="ollama/llama3.1", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TEXT
    chats = [r for r in seen.requests if "messages" in r]  # not the /api/show that tells the window
    assert chats[0]["options"] == {"num_predict": 20, "seed": 3}
    assert {m.id for m in client.models.list().data} >= {"ollama/llama3.1", "ollama/thinker"}


async def test_ollama_through_anima_with_the_async_sdk(anima: str, seen: OllamaState) -> None:
    client = openai.AsyncOpenAI(base_url=f"{anima}/v1", api_key="x", max_retries=0)
    hello: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    stream = await client.chat.completions.create(model="ollama/thinker", messages=hello, stream=True)
    chunks = [c async for c in stream]
    assert [(c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in chunks[:2]][
        1
    ] == "Pondering."
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="ollama/nope", messages=hello)
    with pytest.raises(openai.APIStatusError) as failed:
        await client.chat.completions.create(model="ollama/fail-500", messages=hello)
    assert failed.value.status_code == 502
    assert [r["model"] for r in seen.requests if r.get("model") == "fail-500" and "messages" in r] == [
        "fail-500",
        "fail-500",
    ]  # one retry


WEATHER: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather at a place.",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
]
ASK: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def test_ollama_tool_calls_through_anima_streaming_and_not(anima: str, seen: OllamaState) -> None:
    completion = sdk(anima).chat.completions.create(model="ollama/llama3.1", messages=ASK, tools=WEATHER)
    choice = completion.choices[0]
    calls = [c for c in choice.message.tool_calls or [] if c.type == "function"]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"location": "Paris"})
    ] * 2
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    assert seen.requests[0]["tools"] == WEATHER
    with sdk(anima).chat.completions.stream(model="ollama/llama3.1", messages=ASK, tools=WEATHER) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in final.choices[0].message.tool_calls or [] if c.type == "function"] == [
        "get_weather"
    ] * 2


def test_ollama_gets_tool_results_named_and_arguments_as_objects(anima: str, seen: OllamaState) -> None:
    call = {
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
    }
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_a", "content": "21 C"},
    ]
    completion = sdk(anima).chat.completions.create(model="ollama/llama3.1", messages=history, tools=WEATHER)
    assert completion.choices[0].message.content == "The tool said: 21 C"
    sent = seen.requests[0]["messages"]
    assert sent[1]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"location": "Paris"}}}
    ]
    assert sent[2] == {"role": "tool", "content": "21 C", "tool_name": "get_weather"}


def test_ollama_gets_data_url_images_and_refuses_remote_ones(anima: str, seen: OllamaState) -> None:
    content: list[Any] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    sdk(anima).chat.completions.create(
        model="ollama/llama3.1", messages=[{"role": "user", "content": content}]
    )
    assert seen.requests[0]["messages"] == [{"role": "user", "content": "What is this?", "images": [PIXEL]}]
    remote: list[Any] = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as info:
        sdk(anima).chat.completions.create(
            model="ollama/llama3.1", messages=[{"role": "user", "content": remote}]
        )
    assert info.value.code == "unsupported_parameter" and "data: URL" in info.value.message


def test_ollama_logprobs_in_openai_shape_and_n_refused(anima: str, seen: OllamaState) -> None:
    completion = sdk(anima).chat.completions.create(
        model="ollama/llama3.1", messages=ASK, logprobs=True, top_logprobs=1
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and [t.token for t in logprobs.content or []] == [
        "Hello",
        " from",
        " Ollama!",
    ]
    assert (logprobs.content or [])[0].bytes == list(b"Hello")
    assert seen.requests[0]["logprobs"] is True and seen.requests[0]["top_logprobs"] == 1
    with pytest.raises(openai.BadRequestError) as info:
        sdk(anima).chat.completions.create(model="ollama/llama3.1", messages=ASK, n=2)
    assert info.value.code == "unsupported_parameter" and "'ollama'" in info.value.message
    with pytest.raises(openai.BadRequestError):
        sdk(anima).chat.completions.create(
            model="ollama/llama3.1", messages=ASK, tools=WEATHER, tool_choice="required"
        )


def test_ollama_embeddings_through_anima(anima: str, seen: OllamaState) -> None:
    result = sdk(anima).embeddings.create(model="ollama/llama3.1", input=["alpha", "beta"], dimensions=4)
    assert [d.embedding for d in result.data] == [
        pytest.approx(vector_of("alpha", 4), abs=1e-6),
        pytest.approx(vector_of("beta", 4), abs=1e-6),
    ]
    assert result.usage.prompt_tokens == 4
    assert seen.requests[0] == {"model": "llama3.1", "input": ["alpha", "beta"], "dimensions": 4}
