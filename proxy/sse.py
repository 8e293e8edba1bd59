"""`EventStream`: the response that sends a chat reply as server-sent events.

The events come already encoded (`proxy/chunks.py`), so what is left is what any streaming proxy
does: send each piece as it comes, notice a client that leaves while the backend is still thinking
(which must cancel the upstream request), and keep idle connections alive with comment pings. It
replaces sse-starlette's `EventSourceResponse`, whose per-request task group (stream, pings,
shutdown watcher, disconnect listener) and per-send timeout scope and lock cost more CPU than the
rest of a memory-off turn's streaming (docs/benchmarks.md). Here the events are sent from the
request's own task; one helper task listens for the disconnect, a second sends pings when enabled
(proxy/disconnect.py's shape).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from proxy.disconnect import cancel_when_gone

CLEANUP_S = 5.0  # how long closing the events (the backend stream, the turn's hand-off) may take


class EventStream(StreamingResponse):
    """`text/event-stream` with the headers SSE needs through proxies; `ping_s` 0: no pings."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        *,
        headers: Mapping[str, str] | None = None,
        ping_s: float = 0,
    ) -> None:
        sse = {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        super().__init__(events, headers={**sse, **(headers or {})}, media_type="text/event-stream")
        self.events, self.ping_s = events, ping_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # the helpers are plain tasks under a cancel scope that only a disconnect cancels: an anyio task
        # group, cancelled at the end of every stream to stop them, formatted the task's repr each time
        with anyio.CancelScope() as gone:
            helpers = [asyncio.ensure_future(cancel_when_gone(receive, gone))]
            if self.ping_s > 0:
                helpers.append(asyncio.ensure_future(_ping(send, self.ping_s)))
            try:
                await self._send_events(send)
            finally:
                for helper in helpers:
                    helper.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_events(self, send: Send) -> None:
        """Send each piece; however this ends (a disconnect cancels it), the events are closed, so
        the backend stream is closed (cancelling the upstream request) and the turn handed on."""
        finished = False
        try:
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            finished = True
        finally:
            if not finished:
                with anyio.move_on_after(CLEANUP_S, shield=True):
                    await self.events.aclose()


async def _ping(send: Send, every_s: float) -> None:
    """A comment line every `every_s` seconds (clients ignore it; idle-closing proxies see traffic)."""
    while True:
        await anyio.sleep(every_s)
        comment = f": ping - {datetime.now(UTC).isoformat(sep=' ')}\n\n".encode()
        await send({"type": "http.response.body", "body": comment, "more_body": True})
