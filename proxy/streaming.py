"""Backend deltas → OpenAI chunks → SSE events, and `collect()` for `stream=false`: one code path."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from memory.journal import InFlight
from memory.types import ToolCall as StoredCall
from proxy import chunks
from proxy.backends.base import Delta, ToolCallDelta
from proxy.errors import ProxyError
from proxy.metrics import count_tokens
from proxy.pipeline import ChatPipeline
from proxy.prepared import PreparedChat
from proxy.protocol import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    FunctionCall,
    ToolCall,
    Usage,
)

log = logging.getLogger("anima.streaming")


@dataclass(slots=True)
class CallBuffer:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ChoiceBuffer:
    """One choice of the reply (there are several only for n > 1)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, CallBuffer] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: Delta) -> chunks.Json | None:
        """Record the delta; the client-visible part of it (a chunk's `delta`), if any."""
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        if delta.logprobs:
            self.logprobs.append(delta.logprobs)
        calls = [self._call(c) for c in delta.tool_calls]
        if not (delta.text or delta.reasoning or calls):
            return None
        self.text.append(delta.text)
        self.reasoning.append(delta.reasoning)
        return chunks.delta(delta.text or None, delta.reasoning or None, calls or None)

    def _call(self, fragment: ToolCallDelta) -> chunks.Json:
        """The fragment as OpenAI streams it: id, type and name once per call, then only arguments.
        (llama-cpp-python repeats the name in every chunk; the OpenAI SDK would concatenate them.)"""
        first = fragment.index not in self.calls
        call = self.calls.setdefault(fragment.index, CallBuffer())
        new_id = fragment.id if fragment.id and not call.id else None
        new_name = fragment.name if fragment.name and not call.name else None
        call.id, call.name = call.id or new_id or "", call.name or new_name or ""
        call.arguments.append(fragment.arguments)
        return chunks.tool_call(fragment, new_id, "function" if first or new_id else None, new_name)

    def tool_calls(self) -> list[ToolCall] | None:
        calls = [self.calls[i] for i in sorted(self.calls)]
        return [
            ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments="".join(c.arguments)))
            for c in calls
        ] or None

    def stored_calls(self) -> tuple[StoredCall, ...]:
        return tuple(StoredCall(c.id, c.name, "".join(c.arguments)) for _, c in sorted(self.calls.items()))

    def logprob_object(self) -> dict[str, Any] | None:
        """The chunks' logprobs as one object: each list field (`content`, `refusal`) concatenated."""
        if not self.logprobs:
            return None
        merged: dict[str, Any] = {}
        for piece in self.logprobs:
            for key, value in piece.items():
                if isinstance(value, list):
                    merged[key] = [*(merged.get(key) or []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.calls else "stop")


@dataclass(slots=True)
class ReplyBuffer:
    """What the backend has said so far; what `collect()` returns and what memory will store."""

    choices: dict[int, ChoiceBuffer] = field(default_factory=lambda: {0: ChoiceBuffer()})
    reported_usage: tuple[int, int] | None = None

    @property
    def first(self) -> ChoiceBuffer:
        return self.choices[0]

    @property
    def text(self) -> str:
        """The first choice's text: the reply memory stores."""
        return "".join(self.first.text)

    async def drain(self, chat: PreparedChat) -> AsyncIterator[tuple[Delta, chunks.Json | None]]:
        """Consume the backend stream: each delta, with the chunk choice the client sees of it, if any."""
        async for delta in chat.deltas:
            if delta.usage is not None:
                self.reported_usage = (delta.usage.prompt_tokens, delta.usage.completion_tokens)
            if delta.text and delta.choice == 0 and chat.wal is not None:
                InFlight.add(chat.wal, delta.text)  # before the client sees it
            choice = self.choices.get(delta.choice) or self.choices.setdefault(delta.choice, ChoiceBuffer())
            visible = choice.add(delta)
            if visible is not None or delta.logprobs:
                yield delta, chunks.choice(delta.choice, visible or {}, logprobs=delta.logprobs)
            else:
                yield delta, None

    def finished(self, pipeline: ChatPipeline, chat: PreparedChat, *, complete: bool) -> Usage:
        """Hand the turn to memory and count its tokens (after the reply: never on the client's time)."""
        pipeline.finish(chat, self.text, complete=complete, tool_calls=self.first.stored_calls())
        usage = self.usage(pipeline, chat)
        count_tokens(chat.backend, usage.prompt_tokens, usage.completion_tokens)
        return usage

    def usage(self, pipeline: ChatPipeline, chat: PreparedChat) -> Usage:
        prompt, completion = pipeline.usage(chat, self.text, self.reported_usage)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _chunk(chat: PreparedChat, choices: list[chunks.Json], usage: Usage | None = None) -> bytes:
    tokens = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else None
    return chunks.chunk(chat.id, chat.created, chat.model, choices, tokens)


async def stream_sse(chat: PreparedChat, pipeline: ChatPipeline) -> AsyncGenerator[bytes, None]:
    """The OpenAI stream: role first, content deltas, a finish chunk, optional usage, `[DONE]`.

    Deltas the backend read from upstream at once (`Delta.more`) go out in one write, as a
    pass-through would relay that read: the role chunk with the first, the closing chunks together.
    An error after the 200 went out is sent in-band as `data: {"error": ...}` (the OpenAI SDK raises
    it, SillyTavern shows it) and the stream ends. A client disconnect closes `chat.deltas`, which
    cancels the upstream request. Either way the turn is handed to memory, marked partial.
    """
    reply, handed = ReplyBuffer(), False
    role = chunks.delta("", role="assistant")
    out = [_chunk(chat, [chunks.choice(index, role)]) for index in range(chat.request.n or 1)]
    try:
        try:
            async for delta, choice in reply.drain(chat):
                if choice is not None:
                    out.append(_chunk(chat, [choice]))
                if out and not delta.more:
                    yield b"".join(out)
                    out.clear()
        except ProxyError as exc:
            log.warning("stream %s failed after the first byte: %s", chat.id, exc.message)
            yield b"".join([*out, chunks.event(exc.body().model_dump_json().encode())])
            return
        # handed to memory before the client can see the end: its next request must find this turn's
        # store in flight (and wait for it), or it would be recognised against a stale branch
        usage, handed = reply.finished(pipeline, chat, complete=True), True
        for index, buffer in sorted(reply.choices.items()):
            out.append(_chunk(chat, [chunks.choice(index, {}, buffer.finish())]))
        if chat.include_usage:
            out.append(_chunk(chat, [], usage))
        yield b"".join([*out, chunks.DONE])
    finally:
        if not handed:
            reply.finished(pipeline, chat, complete=False)


async def collect(chat: PreparedChat, pipeline: ChatPipeline) -> ChatCompletion:
    """Drain the same stream into one `chat.completion` object (`stream=false`)."""
    reply, complete = ReplyBuffer(), False
    try:
        async for _ in reply.drain(chat):
            pass
        complete = True
    finally:
        usage = reply.finished(pipeline, chat, complete=complete)
    return ChatCompletion(
        id=chat.id,
        created=chat.created,
        model=chat.model,
        choices=[_choice(index, choice) for index, choice in sorted(reply.choices.items())],
        usage=usage,
    )


def _choice(index: int, choice: ChoiceBuffer) -> Choice:
    text, reasoning, calls = "".join(choice.text), "".join(choice.reasoning), choice.tool_calls()
    message = AssistantMessage(
        content=None if calls and not text else text, reasoning_content=reasoning or None, tool_calls=calls
    )
    return Choice(
        index=index, message=message, finish_reason=choice.finish(), logprobs=choice.logprob_object()
    )
