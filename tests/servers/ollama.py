"""A local server speaking Ollama's HTTP API as the official `ollama` client expects it.

`/api/chat` streams NDJSON (or answers one JSON object when `stream` is false), `/api/tags` lists
models, `/api/show` describes one. Every request body is recorded. Scripted models:

    llama3.1     replies REPLY in three chunks, done_reason "stop", with token counts
    thinker      streams `thinking` first, then the reply
    fail-500     500 every time
    die          two chunks, then an error object inside the stream
    anything else not in MODELS: 404 {"error": "model 'x' not found"}

As Ollama does, any model given `tools` (and a last message that is not a tool result) streams its
calls whole, one per chunk, without ids (`get the weather` in TOOL_ARGS for the first tool, twice),
then `done` with done_reason "stop"; after tool results it answers TOOL_REPLY + their contents.
`logprobs` puts `[{token, logprob, top_logprobs}]` on each content chunk. `POST /api/embed` answers
`{"embeddings": [...], "prompt_eval_count"}`, one 8-dim vector per input (`vector_of`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers.openai_stub import vector_of

REPLY = ("Hello", " from", " Ollama!")
TOOL_ARGS = {"location": "Paris"}
TOOL_REPLY = "The tool said: "
MODELS = {"llama3.1": 8192, "thinker": 32768, "fail-500": 4096, "die": 4096}
CREATED = "2026-11-22T12:00:00.000000Z"


@dataclass
class OllamaState:
    requests: list[dict[str, Any]] = field(default_factory=list)


def _line(
    model: str,
    content: str = "",
    *,
    thinking: str | None = None,
    done: bool = False,
    calls: list[dict[str, Any]] | None = None,
    logprobs: int | None = None,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    part: dict[str, Any] = {"model": model, "created_at": CREATED, "message": message, "done": done}
    if logprobs is not None and content:
        alternatives = [{"token": content, "logprob": -0.5}] * logprobs
        part["logprobs"] = [{"token": content, "logprob": -0.25, "top_logprobs": alternatives}]
    if done:
        part |= {"done_reason": "stop", "total_duration": 1_000_000, "prompt_eval_count": 12, "eval_count": 3}
    return json.dumps(part).encode() + b"\n"


def ollama_app(state: OllamaState | None = None) -> Starlette:
    state = state or OllamaState()

    async def parts(model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        messages = body.get("messages") or [{}]
        if body.get("tools") and messages[-1].get("role") != "tool":
            name = body["tools"][0]["function"]["name"]
            for _ in range(2):
                yield _line(model, calls=[{"function": {"name": name, "arguments": TOOL_ARGS}}])
            yield _line(model, done=True)
            return
        reply: tuple[str, ...] = REPLY
        if messages[-1].get("role") == "tool":
            reply = (TOOL_REPLY, "; ".join(str(m["content"]) for m in messages if m.get("role") == "tool"))
        if model == "thinker":
            yield _line(model, thinking="Pondering.")
        top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
        for i, piece in enumerate(reply):
            yield _line(model, piece, logprobs=top)
            if model == "die" and i == 1:
                yield json.dumps({"error": "model runner crashed"}).encode() + b"\n"
                return
        yield _line(model, done=True)

    async def chat(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        model = body.get("model", "")
        if model not in MODELS:
            return JSONResponse({"error": f"model '{model}' not found"}, 404)
        if model == "fail-500":
            return JSONResponse({"error": "llama runner process has terminated"}, 500)
        if body.get("stream", True):
            return StreamingResponse(parts(model, body), media_type="application/x-ndjson")
        return JSONResponse(json.loads(_line(model, "".join(REPLY), done=True)))

    async def tags(_: Request) -> JSONResponse:
        models = [
            {"name": m, "model": m, "modified_at": CREATED, "size": 1, "digest": "sha256:0"} for m in MODELS
        ]
        return JSONResponse({"models": models})

    async def show(request: Request) -> JSONResponse:
        body = await request.json()
        state.requests.append(body)
        model = body.get("model", "")
        if model not in MODELS:
            return JSONResponse({"error": f"model '{model}' not found"}, 404)
        parameters = 'stop "<|eot_id|>"\nnum_ctx 16384' if model == "thinker" else 'stop "<|eot_id|>"'
        return JSONResponse(
            {
                "modelfile": "FROM x",
                "parameters": parameters,
                "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "family": "llama"},
                "model_info": {"general.architecture": "llama", "llama.context_length": MODELS[model]},
                "modified_at": CREATED,
            }
        )

    async def embed(request: Request) -> JSONResponse:
        body = await request.json()
        state.requests.append(body)
        model = body.get("model", "")
        if model not in MODELS:
            return JSONResponse({"error": f"model '{model}' not found"}, 404)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = [vector_of(str(t), int(body.get("dimensions") or 8)) for t in inputs]
        return JSONResponse(
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": 1000,
                "prompt_eval_count": 2 * len(inputs),
            }
        )

    routes = [
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/tags", tags),
        Route("/api/show", show, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.ollama = state
    return app
