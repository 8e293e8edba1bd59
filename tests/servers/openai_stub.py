"""An OpenAI-compatible chat server with scripted behaviour, chosen by the requested model name.

It records every request body and how each stream ended, so tests can check what Anima sent and
that a client disconnect really cancelled the upstream request. Also the "instant backend" of
`bench/overhead.py`.

    echo          streams REPLY in three chunks, with usage
    reason        streams reasoning_content, then content
    no-usage      like echo, without usage
    fail-500      500 every time              bad-400   400 every time
    flaky-N       500 for the first N calls, then like echo
    rate-limited  429
    hang          accepts, then sends nothing for 60 s
    die           two chunks, then drops the connection
    slow          one chunk every 50 ms for 30 s (cancellation tests)
    profile-bad-first   a persona profile: prose around broken JSON, then JSON missing `traits`,
                        then a valid profile in a code fence on a 0-100 scale (the learn tests)
    profile-never       prose without JSON, every time
    mirror        "You said: " + the last user message (cross-talk tests)
    facts-*       fact extractors reading Anima's extraction prompt (tests/servers/facts_stub.py)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import facts_stub

REPLY = ("Hello", " from the", " stub!")
PROFILE = {
    "summary": "A cheerful baker who talks about bread and her dog.",
    "traits": {
        "openness": 70,
        "conscientiousness": 40,
        "extraversion": 85,
        "agreeableness": 80,
        "neuroticism": 20,
        "humor": 90,
        "empathy": 75,
        "formality": 10,
        "directness": 60,
        "enthusiasm": 95,
    },
    "extra_traits": {"playful": 80},
    "communication_style": "Short bursts, lots of exclamation marks and emoji.",
    "interests": ["sourdough", "dogs"],
    "mood_patterns": "Upbeat; grumpy before coffee.",
}
PROFILE_TRIES = (
    "Sure! Here is the profile: {'summary': 'A baker', traits: {openness: 0.7,",
    '{"summary": "A baker.", "communication_style": "short"}',
    "```json\n" + json.dumps(PROFILE, indent=1)[:-2] + ",\n}\n```",
)


def scripted_text(model: str, call: int) -> tuple[str, ...]:
    if model == "profile-bad-first":
        return (PROFILE_TRIES[min(call, len(PROFILE_TRIES)) - 1],)
    if model == "profile-never":
        return ("I would rather not write JSON today.",)
    return REPLY


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


@dataclass
class StubState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    outcomes: list[str] = field(default_factory=list)  # "completed" | "cancelled", per stream


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "stub",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "stub_error", "param": None, "code": None}}, status
    )


def stub_app(state: StubState | None = None) -> Starlette:
    state = state or StubState()

    async def scripted(model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        reply = scripted_text(model, state.calls[model])
        if model.startswith("facts-"):
            reply = (facts_stub.answer(model, state.calls[model], str(body["messages"][-1]["content"])),)
        if model == "mirror":
            said = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
            reply = ("You said: ", str(said))
        if model == "reason":
            yield _chunk({"role": "assistant", "reasoning_content": "Let me think."})
        if model == "slow":
            for i in range(600):
                yield _chunk({"content": f"tick{i} "})
                await asyncio.sleep(0.05)
        for i, piece in enumerate(reply):
            yield _chunk({"content": piece})
            if model == "die" and i == 1:
                raise ConnectionResetError("stub dropped the connection")
        yield _chunk({}, "stop", None if model == "no-usage" else USAGE)
        yield b"data: [DONE]\n\n"

    async def tracked(model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        try:
            async for piece in scripted(model, body):
                yield piece
        except asyncio.CancelledError:
            state.outcomes.append("cancelled")
            raise
        state.outcomes.append("completed")

    async def chat(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        model = str(body.get("model"))
        state.calls[model] += 1
        if model == "fail-500":
            return _error(500, "stub exploded")
        if model == "bad-400":
            return _error(400, "stub does not like this request")
        if model == "rate-limited":
            return _error(429, "stub quota exhausted")
        if model.startswith("flaky-") and state.calls[model] <= int(model.split("-")[1]):
            return _error(503, "stub warming up")
        if model == "hang":
            await asyncio.sleep(60)
        return StreamingResponse(tracked(model, body), media_type="text/event-stream")

    async def models(_: Request) -> JSONResponse:
        names = ["echo", "reason", "slow"]
        return JSONResponse(
            {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "stub"} for n in names]}
        )

    app = Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    )
    app.state.stub = state
    return app
