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
    stall         one chunk, then nothing for 60 s (a stall after the first byte)
    late          the response's headers, then nothing for 60 s before the first chunk (a slow
                  model's prompt processing; its stream's outcome is recorded like `slow`'s)
    die           two chunks, then drops the connection
    slow          one chunk every 50 ms for 30 s (cancellation tests)
    profile-bad-first   a persona profile: prose around broken JSON, then JSON missing `traits`,
                        then a valid profile in a code fence on a 0-100 scale (the learn tests)
    profile-never       prose without JSON, every time
    mirror        "You said: " + the last user message (cross-talk tests)
    numbered      "Reply N:" then `words` words " wK", one chunk each, `delay_s` apart (N counts its
                  calls; the SillyTavern end-to-end check sets words/delay_s for its Stop flow);
                  when `script` holds a reply for the request (keyed by the content of one of its
                  messages, the latest that is a key), it streams that instead, word by word
                  (replaying a recorded SillyTavern flow: tests/fixtures/sillytavern/flows)
    one-write     the `echo` stream in a single write, its lines ended CRLF (the upstream parser's test)
    facts-*       fact extractors reading Anima's extraction prompt (tests/servers/facts_stub.py)

Every model also does what OpenAI does with these request fields:
    tools         with `tools` and a last message that is not a tool result: two parallel calls of the
                  first tool (one if `parallel_tool_calls` is false), id "call_0"/"call_1", arguments
                  streamed in fragments, finish_reason "tool_calls"; after tool results: TOOL_REPLY
                  quoting their contents
    logprobs      each content chunk carries a `logprobs.content` entry (+ `top_logprobs` alternatives)
    n             each choice streamed under its own index ("choice i: " + REPLY), all finishing

`POST /v1/completions` (legacy, streaming or not), `POST /v1/embeddings` (float or base64, one vector
per input, 8 dims derived from the text) and `POST /v1/moderations` (an echo, for passthrough tests)
answer as OpenAI does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from memory.summaries import INSTRUCTION as SUMMARY_INSTRUCTION
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
    received: list[float] = field(default_factory=list)  # time.time() of each request, in order
    peers: list[int] = field(default_factory=list)  # the client port of each chat request (keep-alive)
    words: int = 4  # `numbered`: words after "Reply N:"
    delay_s: float = 0.0  # `numbered`: pause between chunks
    script: dict[str, list[str]] = field(default_factory=dict)  # `numbered`: message content → replies

    def last_chat(self) -> dict[str, Any]:
        """The newest request a client's turn caused. The summary and fact workers send their own
        requests in the background, and one may land after the turn a test just made."""
        chats = [request for request in self.requests if not background(request)]
        assert chats, "no chat request reached the stub"
        return chats[-1]


def background(request: Mapping[str, Any]) -> bool:
    """A memory worker's request: fact extraction (asks for a JSON schema) or a summary."""
    contents = [str(m.get("content", "")) for m in request.get("messages", [])]
    return "response_format" in request or any(c.startswith(SUMMARY_INSTRUCTION) for c in contents)


def _chunk(
    delta: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    *,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "stub",
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


TOOL_ARGS = ('{"loc', 'ation": "Par', 'is"}')
TOOL_REPLY = "The tool said: "


def tool_call_chunks(body: dict[str, Any]) -> list[bytes]:
    """OpenAI's stream of parallel tool calls: per call a head (id, type, name, empty arguments), then
    argument fragments carrying only `index` and `function.arguments`."""
    name = body["tools"][0]["function"]["name"]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
    count = 1 if body.get("parallel_tool_calls") is False else 2
    chunks = []
    for i in range(count):
        head = {
            "index": i,
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        delta: dict[str, Any] = {"tool_calls": [head]}
        if i == 0:
            delta = {"role": "assistant", "content": None, **delta}
        chunks.append(_chunk(delta))
        for fragment in TOOL_ARGS:
            chunks.append(_chunk({"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}))
    chunks += [_chunk({}, "tool_calls", USAGE), b"data: [DONE]\n\n"]
    return chunks


def tool_reply(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    results = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
    return (TOOL_REPLY, "; ".join(results))


def _logprobs(piece: str, body: dict[str, Any]) -> dict[str, Any] | None:
    if not body.get("logprobs"):
        return None
    top = [{"token": piece, "logprob": -0.5, "bytes": list(piece.encode())}]
    alternatives = top * int(body.get("top_logprobs") or 0)
    entry = {"token": piece, "logprob": -0.25, "bytes": list(piece.encode()), "top_logprobs": alternatives}
    return {"content": [entry], "refusal": None}


def n_chunks(n: int) -> list[bytes]:
    """n choices interleaved step by step, as OpenAI streams them; usage once, in a choice-less chunk."""
    chunks = [_chunk({"role": "assistant", "content": ""}, index=i) for i in range(n)]
    for step in range(len(REPLY) + 1):
        chunks += [
            _chunk({"content": f"choice {i}: " if step == 0 else REPLY[step - 1]}, index=i) for i in range(n)
        ]
    chunks += [_chunk({}, "stop", index=i) for i in range(n)]
    return [*chunks, _usage_chunk(), b"data: [DONE]\n\n"]


def _usage_chunk() -> bytes:
    body = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": "stub"}
    return b"data: " + json.dumps(body | {"choices": [], "usage": USAGE}).encode() + b"\n\n"


def completion_object(body: dict[str, Any], text: str, finish: str | None = "length") -> dict[str, Any]:
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": int(time.time()),
        "model": str(body.get("model")),
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": USAGE,
    }


async def completion_chunks(body: dict[str, Any]) -> AsyncIterator[bytes]:
    for i, piece in enumerate(REPLY):
        last = i == len(REPLY) - 1
        chunk = completion_object(body, piece, "length" if last else None)
        if not last:
            del chunk["usage"]
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def vector_of(text: str, dims: int = 8) -> list[float]:
    """A deterministic unit-free vector from the text, so tests can check which input is which."""
    return [float((len(text) * (i + 1) + sum(map(ord, text))) % 97) / 97 for i in range(dims)]


def embedding_list(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i, text in enumerate(inputs):
        vector: Any = vector_of(str(text), int(body.get("dimensions") or 8))
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": len(inputs) * 2, "total_tokens": len(inputs) * 2}
    return {"object": "list", "data": data, "model": str(body.get("model")), "usage": usage}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "stub_error", "param": None, "code": None}}, status
    )


def _scripted(state: StubState, body: dict[str, Any]) -> str | None:
    """The next scripted reply for the latest message of `body` that has one (so a summary request,
    whose messages are not the client's, never takes a reply meant for a chat request)."""
    for message in reversed(body.get("messages", [])):
        replies = state.script.get(str(message.get("content")))
        if replies:
            return replies.pop(0)
    return None


def stub_app(state: StubState | None = None) -> Starlette:
    state = state or StubState()

    async def scripted(model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        if body.get("tools") and body["messages"][-1].get("role") != "tool":
            for raw in tool_call_chunks(body):
                yield raw
            return
        if (body.get("n") or 1) > 1:
            for raw in n_chunks(body["n"]):
                yield raw
            return
        reply = scripted_text(model, state.calls[model])
        if model.startswith("facts-"):
            reply = (facts_stub.answer(model, state.calls[model], str(body["messages"][-1]["content"])),)
        elif body["messages"][-1].get("role") == "tool":
            reply = tool_reply(body["messages"])
        if model == "mirror":
            said = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
            reply = ("You said: ", str(said))
        if model == "reason":
            yield _chunk({"role": "assistant", "reasoning_content": "Let me think."})
        if model == "numbered":
            words = [f"Reply {state.calls[model]}:", *(f" w{i}" for i in range(state.words))]
            scripted = _scripted(state, body)
            if scripted is not None:
                words = re.split(r"(?=\s)", scripted)
            for i, word in enumerate(words):
                await asyncio.sleep(state.delay_s if i else 0)
                yield _chunk({"content": word})
            reply = ()
        if model == "late":
            await asyncio.sleep(60)
        if model == "slow":
            for i in range(600):
                yield _chunk({"content": f"tick{i} "})
                await asyncio.sleep(0.05)
        for i, piece in enumerate(reply):
            yield _chunk({"content": piece}, logprobs=_logprobs(piece, body))
            if model == "stall":
                await asyncio.sleep(60)
            if model == "die" and i == 1:
                raise ConnectionResetError("stub dropped the connection")
        yield _chunk({}, "stop", None if model == "no-usage" else USAGE)
        yield b"data: [DONE]\n\n"

    async def one_write(model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """`one-write`: the whole `echo` stream in one write, lines ended CRLF (both are allowed)."""
        yield b"".join([piece async for piece in scripted("echo", body)]).replace(b"\n", b"\r\n")

    async def tracked(model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        if model == "one-write":
            async for piece in one_write(model, body):
                yield piece
            return
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
        state.received.append(time.time())
        state.headers.append(dict(request.headers))
        state.peers.append(request.client.port if request.client else 0)
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
        names = ["echo", "reason", "slow", "numbered"]
        return JSONResponse(
            {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "stub"} for n in names]}
        )

    async def completions(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        if body.get("model") == "bad-400":
            return _error(400, "stub does not like this request")
        if body.get("stream"):
            return StreamingResponse(completion_chunks(body), media_type="text/event-stream")
        return JSONResponse(completion_object(body, "".join(REPLY)))

    async def embeddings(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        if body.get("model") == "bad-400":
            return _error(400, "stub does not like this request")
        return JSONResponse(embedding_list(body))

    async def moderations(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        return JSONResponse(
            {"id": "modr-stub", "model": "stub", "results": [{"flagged": False}], "echo": body}
        )

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/moderations", moderations, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )
    app.state.stub = state
    return app
