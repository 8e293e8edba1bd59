"""What goes to a backend: the client's messages as Anima's internal messages (tool calls, content
parts kept), and the request's parameters as a `BackendRequest`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from memory.budget import TokenCounter
from memory.types import Message, Part, ToolCall
from proxy.backends.base import BackendRequest, Tool
from proxy.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice

_ROLES = {"developer": "system", "function": "tool"}


def to_message(message: ChatMessage) -> Message:
    """The internal message: its text, plus tool calls, the answered call id and (only when some part is
    not text) every content part in order, for backends that take images."""
    if isinstance(message.content, str) and not message.tool_calls and message.tool_call_id is None:
        return Message(_ROLES.get(message.role, message.role), message.content, message.name)  # plain chat
    parts = message.content if isinstance(message.content, list) else []
    keep = any(p.type != "text" for p in parts)
    return Message(
        role=_ROLES.get(message.role, message.role),
        content=message.text(),
        name=message.name,
        tool_calls=tuple(
            ToolCall(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls or ()
        ),
        tool_call_id=message.tool_call_id,
        parts=tuple(Part(p.type, p.model_dump_json(exclude_none=True)) for p in parts) if keep else (),
    )


def tools_of(body: ChatCompletionRequest) -> dict[str, Any]:
    """The request's tool fields as BackendRequest arguments."""
    choice = body.tool_choice
    named = choice.function.get("name") if isinstance(choice, NamedToolChoice) else None
    tools = tuple(
        Tool(t.function.name, t.function.description, t.function.parameters, t.function.strict)
        for t in body.tools or ()
    )
    return {
        "tools": tools,
        "tool_choice": "required" if named else choice if isinstance(choice, str) else None,
        "forced_tool": named,
        "parallel_tool_calls": body.parallel_tool_calls,
    }


TOOL_OVERHEAD = 10  # per function: the framing a chat template puts around each definition


def tool_tokens(tools: Sequence[Tool], counter: TokenCounter) -> int:
    """What the tool definitions take in the prompt: each function's name, description and JSON Schema
    as JSON (chat templates render them as JSON or close to it; OpenAI's own rendering is shorter)."""
    return sum(
        counter.count(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}))
        + TOOL_OVERHEAD
        for t in tools
    )


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
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs,
        n=body.n,
        **tools_of(body),
    )
