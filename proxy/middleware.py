"""ASGI middleware that runs before routing: path clean-up and the request body size limit."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import RequestTooLarge, error_body, error_response


class CollapseSlashes:
    """Serve `//chat/completions` and `/v1//models` like their single-slash forms (SillyTavern); a path
    with a NUL character is a 400 before routing (Postgres could not look it up)."""

    _runs = re.compile(r"/{2,}")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope["path"]:  # %00: no id or name may hold one
            body = error_body("The request path contains a NUL character.", "invalid_request_error")
            await error_response(400, body)(scope, receive, send)
            return
        if scope["type"] == "http" and "//" in scope["path"]:
            scope["path"] = self._runs.sub("/", scope["path"])  # in place: RequestLog reads the route
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over `max_bytes`: by its Content-Length at once; a body without one
    (chunked) is read here, up to the limit, and handed on whole. Raising from inside `receive`
    would not do: FastAPI turns any error while it reads the body into a 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit():
            if int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        body = await self._read(receive)
        if body is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (or the client leaves while sending)."""
        parts: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            parts.append(message.get("body", b""))
            seen += len(parts[-1])
            if seen > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return b"".join(parts)

    def _message(self) -> str:
        return f"The request body is larger than this server accepts ({self.max_bytes} bytes)."

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, RequestTooLarge(self._message()).body())
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then whatever the client sends next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class JsonBodies:
    """Read every request body as JSON whatever its `content-type`, as OpenAI's own API does: curl's
    `-d` sends `application/x-www-form-urlencoded`, some clients `text/plain` or nothing at all. Anima
    takes no urlencoded forms, so that header is only ever a wrong label on a JSON body. Multipart
    bodies (uploads to a passthrough route) keep theirs."""

    _json = (b"content-type", b"application/json")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            kind = dict(scope["headers"]).get(b"content-type", b"")
            if not kind.lower().startswith(b"multipart/"):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope["headers"] = [*headers, self._json]  # in place: RequestLog reads the matched route
        await self.app(scope, receive, send)
