"""Plain data shared by every layer: frozen dataclasses, no behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message as Anima handles it internally: text only, role normalised."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Who is talking and, if the client said so, in which conversation.

    `end_user` is the OpenAI `user` field: a memory scope inside one API key, not a chat.
    `character`/`user_name` come from optional client headers (SillyTavern `{{char}}`/`{{user}}`).
    """

    user_id: int
    end_user: str = ""
    conversation: str | None = None
    character: str | None = None
    user_name: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    role: str
    content: str
    name: str | None
    token_count: int
    created_at: datetime
    parent_id: int | None = None
    depth: int = 0  # messages before this one on its branch
    emotion_label: str | None = None
    importance: float | None = None
    status: str = "complete"
    emotion_scores: dict[str, float] | None = None
    emotion_confidence: float | None = None


TurnKind = Literal["turn", "regenerate", "continue", "prefill", "quiet"]


@dataclass(frozen=True, slots=True)
class Thread:
    """Where an incoming request sits in stored memory (the result of recognising it).

    `path` is the stored branch from its root to `anchor_id` (oldest first); `new` are the incoming
    messages not stored yet, to be stored under the anchor; the reply goes after them.
    """

    conversation_id: int
    public_id: str
    created: bool
    kind: TurnKind
    anchor_id: int | None
    path: tuple[StoredMessage, ...]
    new: tuple[Message, ...]
    prefill: str = ""


@dataclass(frozen=True, slots=True)
class Memory:
    """A recalled message, ranked; `token_count` (its content, counted when stored) lets the prompt
    assembler fit memories by tokens without counting them again."""

    message_id: int
    conversation_id: str
    role: str
    name: str | None
    content: str
    score: float
    created_at: datetime
    metadata: dict[str, Any] | None = None
    emotion_label: str | None = None
    importance: float | None = None
    token_count: int = 0
    parent_id: int | None = None  # the previous turn of its branch


@dataclass(frozen=True, slots=True)
class Summary:
    first_message_id: int
    last_message_id: int
    content: str
    token_count: int


@dataclass(frozen=True, slots=True)
class Recall:
    """Everything memory offers for one turn; the prompt assembler decides what fits."""

    thread: Thread
    memories: tuple[Memory, ...] = ()
    summaries: tuple[Summary, ...] = ()
    degraded: tuple[str, ...] = field(default=())  # memory steps that failed or missed their deadline


@dataclass(frozen=True, slots=True)
class Annotation:
    """What the emotion step says about a message, stored with it (emotion fields None: not detected)."""

    importance: float
    emotion_label: str | None = None
    emotion_confidence: float | None = None
    emotion_scores: dict[str, float] | None = None

    def columns(self) -> dict[str, Any]:
        return {
            "importance": self.importance,
            "emotion_label": self.emotion_label,
            "emotion_confidence": self.emotion_confidence,
            "emotion_scores": self.emotion_scores,
        }
