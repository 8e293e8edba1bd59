"""FastAPI dependencies: the services `lifespan` built, read from `app.state`.

All `async def`: FastAPI runs plain `def` dependencies in a threadpool (~0.1 ms each per request).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from memory.archive import Archive
from proxy.errors import AuthenticationFailed, MemoryDisabled
from proxy.pipeline import ChatPipeline
from proxy.session import api_key
from proxy.settings import Settings


async def _pipeline(request: Request) -> ChatPipeline:
    pipeline: ChatPipeline = request.app.state.pipeline
    return pipeline


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _archive(request: Request) -> Archive:
    memory = request.app.state.pipeline.memory
    if memory is None:
        raise MemoryDisabled("Memory is disabled on this server (ANIMA_MEMORY__ENABLED=false).")
    archive: Archive = memory.archive
    return archive


async def _user(request: Request, _: Annotated[Archive, Depends(_archive)]) -> int:
    """The user behind the request's API key (every memory route is scoped to it)."""
    user_id: int | None = await request.app.state.users.resolve(api_key(request.headers))
    if user_id is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return user_id


PipelineDep = Annotated[ChatPipeline, Depends(_pipeline)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ArchiveDep = Annotated[Archive, Depends(_archive)]
UserDep = Annotated[int, Depends(_user)]
