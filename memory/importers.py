"""Reading chats exported by clients: SillyTavern `.jsonl` chat files and OpenAI messages JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memory.archive import Incoming

_ST_DATE_FORMATS = (
    "%B %d, %Y %I:%M%p",
    "%B %d, %Y %I:%M %p",
    "%Y-%m-%d @%Hh %Mm %Ss %fms",
    "%Y-%m-%d %H:%M:%S",
)


class ImportFormatError(ValueError):
    """The file is not a chat export we can read; the message says where it went wrong."""


@dataclass(frozen=True, slots=True)
class ImportedChat:
    messages: list[Incoming]
    title: str | None = None
    character: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_date(value: Any) -> datetime | None:
    """SillyTavern has written dates as epoch ms, ISO 8601 and several human formats over the years."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, tz=UTC)
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
        for fmt in _ST_DATE_FORMATS:
            try:
                parsed = datetime.strptime(value.strip(), fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_sillytavern(text: str) -> ImportedChat:
    """A SillyTavern chat file: a header line (`user_name`, `character_name`, `chat_metadata`) then one
    message per line (`name`, `is_user`, `is_system`, `send_date`, `mes`). Hidden system notes are kept
    out of the chat, as SillyTavern keeps them out of prompts."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ImportFormatError("the file is empty")
    try:
        records = [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"line {exc.lineno}: not JSON ({exc.msg})") from exc
    header = records[0] if "mes" not in records[0] else {}
    messages = []
    for number, record in enumerate(records[1:] if header else records, start=2 if header else 1):
        if not isinstance(record, dict) or "mes" not in record:
            raise ImportFormatError(f"line {number}: a SillyTavern message needs a 'mes' field")
        if record.get("is_system"):
            continue
        role = "user" if record.get("is_user") else "assistant"
        messages.append(
            Incoming(
                role,
                str(record["mes"]),
                record.get("name"),
                parse_date(record.get("send_date")),
                _extra(record),
            )
        )
    character = header.get("character_name")
    return ImportedChat(messages, title=f"{character} chat" if character else None, character=character)


def _extra(record: dict[str, Any]) -> dict[str, Any] | None:
    kept = {k: record[k] for k in ("swipes", "swipe_id", "extra") if record.get(k)}
    return {"sillytavern": kept} if kept else None


def parse_openai(data: Any) -> ImportedChat:
    """`{"messages": [...]}` or a bare list of `{role, content, name?}` (content may be array-of-parts)."""
    items = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ImportFormatError("expected a list of messages or an object with 'messages'")
    messages = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("role") not in ("system", "user", "assistant", "tool"):
            raise ImportFormatError(f"message {i}: needs a role of system, user, assistant or tool")
        content = item.get("content") or ""
        if isinstance(content, list):
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        messages.append(
            Incoming(item["role"], str(content), item.get("name"), parse_date(item.get("created_at")))
        )
    title = data.get("title") if isinstance(data, dict) else None
    return ImportedChat(messages, title=title)


def read_chat(path: Path) -> ImportedChat:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return parse_sillytavern(text)
    try:
        return parse_openai(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"not JSON: {exc.msg} (line {exc.lineno})") from exc
