"""An instant OpenAI-compatible backend for the overhead bench: it answers at once, in OpenAI's format.

Each reply is a role-play line that varies with the request, as a real model's does (the test stub's
fixed "Hello from the stub!" would make every stored reply of a growing chat the same text, which no
real chat is). Usage is reported as OpenAI reports it: always without streaming, and with streaming
only in a last chunk when `stream_options.include_usage` asks for it. Run with uvicorn `--factory`.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

BOT = json.loads(Path(__file__).with_name("sillytavern_chat.json").read_text())["bot_turn"]
PIECES = 8  # content chunks per streamed reply


def reply_for(body: dict[str, Any]) -> str:
    """The character's line, numbered after the user's newest message (so replies differ)."""
    last = next((m.get("content") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
    return str(BOT.format(n=zlib.crc32(str(last).encode()) % 100_000))


def usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4
    done = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def events(body: dict[str, Any], text: str) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = body.get("model", "")
    words = text.split(" ")
    step = -(-len(words) // PIECES)
    yield chunk(base, {"role": "assistant", "content": ""})
    for i in range(0, len(words), step):
        yield chunk(base, {"content": " ".join(words[i : i + step]) + (" " if i + step < len(words) else "")})
    yield chunk(base, {}, "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        yield b"data: " + orjson.dumps(base | {"choices": [], "usage": usage(body, text)}) + b"\n\n"
    yield b"data: [DONE]\n\n"


async def chat(request: Request) -> Response:
    body = orjson.loads(await request.body())
    text = reply_for(body)
    if body.get("stream"):
        return StreamingResponse(events(body, text), media_type="text/event-stream")
    message = {"role": "assistant", "content": text}
    reply = {"id": "chatcmpl-instant", "object": "chat.completion", "created": int(time.time())}
    reply |= {"model": body.get("model", ""), "usage": usage(body, text)}
    reply["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
    return Response(orjson.dumps(reply), media_type="application/json")


async def models(request: Request) -> Response:
    return Response(orjson.dumps({"object": "list", "data": [{"id": "echo", "object": "model"}]}))


def app() -> Starlette:
    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    )
