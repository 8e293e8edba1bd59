"""Work a client is waiting for, cancelled when it goes away (a stalled backend, a large import)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio
from fastapi import Request

T = TypeVar("T")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, cancelling it (and so the upstream request) if the client goes away first; None
    then. The work runs in this task (its errors raised as themselves) and one plain task listens:
    an anyio task group spawning both cost more than the rest of a non-streamed reply (issue 15)."""
    with anyio.CancelScope() as scope:
        watcher = asyncio.ensure_future(_watch(request, scope))
        try:
            return await work
        finally:
            watcher.cancel()
    return None  # the client left


async def _watch(request: Request, scope: anyio.CancelScope) -> None:
    while (await request.receive()).get("type") != "http.disconnect":
        pass
    scope.cancel()
