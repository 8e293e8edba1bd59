"""How recalled text sits in a prompt: each memory one JSON-quoted string on its own line, so role
markers and instructions inside it stay inert data. Erasure reads the same lines back to take a
deleted conversation's text out of the prompts recorded for other conversations."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from memory.types import Memory

SAID = " said: "
REDACTED = "[deleted]"


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def memory_line(memory: Memory) -> str:
    """`- 2026-01-31, Ana said: "..."`: the date, who spoke, and the text as one JSON string."""
    speaker = memory.name or memory.role
    return f"- {memory.created_at:%Y-%m-%d}, {speaker}{SAID}{quoted(memory.content)}"


def _quoted_text(line: str) -> tuple[int, str] | None:
    """Where the quoted text of a memory line starts, and the text; None for any other line."""
    at = line.find(SAID)
    while at >= 0:
        start = at + len(SAID)
        if line.startswith('"', start) and line.endswith('"'):
            try:
                value = json.loads(line[start:])
            except ValueError:
                value = None
            if isinstance(value, str):
                return start, value
        at = line.find(SAID, at + 1)
    return None


def redact_text(content: str, erased: Collection[str]) -> str:
    """`content` with every memory line quoting an erased text redacted; a message that is wholly an
    erased text becomes REDACTED."""
    if content in erased:
        return REDACTED
    if SAID not in content:
        return content
    lines = content.split("\n")
    for i, line in enumerate(lines):
        found = _quoted_text(line)
        if found is not None and found[1] in erased:
            lines[i] = line[: found[0]] + quoted(REDACTED)
    return "\n".join(lines)


def redact_messages(
    messages: Sequence[dict[str, Any]], erased: Collection[str]
) -> list[dict[str, Any]] | None:
    """A recorded prompt (`turn_context.messages`) without the erased texts; None if it holds none."""
    changed, out = False, []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            redacted = redact_text(content, erased)
            if redacted != content:
                message, changed = {**message, "content": redacted}, True
        out.append(message)
    return out if changed else None
