"""A recording reverse proxy between SillyTavern and Anima: every request it passes on is kept
(path, the headers that matter, JSON body), tagged with the flow that was running. These records
become the fixtures in tests/fixtures/sillytavern/flows/."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

# Headers a fixture keeps: what can change how Anima recognises a chat or a user.
KEPT_HEADERS = ("authorization", "content-type", "user-agent", "accept")
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}


@dataclass
class Recording:
    flow: str
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | None = None
    reply: str | None = None  # the text Anima answered (streamed or not), as far as the client read it
    completed: bool = False  # False: the client hung up first (Stop)

    def fixture(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "reply": self.reply,
            "completed": self.completed,
        }


@dataclass
class RecorderState:
    upstream: str
    flow: str = "setup"
    records: list[Recording] = field(default_factory=list)

    def of(self, flow: str) -> list[Recording]:
        return [r for r in self.records if r.flow == flow]


def _kept(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k in KEPT_HEADERS or k.startswith("x-")}


def answer_text(raw: bytes, content_type: str) -> str | None:
    """The assistant text in a chat-completion answer: SSE deltas joined, or the JSON message."""
    try:
        if "text/event-stream" in content_type:
            parts = []
            for line in raw.decode(errors="replace").splitlines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    parts.append(choices[0].get("delta", {}).get("content") or "")
            return "".join(parts)
        if "json" in content_type:
            choices = json.loads(raw).get("choices")
            return str(choices[0]["message"].get("content") or "") if choices else None
    except (ValueError, KeyError, IndexError, AttributeError):
        return None
    return None


def recorder_app(state: RecorderState) -> Starlette:
    client = httpx.AsyncClient(base_url=state.upstream, timeout=httpx.Timeout(600, connect=10))

    async def forward(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        record = Recording(state.flow, time.time(), request.method, request.url.path, _kept(request), body)
        state.records.append(record)
        headers = {k: v for k, v in request.headers.items() if k not in HOP_HEADERS}
        upstream = client.build_request(
            request.method, request.url.path, params=request.query_params, headers=headers, content=raw
        )
        reply = await client.send(upstream, stream=True)
        record.status = reply.status_code

        async def relay() -> AsyncIterator[bytes]:
            seen = bytearray()
            try:  # a client that hangs up (Stop) cancels this, which closes the upstream request
                async for chunk in reply.aiter_raw():
                    seen += chunk
                    yield chunk
                record.completed = True
            finally:
                record.reply = answer_text(bytes(seen), reply.headers.get("content-type", ""))
                await reply.aclose()

        passed = {k: v for k, v in reply.headers.items() if k not in HOP_HEADERS | {"content-encoding"}}
        return StreamingResponse(relay(), reply.status_code, headers=passed)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
