"""The stream's wire format: OpenAI `chat.completion.chunk` objects as SSE `data:` events, in bytes.

A reply streams a dozen or more chunks, so they are built as plain dicts and dumped with orjson
rather than as pydantic models (whose validation and wrap serializers cost more than the rest of
the chunk's way). The shape is OpenAI's `chat.completion.chunk`, field for field and in its order
(`tests/proxy/test_stream_wire.py` pins it): `choices` always present (empty on the usage chunk,
as SillyTavern requires), a delta carrying only the fields that say something, `usage` only when known.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.backends.base import ToolCallDelta

Json = dict[str, Any]
DONE = b"data: [DONE]\n\n"


def event(data: bytes) -> bytes:
    """One SSE event (`sep="\\n"`); JSON from orjson holds no raw newline, so one `data:` line."""
    return b"data: " + data + b"\n\n"


def delta(
    content: str | None = None,
    reasoning: str | None = None,
    tool_calls: list[Json] | None = None,
    *,
    role: str | None = None,
) -> Json:
    """A chunk's `delta`: only the fields that carry something, as OpenAI sends them."""
    out: Json = {}
    if role is not None:
        out["role"] = role
    if content is not None:
        out["content"] = content
    if reasoning is not None:
        out["reasoning_content"] = reasoning
    if tool_calls is not None:
        out["tool_calls"] = tool_calls
    return out


def tool_call(fragment: ToolCallDelta, new_id: str | None, kind: str | None, name: str | None) -> Json:
    """A streamed tool-call fragment: id, type and name only when given (see `ChoiceBuffer._call`)."""
    out: Json = {"index": fragment.index}
    if new_id is not None:
        out["id"] = new_id
    if kind is not None:
        out["type"] = kind
    function: Json = {"name": name} if name is not None else {}
    function["arguments"] = fragment.arguments
    out["function"] = function
    return out


def choice(index: int, body: Json, finish_reason: str | None = None, logprobs: Json | None = None) -> Json:
    return {"index": index, "delta": body, "finish_reason": finish_reason, "logprobs": logprobs}


def chunk(
    chunk_id: str, created: int, model: str, choices: list[Json], usage: tuple[int, int] | None = None
) -> bytes:
    """One `chat.completion.chunk` event; `usage` is (prompt, completion) tokens."""
    body: Json = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        prompt, completion = usage
        body["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return event(orjson.dumps(body))
