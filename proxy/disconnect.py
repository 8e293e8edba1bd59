"""Work a client is waiting for, cancelled when it goes away (a stalled backend, a large import)."""

from __future__ import annotations

from collections.abc import Awaitable, MutableMapping
from typing import Any, TypeVar

import anyio
from fastapi import Request

T = TypeVar("T")


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
