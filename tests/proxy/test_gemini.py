"""GeminiBackend with a real `google-genai` client against a server speaking Gemini's REST protocol,
then Anima in front of it driven by the official `openai` SDK. Real HTTP everywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from memory.types import Message
from proxy.backends.base import BackendRequest, Delta, TokenUsage
from proxy.backends.gemini import GeminiBackend
from proxy.errors import (
    BackendRateLimited,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    ContentBlocked,
)
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.conftest import closed_port, make_settings
from tests.servers.gemini import API_KEY, PROMPT_TOKENS, THOUGHT, GeminiState, gemini_app
from tests.servers.openai_stub import vector_of
from tests.servers.runner import serving

HELLO = (Message("user", "Hi"),)
REPLY_TEXT = "Hello from Gemini!"
REPLY_DELTAS = [Delta("Hello"), Delta(" from"), Delta(" Gemini!")]
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server_state() -> GeminiState:
    return GeminiState()


@pytest.fixture(scope="module")
def gemini_url(server_state: GeminiState) -> Iterator[str]:
    with serving(gemini_app(server_state)) as url:
        yield url


@pytest.fixture
def gemini(server_state: GeminiState) -> GeminiState:
    """The server's record, emptied for this test."""
    server_state.requests.clear()
    return server_state


def settings_for(url: str, **values: Any) -> BackendSettings:
    return BackendSettings(kind="gemini", base_url=url, api_key=values.pop("api_key", API_KEY), **values)


@pytest.fixture
async def backend(gemini_url: str) -> AsyncIterator[GeminiBackend]:
    backend = GeminiBackend.from_settings("gem", settings_for(gemini_url))
    yield backend
    await backend.aclose()


async def drain(backend: GeminiBackend, request: BackendRequest) -> list[Delta]:
    return [delta async for delta in backend.stream(request)]


# --- the adapter --------------------------------------------------------------------------------


async def test_gemini_streams_reply_with_usage(backend: GeminiBackend, gemini: GeminiState) -> None:
    deltas = await drain(backend, BackendRequest(model="gemini-2.0-flash", messages=HELLO))
    assert deltas == [*REPLY_DELTAS, Delta(finish_reason="stop", usage=TokenUsage(PROMPT_TOKENS, 3))]
    [sent] = gemini.requests
    assert (sent["method"], sent["model"], sent["action"]) == (
        "POST",
        "gemini-2.0-flash",
        "streamGenerateContent",
    )
    assert (sent["query"], sent["key"]) == ({"alt": "sse"}, API_KEY)
    assert sent["body"] == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "generationConfig": {}}


