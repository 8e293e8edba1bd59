"""The yardstick of bench/overhead.py: a minimal OpenAI pass-through in Starlette + httpx.

It reads the model (as any routing proxy must), forwards the body and relays the answer byte for byte.
Nothing else: what Anima costs beyond this is the price of what it does. `PASSTHROUGH_UPSTREAM` (ends
in /v1) and `PASSTHROUGH_MODEL` say where to; run with uvicorn `--factory`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def app() -> Starlette:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    client = httpx.AsyncClient(base_url=os.environ["PASSTHROUGH_UPSTREAM"], timeout=60, limits=limits)
    model = os.environ.get("PASSTHROUGH_MODEL", "echo")

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body()) | {"model": model}
        upstream = client.build_request("POST", "/chat/completions", content=orjson.dumps(body))
        reply = await client.send(upstream, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for part in reply.aiter_raw():
                    yield part
            finally:
                await reply.aclose()

        kind = reply.headers.get("content-type")
        return StreamingResponse(relay(), status_code=reply.status_code, media_type=kind)

    async def models(request: Request) -> Response:
        return Response((await client.get("/models")).content, media_type="application/json")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    return Starlette(routes=routes)
