"""`POST /v1/chat/completions`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, MutableMapping
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from memory.types import SessionKey
from proxy.deps import PipelineDep, SettingsDep
from proxy.errors import AuthenticationFailed
from proxy.pipeline import ChatPipeline
from proxy.protocol import ChatCompletionRequest
from proxy.session import api_key, identify_session, requested_persona
from proxy.settings import Settings
from proxy.streaming import collect, stream_sse

router = APIRouter()
log = logging.getLogger("anima.routes.chat")
T = TypeVar("T")


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, pipeline: PipelineDep, settings: SettingsDep
) -> Response:
    session = await session_for(request, body, pipeline, settings)
    chat = await pipeline.prepare(body, session, persona=requested_persona(request.headers))
    headers = chat.headers()
    if body.stream:
        ping = int(settings.sse_ping_s) or None
        return EventSourceResponse(stream_sse(chat, pipeline), sep="\n", ping=ping, headers=headers)
    completion = await cancel_on_disconnect(request, collect(chat, pipeline))
    if completion is None:
        return Response(status_code=499)  # nobody is listening any more
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)


async def session_for(
    request: Request, body: ChatCompletionRequest, pipeline: ChatPipeline, settings: Settings
) -> SessionKey | None:
    """The memory session of this request; None when memory is off or its user cannot be resolved."""
    if pipeline.memory is None or request.app.state.users is None:
        return None
    try:
        user_id = await request.app.state.users.resolve(api_key(request.headers))
    except Exception as exc:  # the database is down: answer without memory
        log.warning("cannot resolve the user (%s): memory is skipped for this request", exc)
        return None
    if user_id is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return identify_session(
        request.headers,
        body,
        user_id=user_id,
        character_header=settings.memory.character_header,
        user_header=settings.memory.user_header,
    )


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, cancelling it (and so the upstream request) if the client goes away first."""
    result: list[T] = []
    failure: list[Exception] = []

    async def run(scope: anyio.CancelScope) -> None:
        try:
            result.append(await work)
        except Exception as exc:  # re-raised below as itself, not wrapped in an ExceptionGroup
            failure.append(exc)
        scope.cancel()

    async def watch(scope: anyio.CancelScope) -> None:
        message: MutableMapping[str, Any] = {}
        while message.get("type") != "http.disconnect":
            message = await request.receive()
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(run, group.cancel_scope)
        group.start_soon(watch, group.cancel_scope)
    if failure:
        raise failure[0]
    return result[0] if result else None
