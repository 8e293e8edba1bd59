"""`POST /v1/completions` (legacy text completion) and every other `/v1/*` route Anima does not serve
itself, relayed as sent to an OpenAI-compatible backend: bodies and streams byte for byte, errors as
Anima's OpenAI errors naming the backend. No persona, memory or emotion: these are not chats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from proxy.backends.base import BackendCannot, status_error
from proxy.backends.openai_compat import OpenAICompatBackend
from proxy.backends.openai_wire import error_text
from proxy.deps import PipelineDep, SettingsDep
from proxy.protocol import CompletionRequest

if TYPE_CHECKING:
    import aiohttp

router = APIRouter()  # /v1/completions, under every prefix
fallback = APIRouter()  # the catch-all, under /v1 only, included last
_RELAYED = ("content-type", "accept", "openai-beta")
_KEPT = ("content-type", "cache-control")  # of the upstream's headers


@router.post("/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request, pipeline: PipelineDep) -> Response:
    """The model's primary route; only OpenAI-compatible servers have a legacy completions API."""
    route = pipeline.registry.resolve(body.model)[0]
    if not isinstance(route.backend, OpenAICompatBackend):
        raise BackendCannot(
            route.backend.name, route.model, "do legacy completions: use /v1/chat/completions", param="model"
        )
    sent = orjson.loads(await request.body()) | {"model": route.model}
    return await relay(route.backend, "POST", "/completions", orjson.dumps(sent), request)


@fallback.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    response_model=None,
    include_in_schema=False,
)
async def passthrough(path: str, request: Request, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    """Configured: forwarded to `ANIMA_PASSTHROUGH`'s backend. Otherwise a 404 that says why (or the
    405 a route Anima serves with other methods deserves)."""
    if settings.passthrough is None:
        raise _unserved(request)
    backend = pipeline.registry.backends[settings.passthrough]
    assert isinstance(backend, OpenAICompatBackend)  # the settings validator checked the kind
    target = f"/{path}" + (f"?{request.url.query}" if request.url.query else "")
    return await relay(backend, request.method, target, await request.body(), request)


def _unserved(request: Request) -> HTTPException:
    allowed = _methods_served(request)
    if allowed:
        return HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
    return HTTPException(
        404,
        f"Anima does not serve {request.method} {request.url.path}. To forward such routes to an"
        " OpenAI-compatible backend, set ANIMA_PASSTHROUGH to that backend's name.",
    )


def _methods_served(request: Request) -> set[str]:
    """The methods Anima's own routes take at this path (from the OpenAI schema, which omits the
    catch-all), so a wrong method on a real route stays a 405."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in operations}
    return methods


async def relay(
    backend: OpenAICompatBackend, method: str, path: str, body: bytes, request: Request
) -> Response:
    """Forward and stream the answer back; a client that goes away closes the upstream request."""
    headers = {k: v for k, v in request.headers.items() if k in _RELAYED}
    upstream = await backend.forward(method, path, body, headers)
    if upstream.status >= 400:
        try:
            detail = error_text(await upstream.read(), upstream.reason)
        finally:
            upstream.release()
        raise status_error(backend.name, upstream.status, detail)
    kept = {k: upstream.headers[k] for k in _KEPT if k in upstream.headers}
    return StreamingResponse(_bytes(upstream), status_code=upstream.status, headers=kept)


async def _bytes(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it comes; a client gone closes the upstream connection (release of a response
    not read to its end closes it rather than pooling it)."""
    try:
        async for piece in upstream.content.iter_any():
            yield piece
    finally:
        upstream.release()