async def test_gemini_translates_roles_system_and_names(backend: GeminiBackend, gemini: GeminiState) -> None:
    messages = (
        Message("system", "You are Anima."),
        Message("user", "Hi"),
        Message("user", "Still there?", name="bob"),
        Message("assistant", "Yes."),
        Message("assistant", ""),
        Message("system", "Be brief."),
        Message("user", "Bye"),
    )
    await drain(backend, BackendRequest(model="gemini-2.0-flash", messages=messages))
    [body] = gemini.bodies()
    assert body["systemInstruction"] == {"role": "user", "parts": [{"text": "You are Anima.\n\nBe brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}, {"text": "bob: Still there?"}]},
        {"role": "model", "parts": [{"text": "Yes."}]},
        {"role": "user", "parts": [{"text": "Bye"}]},
    ]


async def test_gemini_system_only_prompt_becomes_the_user_turn(
    backend: GeminiBackend, gemini: GeminiState
) -> None:
    await drain(
        backend, BackendRequest(model="gemini-2.0-flash", messages=(Message("system", "Summarise."),))
    )
    [body] = gemini.bodies()
    assert body == {"contents": [{"role": "user", "parts": [{"text": "Summarise."}]}], "generationConfig": {}}


async def test_gemini_sends_sampling_params_and_drops_unsupported(
    backend: GeminiBackend, gemini: GeminiState
) -> None:
    request = BackendRequest(
        model="gemini-2.0-flash",
        messages=HELLO,
        max_tokens=100,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        stop=("END", "###"),
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        repetition_penalty=1.1,
    )
    await drain(backend, request)
    [body] = gemini.bodies()
    assert body["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.9,
        "topK": 40,
        "maxOutputTokens": 100,
        "stopSequences": ["END", "###"],
        "seed": 7,
        "presencePenalty": 0.1,
        "frequencyPenalty": 0.2,
    }


@pytest.mark.parametrize(
    ("fmt", "schema", "expected"),
    [
        ("json", None, {"responseMimeType": "application/json"}),
        (
            "json",
            {"name": "point", "strict": True, "schema": {"type": "object", "required": ["x"]}},
            {
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "required": ["x"]},
            },
        ),
    ],
)
async def test_gemini_json_modes(
    backend: GeminiBackend,
    gemini: GeminiState,
    fmt: Any,
    schema: dict[str, Any] | None,
    expected: dict[str, Any],
) -> None:
    request = BackendRequest(
        model="gemini-2.0-flash", messages=HELLO, response_format=fmt, json_schema=schema
    )
    await drain(backend, request)
    assert gemini.bodies()[0]["generationConfig"] == expected


async def test_gemini_thought_parts_are_reasoning(backend: GeminiBackend) -> None:
    deltas = await drain(backend, BackendRequest(model="thinker", messages=HELLO))
    assert deltas == [
        Delta(reasoning=THOUGHT),
        *REPLY_DELTAS,
        Delta(finish_reason="stop", usage=TokenUsage(PROMPT_TOKENS, 3 + 7)),
    ]


@pytest.mark.parametrize(
    ("model", "max_tokens", "text", "finish"),
    [("gemini-2.0-flash", 2, "Hello from", "length"), ("cut", None, "Hello from", "content_filter")],
)
async def test_gemini_finish_reasons(
    backend: GeminiBackend, model: str, max_tokens: int | None, text: str, finish: str
) -> None:
    deltas = await drain(backend, BackendRequest(model=model, messages=HELLO, max_tokens=max_tokens))
    assert "".join(d.text for d in deltas) == text
    assert [d.finish_reason for d in deltas] == [None, None, finish]
    assert deltas[-1].usage == TokenUsage(PROMPT_TOKENS, 2)


async def test_gemini_models_lists_text_models_across_pages(
    backend: GeminiBackend, gemini: GeminiState
) -> None:
    assert await backend.models() == ["gemini-2.0-flash", "gemini-2.5-pro"]  # the embedder is left out
    assert [r["action"] for r in gemini.requests] == ["list", "list"]  # two pages of two
    assert await backend.context_window("gemini-2.5-pro") == 2_097_152  # learnt from the listing
    assert len(gemini.requests) == 2


async def test_gemini_models_prefers_the_configured_list(gemini_url: str, gemini: GeminiState) -> None:
    backend = GeminiBackend.from_settings("gem", settings_for(gemini_url, models=["gemini-exp"]))
    try:
        assert await backend.models() == ["gemini-exp"]
    finally:
        await backend.aclose()
    assert gemini.requests == []


async def test_gemini_context_window_is_fetched_once(backend: GeminiBackend, gemini: GeminiState) -> None:
    assert await backend.context_window("gemini-2.0-flash") == 1_048_576
    assert await backend.context_window("gemini-2.0-flash") == 1_048_576
    assert [(r["method"], r["model"]) for r in gemini.requests] == [("GET", "gemini-2.0-flash")]
    with pytest.raises(BackendRejected) as caught:
        await backend.context_window("no-such-model")
    assert caught.value.status() == 404
    assert "does not know this model" in caught.value.message


async def test_gemini_blocked_prompt_is_content_blocked(backend: GeminiBackend) -> None:
    stream = backend.stream(BackendRequest(model="blocked", messages=HELLO))
    with pytest.raises(ContentBlocked) as caught:
        await anext(stream)  # before any text: the client still gets a real 400
    assert caught.value.status() == 400
    assert caught.value.code == "content_filter"
    assert "reason SAFETY" in caught.value.message


@pytest.mark.parametrize(
    ("model", "error", "status", "words"),
    [
        ("quota", BackendRateLimited, 429, "out of Gemini quota (429 RESOURCE_EXHAUSTED"),
        ("fail-500", BackendServerError, 502, "answered 500: INTERNAL"),
    ],
)
async def test_gemini_http_errors_are_mapped(
    backend: GeminiBackend, model: str, error: type[Exception], status: int, words: str
) -> None:
    with pytest.raises(error) as caught:
        await drain(backend, BackendRequest(model=model, messages=HELLO))
    assert isinstance(caught.value, BackendRateLimited | BackendServerError)
    assert caught.value.status() == status
    assert words in caught.value.message and "'gem'" in caught.value.message
    assert caught.value.retryable is (model == "fail-500")


async def test_gemini_wrong_key_is_rejected_as_401(gemini_url: str, gemini: GeminiState) -> None:
    backend = GeminiBackend.from_settings("gem", settings_for(gemini_url, api_key="wrong"))
    try:
        with pytest.raises(BackendRejected) as caught:
            await drain(backend, BackendRequest(model="gemini-2.0-flash", messages=HELLO))
    finally:
        await backend.aclose()
    assert caught.value.status() == 401
    assert "API key Gemini rejects" in caught.value.message
    assert gemini.requests[0]["key"] == "wrong"


async def test_gemini_dead_port_is_unavailable() -> None:
    backend = GeminiBackend.from_settings("gem", settings_for(f"http://127.0.0.1:{closed_port()}"))
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await drain(backend, BackendRequest(model="gemini-2.0-flash", messages=HELLO))
    finally:
        await backend.aclose()
    assert type(caught.value) is BackendUnavailable
    assert caught.value.retryable and "backend 'gem' is unreachable" in caught.value.message


async def test_gemini_slow_answer_times_out(gemini_url: str) -> None:
    backend = GeminiBackend.from_settings("gem", settings_for(gemini_url, timeout_s=0.3))
    try:
        with pytest.raises(BackendTimeout) as caught:
            await drain(backend, BackendRequest(model="slow", messages=HELLO))
    finally:
        await backend.aclose()
    assert caught.value.status() == 504 and "backend 'gem' did not answer in time" in caught.value.message


def test_gemini_from_settings_requires_an_api_key() -> None:
    with pytest.raises(ValueError, match=r"backend 'gem' \(gemini\) needs an api_key"):
        GeminiBackend.from_settings("gem", BackendSettings(kind="gemini"))


# --- end to end: openai SDK → Anima → google-genai → Gemini protocol ------------------------------


@pytest.fixture(scope="module")
def anima_url(gemini_url: str) -> Iterator[str]:
    settings = make_settings(
        backends={"gemini": settings_for(gemini_url)},
        models=[RouteSettings(name="gemini/gemini-2.0-flash", backend="gemini", model="gemini-2.0-flash")],
        retries=1,
        retry_backoff_s=0,
        sse_ping_s=0,
    )
    with serving(create_app(settings)) as url:
        yield url


def test_gemini_e2e_sync_sdk(anima_url: str, gemini: GeminiState) -> None:
    client = openai.OpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(model="gemini/gemini-2.0-flash", messages=CHAT)
    assert completion.choices[0].message.content == REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, 3)
    stream = client.chat.completions.create(model="gemini/gemini-2.0-flash", messages=CHAT, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # (the model's context window is asked once first: the budget applies with memory off too)
    assert [r["model"] for r in generations(gemini)] == ["gemini-2.0-flash", "gemini-2.0-flash"]


def generations(gemini: GeminiState) -> list[dict[str, Any]]:
    """The generation calls the server saw (not the model lookups that tell the context window)."""
    return [r for r in gemini.requests if r["action"] in ("generateContent", "streamGenerateContent")]


async def test_gemini_e2e_async_sdk_accepts_foreign_params(anima_url: str, gemini: GeminiState) -> None:
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="gemini/gemini-2.0-flash",
        messages=[{"role": "system", "content": "Be kind."}, *CHAT],
        stream=True,
        logit_bias={"50256": -100},
        max_tokens=50,
        extra_body={"top_k": 5, "repetition_penalty": 1.2, "min_p": 0.1},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == REPLY_TEXT
    [body] = gemini.bodies()
    assert body["generationConfig"] == {"topK": 5, "maxOutputTokens": 50}
    assert body["systemInstruction"]["parts"] == [{"text": "Be kind."}]


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_e2e_blocked_prompt_is_a_real_400(anima_url: str, stream: bool) -> None:
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gemini/blocked", messages=CHAT, stream=stream)
    assert caught.value.status_code == 400
    assert caught.value.code == "content_filter"
    assert "reason SAFETY" in caught.value.message


async def test_gemini_e2e_quota_is_429(anima_url: str, gemini: GeminiState) -> None:
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gemini/quota", messages=CHAT)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert len(generations(gemini)) == 1  # quota is not retried: it would only burn more of it


async def test_gemini_e2e_server_error_is_retried_then_502(anima_url: str, gemini: GeminiState) -> None:
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="gemini/fail-500", messages=CHAT)
    assert caught.value.status_code == 502
    assert len(generations(gemini)) == 2  # retries=1


