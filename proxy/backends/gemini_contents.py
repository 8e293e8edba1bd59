"""OpenAI-shaped messages and tools as Gemini contents, function declarations and a calling mode."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from google.genai import types

from memory.types import Message, Part
from proxy.backends.base import BackendRequest, data_url


def to_contents(messages: tuple[Message, ...]) -> tuple[list[types.Content], str | None]:
    """(contents, system instruction): system messages joined in order, other roles merged by turn.

    Tool calls become `functionCall` parts of the model turn, tool results `functionResponse` parts of
    the user turn (named by the call they answer, since OpenAI's tool messages carry only its id),
    images `inlineData`. A message's parts keep their order."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content) or None
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    turns: list[tuple[str, list[types.Part]]] = []
    for m in messages:
        parts = [] if m.role == "system" else _parts(m, names)
        if not parts:  # Gemini refuses empty text parts
            continue
        role = "model" if m.role == "assistant" else "user"
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(parts)
        else:
            turns.append((role, parts))
    if not turns and system:  # Gemini needs at least one content: a system-only prompt is the question
        return [types.Content(role="user", parts=[types.Part(text=system)])], None
    return [types.Content(role=role, parts=parts) for role, parts in turns], system


def _parts(m: Message, names: dict[str, str]) -> list[types.Part]:
    if m.role == "tool":
        name = names.get(m.tool_call_id or "", m.name or "tool")
        try:
            result = orjson.loads(m.content)
        except orjson.JSONDecodeError:
            result = m.content
        response = result if isinstance(result, dict) else {"result": result}
        return [
            types.Part(
                function_response=types.FunctionResponse(id=m.tool_call_id, name=name, response=response)
            )
        ]
    prefix = f"{m.name}: " if m.name else ""
    if m.parts:
        parts = [_part(p) for p in m.parts]
        parts = [p for p in parts if p.text != ""]
    else:
        parts = [types.Part(text=prefix + m.content)] if m.content else []
    calls = [
        types.Part(function_call=types.FunctionCall(id=c.id, name=c.name, args=_arguments(c.arguments)))
        for c in m.tool_calls
    ]
    return parts + calls


_AUDIO = {"wav": "audio/wav", "mp3": "audio/mp3"}


def _part(part: Part) -> types.Part:
    """Text, or inline data: an image as a data: URL, OpenAI `input_audio` (base64 wav/mp3), or a
    `file` part holding a data: URL (PDFs)."""
    body = orjson.loads(part.raw)
    if part.type == "text":
        return types.Part(text=str(body.get("text") or ""))
    found = data_url(part)
    if part.type == "input_audio":
        audio = body.get("input_audio") or {}
        if audio.get("format") in _AUDIO and audio.get("data"):
            found = _AUDIO[audio["format"]], str(audio["data"])
    elif part.type == "file":
        file_data = str((body.get("file") or {}).get("file_data") or "")
        head, _, data = file_data.partition(",")
        if head.startswith("data:") and head.endswith(";base64") and data:
            found = head[5:-7], data
    if found is None:
        raise UnsupportedPart(part.type)
    mime, data = found
    return types.Part(inline_data=types.Blob(mime_type=mime, data=base64.b64decode(data)))


class UnsupportedPart(ValueError):
    """A content part Gemini cannot be given as inline data (a remote URL, audio by reference...)."""


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_config(request: BackendRequest) -> tuple[list[types.Tool] | None, types.ToolConfig | None]:
    """OpenAI `tools`/`tool_choice` as function declarations and a function-calling mode."""
    if not request.tools:
        return None, None
    declarations = [
        types.FunctionDeclaration(name=t.name, description=t.description, parameters_json_schema=t.parameters)
        for t in request.tools
    ]
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    mode = modes.get(request.tool_choice or "")
    config = None
    if mode is not None:
        allowed = [request.forced_tool] if request.forced_tool else None
        calling = types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode(mode), allowed_function_names=allowed
        )
        config = types.ToolConfig(function_calling_config=calling)
    return [types.Tool(function_declarations=declarations)], config
