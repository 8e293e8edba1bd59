"""Work a client is waiting for, cancelled when it goes away (a stalled backend, a large import)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio
from fastapi import Request
from starlette.types import Receive

T = TypeVar("T")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, cancelling it (and so the upstream request) if the client goes away first; None
    then. The work runs in this task (its errors raised as themselves) and one plain task listens:
    an anyio task group spawning both cost more than the rest of a non-streamed reply (issue 15)."""
    with anyio.CancelScope() as scope:
        watcher = asyncio.ensure_future(cancel_when_gone(request.receive, scope))
        try:
            return await work
        finally:
            watcher.cancel()
    return None  # the client left


async def cancel_when_gone(receive: Receive, scope: anyio.CancelScope) -> None:
    """Wait for the client to leave (the ASGI disconnect message), then cancel `scope`: the work of a
    non-streamed reply here, the events of a stream in `proxy/sse.py`."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