async def test_gemini_e2e_reasoning_content(anima_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)
    completion = await client.chat.completions.create(model="gemini/thinker", messages=CHAT)
    message = completion.choices[0].message
    assert message.content == REPLY_TEXT
    assert (message.model_extra or {}).get("reasoning_content") == THOUGHT
    stream = await client.chat.completions.create(model="gemini/thinker", messages=CHAT, stream=True)
    deltas = [c.choices[0].delta async for c in stream if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == THOUGHT
    assert "".join(d.content or "" for d in deltas) == REPLY_TEXT


async def test_gemini_e2e_sync_and_async_clients_together(anima_url: str) -> None:
    """The sync SDK in a thread while the async one streams: both get the whole reply."""
    sync = openai.OpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="unused", max_retries=0)

    def ask() -> str | None:
        return (
            sync.chat.completions.create(model="gemini/gemini-2.0-flash", messages=CHAT)
            .choices[0]
            .message.content
        )

    async def stream() -> str:
        chunks = await client.chat.completions.create(
            model="gemini/gemini-2.0-flash", messages=CHAT, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    assert list(await asyncio.gather(asyncio.to_thread(ask), stream())) == [REPLY_TEXT, REPLY_TEXT]


async def test_gemini_stall_after_the_first_byte_is_an_in_band_504_event(gemini_url: str) -> None:
    """Gemini sends one chunk, then nothing: the `backend_timeout` event naming the backend."""
    settings = make_settings(
        backends={"gemini": settings_for(gemini_url, timeout_s=1.0)},
        models=[RouteSettings(name="gemini/x", backend="gemini", model="x")],
        retries=0,
        sse_ping_s=0,
    )
    body = {"model": "gemini/stall", "messages": CHAT, "stream": True}
    with serving(create_app(settings)) as url:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(f"{url}/v1/chat/completions", json=body)
            plain = await http.post(f"{url}/v1/chat/completions", json=body | {"stream": False})
    assert resp.status_code == 200
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "backend_timeout" and "backend 'gemini' stopped sending" in error["message"]
    assert plain.status_code == 504 and plain.json()["error"]["code"] == "backend_timeout"


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
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_e2e_function_calls_as_tool_calls(anima_url: str, gemini: GeminiState, stream: bool) -> None:
    client = sdk(anima_url)
    completion: ChatCompletion
    if stream:
        with client.chat.completions.stream(
            model="gemini/gemini-2.0-flash", messages=ASK, tools=WEATHER, tool_choice="required"
        ) as events:
            for _ in events:
                pass
            completion = events.get_final_completion()
    else:
        completion = client.chat.completions.create(
            model="gemini/gemini-2.0-flash", messages=ASK, tools=WEATHER, tool_choice="required"
        )
    choice = completion.choices[0]
    calls = [c for c in choice.message.tool_calls or [] if c.type == "function"]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"location": "Paris"})
    ] * 2
    assert len({c.id for c in calls}) == 2
    [body] = gemini.bodies()
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather at a place.",
                    "parameters_json_schema": WEATHER[0]["function"]["parameters"],
                }
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


