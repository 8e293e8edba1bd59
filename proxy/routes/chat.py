"""`POST /v1/chat/completions`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from memory.text import orjson_storable
from memory.types import SessionKey
from memory.users import User
from proxy.deps import PipelineDep, SettingsDep, caller, limited
from proxy.disconnect import cancel_on_disconnect
from proxy.limits import RateLimiter, check_sizes, prompt_estimate
from proxy.pipeline import ChatPipeline
from proxy.protocol import CHECKED, ChatCompletionRequest
from proxy.session import identify_session, requested_persona
from proxy.settings import Settings
from proxy.sse import EventStream
from proxy.streaming import collect, stream_sse

log = logging.getLogger("anima.routes.chat")


class ChatRoute(APIRoute):
    """The chat route without FastAPI's per-request machinery on its hot path (issue 15: the busiest
    route of a proxy whose CPU per request is measured against a bare pass-through).

    A valid request takes the short way: the body parsed with orjson and validated once, then the
    route's own dependencies (`caller`, `limited`: auth, then the rate limit) and the endpoint called
    directly. Anything else (a body that is not JSON, or not a valid request) goes through FastAPI's
    own handler, so every error is reported exactly as before. The route, its dependencies and its
    schema stay declared (`proxy.routes.add_routes`) for that way and the OpenAPI document;
    `tests/proxy/test_access.py` checks that both ways check the key and take one request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        fastapi_handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            body = await valid_body(request)
            if body is None:  # FastAPI's handler reports what is wrong, as it always has
                return await fastapi_handler(request)
            user = await limited(request, await caller(request))
            state = request.app.state
            return await create_chat_completion(body, request, state.pipeline, state.settings, user)

        return handle


async def valid_body(request: Request) -> ChatCompletionRequest | None:
    """The request body as a valid `ChatCompletionRequest`, or None if it is not one. orjson refuses
    all that stdlib `json` refuses (and more: NaN, lone surrogates, which then take FastAPI's way), so
    what it parsed is storable unless a NUL escape may be in it (then `Storable` looks)."""
    if request.headers.get("content-type") != "application/json":  # proxy/middleware.py JsonBodies
        return None
    raw = await request.body()
    try:
        data = orjson.loads(raw)
        checked = CHECKED if orjson_storable(raw) else None
        return ChatCompletionRequest.model_validate(data, context=checked)
    except (orjson.JSONDecodeError, ValidationError):
        return None


async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    user: Annotated[User | None, Depends(limited)],
) -> Response:
    check_sizes([m.text() for m in body.messages], settings.limits)
    limiter: RateLimiter = request.app.state.limiter
    metered = user is not None and bool(user.tokens_per_minute or settings.limits.tokens_per_minute)
    if metered:
        prompt = prompt_estimate(body, pipeline.tokens)
        limiter.tokens(user, prompt)
        limiter.charge(user, prompt)
    session = session_for(request, body, pipeline, settings, user)

    async def answer() -> Response:
        """Until the first byte of a stream, or the whole of a reply: a client that leaves meanwhile
        cancels it, and with it the turn's started work and the upstream request."""
        chat = await pipeline.prepare(body, session, persona=requested_persona(request.headers))
        if metered:
            chat = dataclasses.replace(
                chat, after=lambda reply: limiter.charge(user, pipeline.tokens.count(reply))
            )
        headers = chat.headers()
        if body.stream:
            return EventStream(stream_sse(chat, pipeline), headers=headers, ping_s=settings.sse_ping_s)
        completion = await collect(chat, pipeline)
        return Response(completion.model_dump_json(), media_type="application/json", headers=headers)

    response = await cancel_on_disconnect(request, answer())
    return response if response is not None else Response(status_code=499)  # nobody is listening


def session_for(
    request: Request,
    body: ChatCompletionRequest,
    pipeline: ChatPipeline,
    settings: Settings,
    user: User | None,
) -> SessionKey | None:
    """The memory session of this request; None when memory is off."""
    if pipeline.memory is None or user is None:
        return None
    return identify_session(
        request.headers,
        body,
        user_id=user.id,
        character_header=settings.memory.character_header,
        user_header=settings.memory.user_header,
    )
