"""Plain data shared by every layer: frozen dataclasses, no behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call an assistant message made; `arguments` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Part:
    """One element of array-of-parts content as the client sent it (JSON text, so Message stays
    hashable). Only messages with a non-text part keep their parts; `content` is always their text."""

    type: str  # "text" | "image_url" | "input_audio" | "file" | ...
    raw: str


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message as Anima handles it internally: text, role normalised, plus what a tool-using or
    multimodal client sent with it (empty for plain chat, so text-only code paths are unaffected)."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message's function calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    parts: tuple[Part, ...] = ()  # every part, in order, when any is not text (images)

    def has_media(self) -> bool:
        return any(p.type != "text" for p in self.parts)


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
    tool_calls: tuple[ToolCall, ...] = ()  # kept in the row's metadata (see memory.history.tool_meta)
    tool_call_id: str | None = None


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
    """A recalled message, ranked."""

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
