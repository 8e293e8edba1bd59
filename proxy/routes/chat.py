"""`POST /v1/chat/completions`."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from memory.types import SessionKey
from memory.users import User
from proxy.deps import PipelineDep, SettingsDep, limited
from proxy.disconnect import cancel_on_disconnect
from proxy.limits import RateLimiter, check_sizes
from proxy.pipeline import ChatPipeline
from proxy.protocol import ChatCompletionRequest
from proxy.session import identify_session, requested_persona
from proxy.settings import Settings
from proxy.sse import EventStream
from proxy.streaming import collect, stream_sse

router = APIRouter()
log = logging.getLogger("anima.routes.chat")


@router.post("/chat/completions", response_model=None)
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
        prompt = sum(pipeline.tokens.count(m.text()) for m in body.messages)
        limiter.tokens(user, prompt)
        limiter.charge(user, prompt)
    session = session_for(request, body, pipeline, settings, user)
    chat = await pipeline.prepare(body, session, persona=requested_persona(request.headers))
    if metered:
        chat = dataclasses.replace(
            chat, after=lambda reply: limiter.charge(user, pipeline.tokens.count(reply))
        )
    headers = chat.headers()
    if body.stream:
        return EventStream(stream_sse(chat, pipeline), headers=headers, ping_s=settings.sse_ping_s)
    completion = await cancel_on_disconnect(request, collect(chat, pipeline))
    if completion is None:
        return Response(status_code=499)  # nobody is listening any more
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)


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