def test_gemini_e2e_tool_results_become_function_responses(anima_url: str, gemini: GeminiState) -> None:
    calls = [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
        }
        for i in (0, 1)
    ]
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"celsius": 21}'},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    completion = sdk(anima_url).chat.completions.create(
        model="gemini/gemini-2.0-flash",
        messages=history,
        tools=WEATHER,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert completion.choices[0].message.content == 'The tool said: [{"celsius": 21}, {"result": "sunny"}]'
    [body] = gemini.bodies()
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"id": f"call_{i}", "name": "get_weather", "args": {"location": "Paris"}}}
            for i in (0, 1)
        ],
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"id": "call_0", "name": "get_weather", "response": {"celsius": 21}}},
            {"functionResponse": {"id": "call_1", "name": "get_weather", "response": {"result": "sunny"}}},
        ],
    }
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }


def test_gemini_e2e_images_are_inline_data(anima_url: str, gemini: GeminiState) -> None:
    content: list[Any] = [
        {"type": "text", "text": "What is"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "text", "text": " this?"},
    ]
    sdk(anima_url).chat.completions.create(
        model="gemini/gemini-2.0-flash", messages=[{"role": "user", "content": content}]
    )
    [body] = gemini.bodies()
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "What is"},
                {"inlineData": {"mime_type": "image/png", "data": PIXEL}},
                {"text": " this?"},
            ],
        }
    ]
    remote: list[Any] = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as info:
        sdk(anima_url).chat.completions.create(
            model="gemini/gemini-2.0-flash", messages=[{"role": "user", "content": remote}]
        )
    assert info.value.code == "unsupported_parameter" and "data: URL" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_e2e_logprobs_in_openai_shape(anima_url: str, gemini: GeminiState, stream: bool) -> None:
    client = sdk(anima_url)
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="gemini/gemini-2.0-flash", messages=ASK, logprobs=True, top_logprobs=2, stream=True
            )
        )
        entries = [
            e
            for c in chunks
            if c.choices and c.choices[0].logprobs
            for e in c.choices[0].logprobs.content or []
        ]
    else:
        completion = client.chat.completions.create(
            model="gemini/gemini-2.0-flash", messages=ASK, logprobs=True, top_logprobs=2
        )
        entries = list((completion.choices[0].logprobs and completion.choices[0].logprobs.content) or [])
    assert [e.token for e in entries] == ["Hello", " from", " Gemini!"]
    assert [len(e.top_logprobs) for e in entries] == [2, 2, 2] and entries[0].logprob == -0.25
    [body] = gemini.bodies()
    assert body["generationConfig"]["responseLogprobs"] is True and body["generationConfig"]["logprobs"] == 2


