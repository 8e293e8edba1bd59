"""A local server speaking Ollama's HTTP API as the official `ollama` client expects it.

`/api/chat` streams NDJSON (or answers one JSON object when `stream` is false), `/api/tags` lists
models, `/api/show` describes one. Every request body is recorded. Scripted models:

    llama3.1     replies REPLY in three chunks, done_reason "stop", with token counts
    thinker      streams `thinking` first, then the reply
    fail-500     500 every time
    die          two chunks, then an error object inside the stream
    anything else not in MODELS: 404 {"error": "model 'x' not found"}
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

REPLY = ("Hello", " from", " Ollama!")
MODELS = {"llama3.1": 8192, "thinker": 32768, "fail-500": 4096, "die": 4096}
CREATED = "2026-11-22T12:00:00.000000Z"


@dataclass
class OllamaState:
    requests: list[dict[str, Any]] = field(default_factory=list)


def _line(model: str, content: str = "", *, thinking: str | None = None, done: bool = False) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    part: dict[str, Any] = {"model": model, "created_at": CREATED, "message": message, "done": done}
    if done:
        part |= {"done_reason": "stop", "total_duration": 1_000_000, "prompt_eval_count": 12, "eval_count": 3}
    return json.dumps(part).encode() + b"\n"


def ollama_app(state: OllamaState | None = None) -> Starlette:
    state = state or OllamaState()

    async def parts(model: str) -> AsyncIterator[bytes]:
        if model == "thinker":
            yield _line(model, thinking="Pondering.")
        for i, piece in enumerate(REPLY):
            yield _line(model, piece)
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
            return StreamingResponse(parts(model), media_type="application/x-ndjson")
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

    routes = [
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/tags", tags),
        Route("/api/show", show, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.ollama = state
    return app
