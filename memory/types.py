"""Plain data shared by every layer: frozen dataclasses, no behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message as Anima handles it internally: text only, role normalised."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    name: str | None = None
