"""OpenAI's wire format as a client of an OpenAI-compatible server speaks it: messages and tools out;
SSE lines, chunks and error bodies in. Pure functions over bytes and dicts, apart from the backend's I/O
in proxy/backends/openai_compat.py, so the passthrough routes share the error reading and the framing is
tested without a server."""

from __future__ import annotations

from typing import Any

import orjson

from memory.types import Message
from proxy.backends.base import BackendRequest, Delta, TokenUsage, Tool, ToolCallDelta
from proxy.errors import BackendServerError


class SSELines:
    """Server-sent-event lines out of the bytes of each read: a line ends at CRLF, LF or CR (the SSE
    spec's three), and a line cut by the read boundary waits for the rest. Bytes, not text: orjson
    parses bytes, and no UTF-8 sequence contains a line-end byte."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by `data`, without their line ends."""
        parts = (self._rest + data).splitlines(keepends=True)
        # the last part is unfinished unless it ends in LF (a CR may be the first half of a CRLF)
        self._rest = parts.pop() if parts and not parts[-1].endswith(b"\n") else b""
        return [part.rstrip(b"\r\n") for part in parts]

    def flush(self) -> list[bytes]:
        """What is left when the body ends: its last line, if it had no line end."""
        rest, self._rest = self._rest, b""
        return [rest.rstrip(b"\r\n")] if rest else []


def deltas_of(backend: str, lines: list[bytes]) -> tuple[list[Delta], bool]:
    """The deltas of one read's lines, and whether `[DONE]` came. Each delta but the last is marked
    `more`, and the last too when `[DONE]` came with it: the reply's end follows at once, so its
    closing chunks go out in the same write (issue 15: one write per reply fewer, as a pass-through
    relays that read in one)."""
    done = any(line.startswith(b"data: [DONE]") for line in lines)
    chunks = [chunk for chunk in (chunk_of(backend, line) for line in lines) if chunk is not None]
    last = len(chunks) - 1
    return [delta_of(chunk, more=done or i < last) for i, chunk in enumerate(chunks)], done


def chunk_of(backend: str, line: bytes) -> dict[str, Any] | None:
    """One SSE line's chunk (None: not a data line, or `[DONE]`); an in-stream error, or several
    choices batched in one chunk, is the backend's failure."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return None
    chunk: dict[str, Any] = orjson.loads(data)
    if "error" in chunk:
        raise BackendServerError(f"backend '{backend}' failed mid-reply: {_message_of(chunk['error'])}")
    if len(chunk.get("choices") or ()) > 1:  # n > 1: some servers batch the choices of one step
        raise BackendServerError(f"backend '{backend}' sent several choices in one chunk")
    return chunk


def delta_of(chunk: dict[str, Any], *, more: bool = False) -> Delta:
    """A chunk as a delta; built with `more` at once (`dataclasses.replace` afterwards cost more than
    the rest of the chunk's parsing)."""
    usage = chunk.get("usage")
    choices = chunk.get("choices")
    choice = choices[0] if choices else {}
    delta = choice.get("delta") or {}
    calls = delta.get("tool_calls")
    return Delta(
        text=delta.get("content") or "",
        reasoning=delta.get("reasoning_content") or delta.get("reasoning") or "",
        finish_reason=choice.get("finish_reason"),
        usage=TokenUsage(usage["prompt_tokens"], usage["completion_tokens"]) if usage else None,
        tool_calls=tuple(_tool_call_delta(c) for c in calls) if calls else (),
        choice=int(choice.get("index") or 0),
        logprobs=choice.get("logprobs") or None,
        more=more,
    )


def wire_message(m: Message) -> dict[str, Any]:
    """A message as OpenAI sends it: content parts as the client sent them, tool calls and ids."""
    content: Any = [orjson.loads(p.raw) for p in m.parts] if m.parts else m.content
    if m.role == "assistant" and m.tool_calls and not m.content:
        content = None  # OpenAI's own shape for a message that only calls tools
    message: dict[str, Any] = {"role": m.role, "content": content}
    if m.name:
        message["name"] = m.name
    if m.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    return message


def tool_fields(request: BackendRequest) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` in OpenAI's shape, only those the client set."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [_tool(t) for t in request.tools]
    if request.forced_tool is not None:
        fields["tool_choice"] = {"type": "function", "function": {"name": request.forced_tool}}
    elif request.tool_choice is not None:
        fields["tool_choice"] = request.tool_choice
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


def _tool(tool: Tool) -> dict[str, Any]:
    spec = {
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }
    return {"type": "function", "function": {k: v for k, v in spec.items() if v is not None}}


def _tool_call_delta(fragment: dict[str, Any]) -> ToolCallDelta:
    function = fragment.get("function") or {}
    return ToolCallDelta(
        index=int(fragment.get("index") or 0),
        id=fragment.get("id") or None,
        name=function.get("name") or None,
        arguments=function.get("arguments") or "",
    )


def error_text(body: bytes, reason: str | None) -> str:
    """What an upstream error response says: its OpenAI `error` message, else its text, else its
    reason phrase."""
    text = body.decode(errors="replace")
    try:
        error = orjson.loads(body)
        return _message_of(error.get("error", text) if isinstance(error, dict) else text[:500])
    except orjson.JSONDecodeError:
        return text[:500] or reason or ""


def _message_of(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
