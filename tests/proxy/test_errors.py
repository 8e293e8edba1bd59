"""Every failure becomes a clear OpenAI error: a real status before the first byte, in-band after it."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.main import create_app
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.conftest import closed_port, make_settings
from tests.servers.openai_stub import StubState
from tests.servers.runner import serving

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
async def test_dead_backend_is_502_naming_it_before_any_stream(anima_url: str, stream: bool) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"{anima_url}/v1/chat/completions",
            json={"model": "dead/model", "messages": HELLO, "stream": stream},
        )
    assert resp.status_code == 502
    assert resp.reason_phrase.startswith("Bad Gateway: backend 'dead' is unreachable")
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert "backend 'dead' is unreachable" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_backend_timeout_is_504(anima_url: str, stub: StubState, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(anima_url).chat.completions.create(model="stub/hang", messages=HELLO, stream=stream)
    assert info.value.status_code == 504
    assert info.value.code == "backend_timeout"
    assert stub.calls["hang"] == 1  # a stalled backend is not asked again


def test_server_errors_are_retried_then_reported_as_502(anima_url: str, stub: StubState) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(anima_url).chat.completions.create(model="stub/fail-500", messages=HELLO)
    assert info.value.status_code == 502
    assert "stub exploded" in info.value.message
    assert stub.calls["fail-500"] == 3  # the first try and two retries


def test_flaky_backend_succeeds_after_retries(anima_url: str, stub: StubState) -> None:
    completion = client(anima_url).chat.completions.create(model="stub/flaky-2", messages=HELLO, stream=False)
    assert completion.choices[0].message.content == "Hello from the stub!"
    assert stub.calls["flaky-2"] == 3


def test_client_errors_from_backend_pass_through_without_retry(anima_url: str, stub: StubState) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(anima_url).chat.completions.create(model="stub/bad-400", messages=HELLO)
    assert "stub does not like this request" in info.value.message
    assert stub.calls["bad-400"] == 1


def test_backend_rate_limit_is_429(anima_url: str, stub: StubState) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client(anima_url).chat.completions.create(model="stub/rate-limited", messages=HELLO)
    assert info.value.code == "rate_limit_exceeded"


def test_fallback_chain_answers_when_the_primary_fails(anima_url: str, stub: StubState) -> None:
    raw = client(anima_url).chat.completions.with_raw_response.create(model="broken", messages=HELLO)
    assert raw.parse().choices[0].message.content == "Hello from the stub!"
    assert raw.parse().model == "broken"
    assert [r["model"] for r in stub.requests] == ["fail-500", "fail-500", "fail-500", "echo"]


def test_backend_dying_mid_stream_is_an_sse_error_the_sdk_raises(anima_url: str, stub: StubState) -> None:
    stream = client(anima_url).chat.completions.create(model="stub/die", messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from the"
    assert "backend 'stub' broke off the reply" in info.value.message


async def test_mid_stream_error_event_is_openai_shaped_and_ends_stream(
    anima_url: str, stub: StubState
) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"{anima_url}/v1/chat/completions", json={"model": "stub/die", "messages": HELLO, "stream": True}
        )
    assert resp.status_code == 200
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    last = json.loads(events[-1])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert "[DONE]" not in events


def test_backend_dying_without_streaming_is_502(anima_url: str, stub: StubState) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(anima_url).chat.completions.create(model="stub/die", messages=HELLO)
    assert info.value.status_code == 502


async def _wait_for_outcome(stub: StubState, timeout_s: float = 5.0) -> list[str]:
    for _ in range(int(timeout_s / 0.05)):
        if stub.outcomes:
            break
        await asyncio.sleep(0.05)
    return stub.outcomes


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_the_upstream_request(
    anima_url: str, stub: StubState, stream: bool
) -> None:
    body = {"model": "stub/slow", "messages": HELLO, "stream": stream}
    async with httpx.AsyncClient() as http:
        if stream:
            async with http.stream("POST", f"{anima_url}/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if "tick2" in line:
                        break  # leaving the block closes the connection mid-stream
        else:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"{anima_url}/v1/chat/completions", json=body, timeout=0.5)
    assert await _wait_for_outcome(stub) == ["cancelled"]


async def test_health_reports_each_backend(anima_url: str) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{anima_url}/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "degraded"
    assert body["backends"]["stub"]["status"] == "ok"
    assert body["backends"]["dead"]["status"] == "down"


async def test_health_is_503_when_no_backend_answers() -> None:
    settings = make_settings(
        backends={"dead": BackendSettings(kind="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1")},
        models=[RouteSettings(name="dead/x", backend="dead", model="x")],
    )
    with serving(create_app(settings)) as url:
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{url}/health")
            live, ready = await http.get(f"{url}/health/live"), await http.get(f"{url}/health/ready")
    assert resp.status_code == 503
    assert resp.json()["status"] == "unavailable"
    # A backend being down is not Anima being unhealthy: the container check and readiness stay up.
    assert live.status_code == 200 and live.json()["status"] == "live"
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "database": {"status": "disabled"},
        "emotion": {"status": "disabled"},
    }


async def test_unknown_route_and_method_are_openai_errors(anima_url: str) -> None:
    async with httpx.AsyncClient() as http:
        missing = await http.get(f"{anima_url}/v1/nothing-here")
        wrong = await http.get(f"{anima_url}/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_a_non_streaming_error_says_why_in_its_reason_phrase(stub_url: str, http: str) -> None:
    """Issue 11 item 9: SillyTavern 1.19 shows a non-streaming error as its reason phrase only, and it
    was the bare "Bad Gateway"."""
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")},
        models=[RouteSettings(name="stub/fail-500", backend="stub", model="fail-500")],
        retries=0,
    )
    with serving(create_app(settings), http=http) as url:
        body = {"model": "stub/fail-500", "messages": HELLO}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        ok = httpx.get(f"{url}/v1/models", timeout=60)
    assert response.status_code == 502 and "stub exploded" in response.reason_phrase
    assert "x-anima-reason" not in response.headers
    assert ok.reason_phrase == "OK"


def _error_event(text: str) -> dict[str, str]:
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    error: dict[str, str] = json.loads(events[-1])["error"]
    return error


async def test_stall_after_the_first_byte_is_an_in_band_504_event(anima_url: str, stub: StubState) -> None:
    """The upstream sends one chunk, then nothing: the documented `backend_timeout` event, with a
    message saying so (issue 12, item 10), not a `backend_error` with an empty message."""
    body = {"model": "stub/stall", "messages": HELLO, "stream": True}
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(f"{anima_url}/v1/chat/completions", json=body)
        plain = await http.post(f"{anima_url}/v1/chat/completions", json=body | {"stream": False})
    assert resp.status_code == 200
    error = _error_event(resp.text)
    assert error["code"] == "backend_timeout" and "backend 'stub'" in error["message"]
    assert "stopped sending" in error["message"]
    assert plain.status_code == 504 and plain.json()["error"]["code"] == "backend_timeout"
