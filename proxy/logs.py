"""Logging: one format for every process (text or JSON lines), a request id on every line, and one
access line per request with its status and latency.

`log_config()` is handed to uvicorn, which applies it in each worker process. The request id comes
from the client's `X-Request-Id` when it is a sane token, else a new one; it is returned in the
`X-Request-Id` header and lives in a context variable, so background work started by the request
(storing the turn) logs it too. Access lines carry the method, route, status, latency, backend and
memory status: never a message's content (ANIMA_LOG_CONTENT only affects debug lines elsewhere).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
import uuid
import warnings
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.metrics import observe_request

REQUEST_ID = contextvars.ContextVar("request_id", default="-")
HEADER = "X-Request-Id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
access = logging.getLogger("anima.access")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (a handler filter: it sees third-party loggers' records too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
        return True


def quiet_startup() -> None:
    """Each worker, before it loads anything: warnings become log lines, library progress bars and
    platformdirs' notice about XDG_RUNTIME_DIR (pgserver's lock folder) stay out of the log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.captureWarnings(True)


def log_config(level: str, *, json: bool) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for uvicorn's `log_config`: root, uvicorn and Anima alike.

    uvicorn's own access log is off (ours has the latency and the request id); pgserver and alembic
    talk at INFO about initdb and migrations, which a normal start does not need to show."""
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
        if json
        else {"format": TEXT_FORMAT}
    )
    quiet = {"level": "WARNING"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "proxy.logs.RequestIdFilter"}},
        "formatters": {"anima": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "anima",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
            "pgserver": quiet,
            "alembic": quiet,
            "httpx": quiet,
        },
    }


def request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The matched route's template (`/v1/conversations/{conversation_id}`), never the raw path: ids
    stay out of metric labels and logs. A route included under a prefix may know only its own part
    (`/conversations/{conversation_id}`); the prefix is the path's leading segments before it."""
    route = scope.get("route")
    if route is None:  # a mounted app (the docs' static files) sets only its root path
        root = str(scope.get("root_path") or "")
        return f"{root}/{{path}}" if root else "unmatched"
    if isinstance(route, Mount):
        return f"{route.path}/{{path}}"
    template = str(getattr(route, "path_format", None) or getattr(route, "path", ""))
    own = [part for part in template.split("/") if part]
    actual = [part for part in str(scope.get("path", "")).split("/") if part]
    prefix = actual[: max(len(actual) - len(own), 0)]
    return "/" + "/".join([*prefix, *own])


class RequestLog:
    """Outermost middleware: request id, access line, request metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "backend": "", "memory": ""}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = MutableHeaders(scope=message)
                seen["backend"] = headers.get("x-anima-backend", "")
                seen["memory"] = headers.get("x-anima-memory", "")
                headers[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._done(scope, seen, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    @staticmethod
    def _done(scope: Scope, seen: dict[str, Any], seconds: float) -> None:
        route, method = route_of(scope), scope["method"]
        observe_request(route, method, seen["status"], seen["backend"], seconds)
        if not access.isEnabledFor(logging.INFO):  # the usual case in production: no line, no `extra`
            return
        access.info(
            "%s %s %d %.1fms",
            method,
            route,
            seen["status"],
            seconds * 1000,
            extra={
                "method": method,
                "route": route,
                "status": seen["status"],
                "duration_ms": round(seconds * 1000, 1),
                "backend": seen["backend"] or None,
                "memory": seen["memory"] or None,
            },
        )
