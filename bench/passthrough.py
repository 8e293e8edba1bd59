"""The yardstick of bench/overhead.py: a minimal OpenAI pass-through in Starlette + httpx.

It reads the model (as any routing proxy must), forwards the body and relays the answer byte for byte.
Nothing else: what Anima costs beyond this is the price of what it does. `PASSTHROUGH_UPSTREAM` (ends
in /v1) and `PASSTHROUGH_MODEL` say where to; run with uvicorn `--factory`.

`app_aiohttp` is the same pass-through over aiohttp, the client Anima's OpenAI-compatible backend uses
(proxy/backends/upstream.py): httpx costs several times aiohttp's CPU per streamed reply
(bench/upstream_client.py), so against `app` a proxy gains that much by its client alone. The overhead
bench's `aiopass` target runs it, a stricter yardstick beside the issue's.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
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


def app_aiohttp() -> Starlette:
    upstream, model = os.environ["PASSTHROUGH_UPSTREAM"], os.environ.get("PASSTHROUGH_MODEL", "echo")
    sessions: list[aiohttp.ClientSession] = []  # opened in the server's loop, on first use

    def session() -> aiohttp.ClientSession:
        if not sessions:
            connector = aiohttp.TCPConnector(limit=200, keepalive_timeout=5)
            timeout, jar = aiohttp.ClientTimeout(total=None, sock_read=60), aiohttp.DummyCookieJar()
            sessions.append(aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=jar))
        return sessions[0]

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body()) | {"model": model}
        headers = {"content-type": "application/json"}
        url = f"{upstream}/chat/completions"
        reply = await session().post(url, data=orjson.dumps(body), headers=headers, allow_redirects=False)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for part in reply.content.iter_any():
                    yield part
            finally:
                reply.release()

        kind = reply.headers.get("content-type")
        return StreamingResponse(relay(), status_code=reply.status, media_type=kind)

    async def models(request: Request) -> Response:
        async with session().get(f"{upstream}/models") as reply:
            return Response(await reply.read(), media_type="application/json")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    return Starlette(routes=routes)
