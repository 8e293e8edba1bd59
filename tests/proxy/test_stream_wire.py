"""The stream's wire format after the CPU work of issue 15: upstream SSE read as bytes a read at a time
(`SSELines`), chunks dumped with orjson and sent a read's worth at a time, and `EventStream` (pings,
headers) in place of sse-starlette. The OpenAI SDK and a raw reader must see what they saw before."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.backends.openai_wire import SSELines
from proxy.main import create_app
from proxy.setting_groups import BackendSettings
from tests.conftest import make_settings, stub_routes
from tests.servers.openai_stub import USAGE, StubState
from tests.servers.runner import serving

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def lines_of(*reads: bytes) -> list[bytes]:
    parser = SSELines()
    return [line for data in reads for line in parser.feed(data)] + parser.flush()


def test_sse_lines_end_at_lf_crlf_or_cr_wherever_the_reads_cut_them() -> None:
    whole = [b"data: a", b"", b"data: b", b"", b"data: c"]
    assert lines_of(b"data: a\n\ndata: b\n\ndata: c") == whole
    assert lines_of(b"data: a\r\n\r\ndata: b\r\n\r\ndata: c\r\n") == whole
    assert lines_of(b"data: a\r\rdata: b\r\rdata: c\r") == whole
    assert lines_of(b"data: a\r", b"\n\r\nda", b"ta: b\r\n", b"\r\ndata: c") == whole  # CRLF cut in two
    assert lines_of(b"data: \xc3", b"\xa9\n") == [b"data: \xc3\xa9"]  # UTF-8 cut in two: bytes, not text


def test_sse_lines_hold_an_unfinished_line_until_its_end_comes() -> None:
    parser = SSELines()
    assert parser.feed(b'data: {"a"') == []
    assert parser.feed(b": 1}\n") == [b'data: {"a": 1}']
    assert parser.flush() == []


async def test_a_stream_sent_in_one_write_with_crlf_reaches_the_client_whole(
    anima_url: str, stub: StubState
) -> None:
    """Every event of one upstream read goes out together; the client still gets each chunk."""
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="test", max_retries=0)
    expected = await client.chat.completions.create(model="stub/echo", messages=HELLO)
    stream = await client.chat.completions.create(
        model="stub/one-write",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == USAGE["total_tokens"]


async def test_the_chunks_keep_openais_exact_shape(anima_url: str, stub: StubState) -> None:
    body = {
        "model": "stub/echo",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{anima_url}/v1/chat/completions", json=body)
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["cache-control"] == "no-store" and resp.headers["x-accel-buffering"] == "no"
    events = resp.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-2]]
    keys = ["id", "object", "created", "model", "choices"]
    assert all(list(c)[:5] == keys and c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
    ]
    content = chunks[1]["choices"][0]
    assert list(content) == ["index", "delta", "finish_reason", "logprobs"] and list(content["delta"]) == [
        "content"
    ]
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]
    assert chunks[-1]["choices"] == [] and list(chunks[-1]["usage"]) == [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ]
    assert "usage" not in chunks[0] and len({c["id"] for c in chunks}) == 1


@pytest.fixture(scope="module")
def pinging_url(stub_url: str) -> Iterator[str]:
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1", timeout_s=60.0)},
        models=stub_routes()[:1],
        sse_ping_s=0.05,
    )
    with serving(create_app(settings)) as url:
        yield url


async def test_a_slow_reply_is_kept_alive_with_comment_pings(pinging_url: str, stub: StubState) -> None:
    stub.delay_s, stub.words = 0.3, 3
    try:
        body = {"model": "stub/numbered", "messages": HELLO, "stream": True}
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(f"{pinging_url}/v1/chat/completions", json=body)
    finally:
        stub.delay_s, stub.words = 0.0, 4
    lines = resp.text.split("\n")
    assert any(line.startswith(": ping") for line in lines)
    content = [orjson.loads(line[6:]) for line in lines if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content if c["choices"])
    assert text == "Reply 1: w0 w1 w2"
