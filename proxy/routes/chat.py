"""`POST /v1/chat/completions`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from proxy.deps import PipelineDep, SettingsDep
from proxy.protocol import ChatCompletionRequest
from proxy.streaming import collect, stream_sse

router = APIRouter()
T = TypeVar("T")


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, pipeline: PipelineDep, settings: SettingsDep
) -> Response:
    chat = await pipeline.prepare(body)
    headers = {"X-Anima-Backend": chat.backend}
    if body.stream:
        ping = int(settings.sse_ping_s) or None
        return EventSourceResponse(stream_sse(chat, pipeline), sep="\n", ping=ping, headers=headers)
    completion = await cancel_on_disconnect(request, collect(chat, pipeline))
    if completion is None:
        return Response(status_code=499)  # nobody is listening any more
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)


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
        message: dict[str, Any] = {}
        while message.get("type") != "http.disconnect":
            message = await request.receive()
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(run, group.cancel_scope)
        group.start_soon(watch, group.cancel_scope)
    if failure:
        raise failure[0]
    return result[0] if result else None