def test_gemini_e2e_n_is_a_clear_400(anima_url: str, gemini: GeminiState) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(anima_url).chat.completions.create(model="gemini/gemini-2.0-flash", messages=ASK, n=2)
    assert info.value.code == "unsupported_parameter" and "'gemini'" in info.value.message
    assert gemini.requests == []


def test_gemini_e2e_embeddings(anima_url: str, gemini: GeminiState) -> None:
    result = sdk(anima_url).embeddings.create(
        model="gemini/text-embedding-004", input=["alpha", "beta"], dimensions=4
    )
    assert [d.embedding for d in result.data] == [
        pytest.approx(vector_of("alpha", 4), abs=1e-6),
        pytest.approx(vector_of("beta", 4), abs=1e-6),
    ]
    [request] = gemini.requests
    assert request["action"] == "batchEmbedContents"
    assert request["body"]["requests"][0] == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "alpha"}], "role": "user"},
        "outputDimensionality": 4,
    }


def test_gemini_e2e_audio_and_pdf_parts_are_inline_data(anima_url: str, gemini: GeminiState) -> None:
    content: list[Any] = [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    sdk(anima_url).chat.completions.create(
        model="gemini/gemini-2.0-flash", messages=[{"role": "user", "content": content}]
    )
    [body] = gemini.bodies()
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mime_type": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mime_type": "application/pdf", "data": "JVBERi0="}},
    ]
