"""The Backend seam: what every model server adapter implements, and the data crossing it.

Each adapter translates a `BackendRequest` to its own API and maps its library's errors to the
`proxy.errors.BackendError` tree, so nothing above this layer knows which vendor answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import orjson

from memory.types import Message, Part
from proxy.errors import (
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of the `index`-th tool call of a reply: id and name come once, `arguments` in pieces
    (a backend that returns whole calls sends each as one fragment)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply. The last one a backend yields carries `finish_reason` (and usage if known).

    `choice` is the OpenAI choice index (n > 1); `logprobs` is the OpenAI `logprobs` object of this
    piece, passed through untouched. `more` says another delta of the same upstream read follows at
    once, with no wait: the stream writes them to the client together (one write, as a pass-through
    relays one read), never holding a delta back for data not yet received."""

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    choice: int = 0
    logprobs: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    more: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is its JSON Schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    strict: bool | None = None


ToolChoice = Literal["auto", "none", "required"] | None


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """What a backend is asked to generate; `None` means "the backend's default"."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    response_format: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = field(default=None, hash=False)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = None
    forced_tool: str | None = None  # tool_choice naming one function: the model must call it
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None


class BackendCannot(BackendRejected):
    """The request asks for something this backend kind cannot do (images to a text-only adapter,
    logprobs from Gemini): a 400 naming the backend, the model and the parameter, before any I/O."""

    code = "unsupported_parameter"

    def __init__(self, backend: str, model: str, what: str, *, param: str) -> None:
        super().__init__(f"backend '{backend}' (model '{model}') cannot {what}.", status=400, param=param)


class Backend(Protocol):
    """A model server. `stream` is an async generator; closing it cancels the upstream request."""

    name: str

    def stream(self, request: BackendRequest) -> AsyncIterator[Delta]: ...

    async def models(self) -> list[str]: ...

    async def context_window(self, model: str) -> int | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order; `prompt_tokens` if the backend counted them."""

    vectors: list[list[float]]
    prompt_tokens: int | None = None


class Embeds(Protocol):
    """A backend with an embeddings API (OpenAI-compatible, Ollama, Gemini). Token-array inputs
    (`list[list[int]]`) only make sense to an OpenAI-compatible server; the others refuse them."""

    name: str

    async def embed(
        self, model: str, inputs: list[str] | list[list[int]], dimensions: int | None
    ) -> Embeddings: ...


def status_error(backend: str, status: int, detail: str) -> BackendError:
    """Map an upstream HTTP status to the error the client should see."""
    message = f"backend '{backend}' answered {status}: {detail}".strip()
    if status == 429:
        return BackendRateLimited(message)
    if status in (408, 504):
        return BackendTimeout(message)
    if status >= 500:
        return BackendServerError(message)
    if status == 404:
        return BackendRejected(f"backend '{backend}' does not know this model: {detail}", status=404)
    return BackendRejected(message, status=status)


@dataclass(frozen=True, slots=True)
class TransportErrors:
    """An HTTP library's exception classes, so that its failures map the same as any other's."""

    connect_timeout: type[Exception]
    timeout: type[Exception]  # any other timeout (a subclass or not of `failed`)
    failed: type[Exception]  # everything else it raises


HTTPX = TransportErrors(httpx.ConnectTimeout, httpx.TimeoutException, httpx.HTTPError)


@contextlib.contextmanager
def mapped_transport_errors(backend: str, kinds: TransportErrors) -> Iterator[None]:
    """Turn transport failures into BackendTimeout / BackendUnavailable naming the backend.

    A connect timeout is a connect failure (retryable); a read timeout means the backend took the
    request and stalled, and retrying would only multiply the client's wait.
    """
    try:
        yield
    except kinds.connect_timeout as exc:
        raise BackendUnavailable(f"backend '{backend}' is unreachable: connect timed out") from exc
    except kinds.timeout as exc:
        raise BackendTimeout(f"backend '{backend}' did not answer in time ({type(exc).__name__})") from exc
    except kinds.failed as exc:
        raise BackendUnavailable(f"backend '{backend}' is unreachable: {exc or type(exc).__name__}") from exc


@contextlib.contextmanager
def mapped_mid_reply_errors(backend: str, kinds: TransportErrors) -> Iterator[None]:
    """Transport failures once the reply began: a stall is a BackendTimeout, a broken stream a
    BackendServerError (the reply cannot be resumed, and resending would repeat what was sent)."""
    try:
        yield
    except kinds.timeout as exc:  # its message says nothing of which backend
        raise BackendTimeout(f"backend '{backend}' stopped sending mid-reply ({type(exc).__name__})") from exc
    except kinds.failed as exc:
        what = str(exc) or type(exc).__name__
        raise BackendServerError(f"backend '{backend}' broke off the reply: {what}") from exc


def mapped_httpx_errors(backend: str) -> contextlib.AbstractContextManager[None]:
    """httpx's failures before a reply (the Ollama and Gemini clients send through httpx)."""
    return mapped_transport_errors(backend, HTTPX)


def data_url(part: Part) -> tuple[str, str] | None:
    """(mime type, base64 data) of an `image_url` part holding a base64 `data:` URL."""
    if part.type != "image_url":
        return None
    url = str((orjson.loads(part.raw).get("image_url") or {}).get("url") or "")
    head, sep, data = url.partition(",")
    if not (sep and head.startswith("data:") and head.endswith(";base64")):
        return None
    return head[5:-7] or "application/octet-stream", data
