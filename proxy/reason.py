"""The HTTP reason phrase of an error response carries its message.

SillyTavern 1.19 shows a non-streaming error to the user as the response's reason phrase only
(`fetchResponse.statusText`), so "502 Bad Gateway" told them nothing of what the backend said. ASGI
has no field for a reason phrase; uvicorn looks it up per status in a table. This middleware takes
the phrase from the error handler's `X-Anima-Reason` header and puts it in that table only while the
status line is written (synchronously, on this event loop), then restores it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REASON_HEADER = b"x-anima-reason"
_UNSAFE = re.compile(r"[^\x20-\x7e]+")  # a status line is latin-1 without control characters


def reason_phrase(message: str, limit: int = 200) -> str:
    """A message made safe for a status line."""
    return _UNSAFE.sub(" ", message).strip()[:limit] or "Error"


@contextlib.contextmanager
def _phrase(status: int, reason: bytes) -> Iterator[None]:
    from uvicorn.protocols.http import h11_impl

    saved_phrase = h11_impl.STATUS_PHRASES.get(status)
    h11_impl.STATUS_PHRASES[status] = reason
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # httptools is optional
        httptools_impl = None  # type: ignore[assignment]
    saved_line = httptools_impl.STATUS_LINE.get(status) if httptools_impl else None
    if httptools_impl is not None:
        httptools_impl.STATUS_LINE[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    try:
        yield
    finally:
        if saved_phrase is not None:
            h11_impl.STATUS_PHRASES[status] = saved_phrase
        if httptools_impl is not None and saved_line is not None:
            httptools_impl.STATUS_LINE[status] = saved_line


class ReasonPhrase:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def phrased(message: Message) -> None:
            if message["type"] != "http.response.start":
                await send(message)
                return
            headers = list(message.get("headers", []))
            reason = next((v for k, v in headers if k.lower() == REASON_HEADER), None)
            if reason is None:
                await send(message)
                return
            message = dict(message, headers=[(k, v) for k, v in headers if k.lower() != REASON_HEADER])
            with _phrase(message["status"], reason):
                await send(message)

        await self.app(scope, receive, phrased)
