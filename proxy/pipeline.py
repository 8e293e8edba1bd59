"""ChatPipeline: the only code that knows the order of the steps of one chat turn.

`prepare()` validates what only the server can validate, resolves the route, and opens the backend
stream *and pulls its first delta*, so every failure that can be known before the first byte becomes
a real HTTP status instead of a 200 stream carrying an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from memory.budget import TokenCounter
from memory.types import Message
from proxy.backends.base import BackendRequest, Delta
from proxy.backends.registry import Registry, Route
from proxy.errors import BackendError, ProxyError, UnsupportedParameter
from proxy.protocol import ChatCompletionRequest, ChatMessage

log = logging.getLogger("anima.pipeline")

_ROLES = {"developer": "system", "function": "tool"}


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """A turn whose backend stream is open and primed; `deltas` starts with the first delta."""

    id: str
    created: int
    model: str
    backend: str
    request: BackendRequest
    deltas: AsyncIterator[Delta]
    include_usage: bool


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    backoff_s: float = 0.25


class ChatPipeline:
    def __init__(self, registry: Registry, tokens: TokenCounter, *, retry: RetryPolicy | None = None) -> None:
        self.registry = registry
        self.tokens = tokens
        self.retry = retry or RetryPolicy()

    async def prepare(self, body: ChatCompletionRequest) -> PreparedChat:
        if body.n is not None and body.n > 1:
            raise UnsupportedParameter("n > 1 is not supported: ask for one choice per request.", param="n")
        chain = self.registry.resolve(body.model)
        messages = tuple(to_message(m) for m in body.messages)
        route, request, deltas = await self._open(chain, messages, body)
        return PreparedChat(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            backend=route.backend.name,
            request=request,
            deltas=deltas,
            include_usage=body.include_usage,
        )

    async def _open(
        self, chain: list[Route], messages: tuple[Message, ...], body: ChatCompletionRequest
    ) -> tuple[Route, BackendRequest, AsyncIterator[Delta]]:
        """Try the route, then each fallback; retry retryable failures with backoff before the first byte."""
        last: ProxyError | None = None
        for route in chain:
            request = backend_request(route.model, messages, body)
            for attempt in range(self.retry.retries + 1):
                if attempt:
                    await asyncio.sleep(self.retry.backoff_s * 2 ** (attempt - 1))
                try:
                    return route, request, await primed(route.backend.stream(request))
                except BackendError as exc:
                    last = exc
                    log.warning("%s try %d on %s failed: %s", route.name, attempt + 1, route.backend.name, exc)
                    if not exc.retryable:
                        break
            if last is not None and not last.retryable and last.status() < 500 and last.status() != 429:
                raise last  # the request itself is bad: another backend will not like it better
        assert last is not None
        raise last

    def usage(self, chat: PreparedChat, reply: str, reported: tuple[int, int] | None) -> tuple[int, int]:
        """Token usage as the backend reported it, else counted with tiktoken."""
        if reported is not None:
            return reported
        prompt = sum(self.tokens.count(m.content) + 4 for m in chat.request.messages) + 2
        return prompt, self.tokens.count(reply)


async def primed(stream: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """Pull the first delta now (raising connect errors here), then hand back a stream that replays it."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = Delta(finish_reason="stop")
    except BaseException:
        await _aclose(stream)
        raise
    return _replay(first, stream)


async def _replay(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    try:
        yield first
        async for delta in rest:
            yield delta
    finally:  # runs on client disconnect too: closing the backend stream cancels the upstream request
        with anyio.move_on_after(5, shield=True):  # shielded, or the disconnect's cancel scope skips it
            await _aclose(rest)


async def _aclose(stream: AsyncIterator[Delta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def to_message(message: ChatMessage) -> Message:
    return Message(role=_ROLES.get(message.role, message.role), content=message.text(), name=message.name)


def backend_request(model: str, messages: tuple[Message, ...], body: ChatCompletionRequest) -> BackendRequest:
    fmt = body.response_format
    return BackendRequest(
        model=model,
        messages=messages,
        max_tokens=body.reply_limit,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        stop=tuple(body.stop or ()),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        response_format="json" if fmt is not None and fmt.type != "text" else "text",
        json_schema=fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None,
    )
