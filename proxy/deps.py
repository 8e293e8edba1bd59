"""FastAPI dependencies: the services `lifespan` built, read from `app.state`, and who is calling.

All `async def`: FastAPI runs plain `def` dependencies in a threadpool (~0.1 ms each per request).
FastAPI caches a dependency per request, so `caller` runs once however many routes' deps use it.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from memory.archive import Archive
from memory.users import User
from proxy.errors import (
    AuthenticationFailed,
    InvalidRequest,
    MemoryDisabled,
    PermissionDenied,
    ServiceUnavailable,
)
from proxy.limits import RateLimiter
from proxy.pipeline import ChatPipeline
from proxy.session import api_key
from proxy.settings import Settings

log = logging.getLogger("anima.auth")


async def _pipeline(request: Request) -> ChatPipeline:
    pipeline: ChatPipeline = request.app.state.pipeline
    return pipeline


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def caller(request: Request) -> User | None:
    """The user behind the request's API key. None without a database (open mode, loopback only).

    401 for a missing or unknown key once keys exist; 503 if the database cannot say (and the key
    was never seen by this process). Every /v1 route depends on this, then on the rate limiter."""
    users = request.app.state.users
    if users is None:
        return None
    try:
        user: User | None = await users.identify(api_key(request.headers))
    except Exception as exc:
        log.warning("cannot check the API key: %s", exc)
        raise ServiceUnavailable("The key store is unreachable; try again shortly.") from exc
    if user is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    request.state.user = user
    return user


CallerDep = Annotated[User | None, Depends(caller)]


async def limited(request: Request, user: CallerDep) -> User | None:
    """The caller, after taking one request from its per-minute bucket (429 + Retry-After when empty)."""
    limiter: RateLimiter = request.app.state.limiter
    limiter.request(user)
    return user


async def admin(user: CallerDep) -> User | None:
    """Admin routes: an admin key, or anyone in open mode (which only listens on loopback)."""
    if user is not None and not (user.admin or user.local):
        raise PermissionDenied("This route needs an admin key.")
    return user


async def _archive(request: Request) -> Archive:
    memory = request.app.state.pipeline.memory
    if memory is None:
        raise MemoryDisabled("Memory is disabled on this server (ANIMA_MEMORY__ENABLED=false).")
    archive: Archive = memory.archive
    return archive


AS_USER = "x-anima-as-user"


async def _user(request: Request, _: Annotated[Archive, Depends(_archive)], user: CallerDep) -> int:
    """The caller's user id (memory routes: memory on means there is a database, so a user). An admin
    may read and manage another user's memory by naming them in `X-Anima-As-User` (the dashboard)."""
    assert user is not None
    other = request.headers.get(AS_USER)
    if other is None:
        return user.id
    if not (user.admin or user.local):
        raise PermissionDenied(f"Only an admin key may use {AS_USER}.")
    if not other.isdigit() or len(other) > 18:
        raise InvalidRequest(f"{AS_USER}: expected a user id.", param=AS_USER)
    return int(other)


PipelineDep = Annotated[ChatPipeline, Depends(_pipeline)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ArchiveDep = Annotated[Archive, Depends(_archive)]
UserDep = Annotated[int, Depends(_user)]
AdminDep = Annotated[User | None, Depends(admin)]
