"""Typed errors and the one place that renders them as OpenAI error bodies.

ProxyError                      500 api_error
├── InvalidRequest              400 invalid_request_error
│   ├── ContextTooLong          400 context_length_exceeded
│   ├── UnsupportedParameter    400 unsupported_parameter
│   ├── ContentBlocked          400 content_filter
│   ├── ModelNotFound           404 model_not_found
│   └── PersonaInvalid          400 invalid_persona (param names the field)
├── AuthenticationFailed        401 invalid_api_key
├── PermissionDenied            403 permission_denied
├── RequestTooLarge             413 request_too_large
├── RateLimited                 429 rate_limit_exceeded (with Retry-After)
└── BackendError                502 (the backend failed; always names it)
    ├── BackendUnavailable      502 backend_unavailable   (connect failed: retryable)
    ├── BackendTimeout          504 backend_timeout       (accepted, then too slow: not retried)
    ├── BackendServerError      502 backend_error         (upstream 5xx, retryable)
    ├── BackendRateLimited      429 rate_limit_exceeded
    └── BackendRejected         4xx from upstream, status passed through
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.protocol import ErrorBody, ErrorDetail
from proxy.reason import reason_phrase

log = logging.getLogger("anima.errors")


class ProxyError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param

    def status(self) -> int:
        return self.status_code

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> ErrorBody:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


class InvalidRequest(ProxyError):
    status_code, error_type = 400, "invalid_request_error"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContentBlocked(InvalidRequest):
    code = "content_filter"


class ModelNotFound(InvalidRequest):
    status_code, code = 404, "model_not_found"


class AuthenticationFailed(ProxyError):
    status_code, error_type, code = 401, "invalid_request_error", "invalid_api_key"


class PermissionDenied(ProxyError):
    status_code, error_type, code = 403, "invalid_request_error", "permission_denied"


class RequestTooLarge(ProxyError):
    status_code, error_type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(ProxyError):
    """This key used its requests or tokens for the minute; `Retry-After` says when to come back."""

    status_code, error_type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class ServiceUnavailable(ProxyError):
    status_code, code = 503, "service_unavailable"


class NotFound(ProxyError):
    status_code, error_type, code = 404, "invalid_request_error", "not_found"


class Conflict(ProxyError):
    status_code, error_type, code = 409, "invalid_request_error", "conflict"


class PersonaNotFound(ProxyError):
    status_code, error_type, code = 404, "invalid_request_error", "persona_not_found"


class PersonaInvalid(InvalidRequest):
    code = "invalid_persona"


class PersonaReadOnly(ProxyError):
    status_code, error_type, code = 409, "invalid_request_error", "persona_read_only"


class PersonasDisabled(ProxyError):
    status_code, code = 503, "personas_disabled"


class MemoryDisabled(ProxyError):
    status_code, code = 503, "memory_disabled"


class EmotionDisabled(ProxyError):
    status_code, code = 503, "emotion_disabled"


class BackendError(ProxyError):
    status_code, error_type, code = 502, "api_error", "backend_error"


class BackendUnavailable(BackendError):
    code, retryable = "backend_unavailable", True


class BackendTimeout(BackendError):
    status_code, code = 504, "backend_timeout"


class BackendServerError(BackendError):
    retryable = True


class BackendRateLimited(BackendError):
    status_code, error_type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class BackendRejected(BackendError):
    """The backend refused the request (4xx): the client's fault, so its status is passed through."""

    error_type, code = "invalid_request_error", "backend_rejected"

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self._status = status if 400 <= status < 500 else 400

    def status(self) -> int:
        return self._status


_DOCUMENTED = {
    400: "Invalid request (bad JSON, a wrong type, a value out of range)",
    401: "Missing or unknown API key",
    403: "The key may not do this (admin routes)",
    404: "No such model, conversation, persona or route",
    405: "Method not allowed",
    409: "Conflict (the id exists, or the version changed)",
    413: "The body, a message or the message count is larger than this server accepts",
    429: "Rate limit of this key (or of the backend) reached; see Retry-After",
    500: "Internal error",
    502: "The backend failed",
    503: "A part the route needs is off or unreachable (memory, emotion, database)",
    504: "The backend accepted the request, then stalled",
}


def error_responses() -> dict[int | str, dict[str, Any]]:
    """The error statuses every route may answer, as OpenAPI responses with the OpenAI error body, so
    the schema says what the API really returns (clients and Schemathesis read it)."""
    return {status: {"model": ErrorBody, "description": text} for status, text in _DOCUMENTED.items()}


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(message=message, type=error_type, param=param, code=code))


def error_response(status: int, body: ErrorBody, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The error body; its message also becomes the reason phrase (proxy/reason.py): SillyTavern shows
    only that for a non-streaming error."""
    phrased = {
        "X-Anima-Reason": reason_phrase(f"{HTTPStatus(status).phrase}: {body.error.message}"),
        **(headers or {}),
    }
    return JSONResponse(body.model_dump(), status_code=status, headers=phrased)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors: list[Any] = list(exc.errors())
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"We could not parse the JSON body of your request: {first.get('msg')}.", None
    param = ".".join(loc) or None
    where = f" at '{param}'" if param else ""
    extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    return f"Invalid request{where}: {message}{extra}.", param


async def _proxy_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProxyError)
    return error_response(exc.status(), exc.body(), exc.headers() or None)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    return error_response(400, error_body(message, "invalid_request_error", param=param))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else ""
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else phrase
    error_type = "invalid_request_error" if exc.status_code < 500 else "api_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(exc.status_code, error_body(message, error_type, code=code), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, error_body("The server had an error while processing your request.", "api_error")
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {"message", "type", "param", "code"}}`, never FastAPI's `detail`."""
    app.add_exception_handler(ProxyError, _proxy_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
