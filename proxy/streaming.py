"""Backend deltas → OpenAI chunks → SSE events, and `collect()` for `stream=false`: one code path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sse_starlette import ServerSentEvent

from proxy.errors import ProxyError
from proxy.metrics import count_tokens
from proxy.pipeline import ChatPipeline, PreparedChat
from proxy.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    DeltaMessage,
    Usage,
)

log = logging.getLogger("anima.streaming")


@dataclass(slots=True)
class ReplyBuffer:
    """What the backend has said so far; what `collect()` returns and what memory will store."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    reported_usage: tuple[int, int] | None = None

    async def drain(self, chat: PreparedChat) -> AsyncIterator[DeltaMessage]:
        """Consume the backend stream, yielding the client-visible part of each delta."""
        async for delta in chat.deltas:
            if delta.usage is not None:
                self.reported_usage = (delta.usage.prompt_tokens, delta.usage.completion_tokens)
            if delta.finish_reason is not None:
                self.finish_reason = delta.finish_reason
            if delta.text or delta.reasoning:
                self.text.append(delta.text)
                self.reasoning.append(delta.reasoning)
                yield DeltaMessage(content=delta.text or None, reasoning_content=delta.reasoning or None)

    def usage(self, pipeline: ChatPipeline, chat: PreparedChat) -> Usage:
        prompt, completion = pipeline.usage(chat, "".join(self.text), self.reported_usage)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def finished(self, pipeline: ChatPipeline, chat: PreparedChat, *, complete: bool) -> Usage:
        """Hand the turn to memory and count its tokens (after the reply: never on the client's time)."""
        pipeline.finish(chat, "".join(self.text), complete=complete)
        usage = self.usage(pipeline, chat)
        count_tokens(chat.backend, usage.prompt_tokens, usage.completion_tokens)
        return usage


def _event(data: str) -> ServerSentEvent:
    return ServerSentEvent(data=data, sep="\n")


def _chunk(chat: PreparedChat, choices: list[ChunkChoice], usage: Usage | None = None) -> ServerSentEvent:
    chunk = ChatCompletionChunk(
        id=chat.id, created=chat.created, model=chat.model, choices=choices, usage=usage
    )
    return _event(chunk.model_dump_json())


async def stream_sse(chat: PreparedChat, pipeline: ChatPipeline) -> AsyncIterator[ServerSentEvent]:
    """The OpenAI stream: role first, content deltas, a finish chunk, optional usage, `[DONE]`.

    An error after the 200 went out is sent in-band as `data: {"error": ...}` (the OpenAI SDK raises
    it, SillyTavern shows it) and the stream ends. A client disconnect closes `chat.deltas`, which
    cancels the upstream request. Either way the turn is handed to memory, marked partial.
    """
    reply, complete = ReplyBuffer(), False
    try:
        yield _chunk(chat, [ChunkChoice(delta=DeltaMessage(role="assistant", content=""))])
        try:
            async for delta in reply.drain(chat):
                yield _chunk(chat, [ChunkChoice(delta=delta)])
        except ProxyError as exc:
            log.warning("stream %s failed after the first byte: %s", chat.id, exc.message)
            yield _event(exc.body().model_dump_json())
            return
        complete = True
        yield _chunk(chat, [ChunkChoice(delta=DeltaMessage(), finish_reason=reply.finish_reason or "stop")])
        if chat.include_usage:
            yield _chunk(chat, [], reply.usage(pipeline, chat))
        yield _event("[DONE]")
    finally:
        reply.finished(pipeline, chat, complete=complete)


async def collect(chat: PreparedChat, pipeline: ChatPipeline) -> ChatCompletion:
    """Drain the same stream into one `chat.completion` object (`stream=false`)."""
    reply, complete = ReplyBuffer(), False
    try:
        async for _ in reply.drain(chat):
            pass
        complete = True
    finally:
        usage = reply.finished(pipeline, chat, complete=complete)
    reasoning = "".join(reply.reasoning)
    message = AssistantMessage(content="".join(reply.text), reasoning_content=reasoning or None)
    return ChatCompletion(
        id=chat.id,
        created=chat.created,
        model=chat.model,
        choices=[Choice(message=message, finish_reason=reply.finish_reason or "stop")],
        usage=usage,
    )
