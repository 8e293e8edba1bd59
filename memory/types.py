"""Plain data shared by every layer: frozen dataclasses, no behaviour, no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

# the roles of the conversation itself (system messages are instructions around it): what recognition
# hashes and aligns, and what the prompt's history is made of; tool results are part of it
CHAT_ROLES = ("user", "assistant", "tool")


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


# turn: a new chat turn (a group member's included); regenerate: a swipe of a stored turn; continue:
# the reply extends the last stored reply; prefill: the reply follows a new trailing assistant message;
# impersonate: the model writes the user's line (not stored); quiet: not a chat turn (not stored).
TurnKind = Literal["turn", "regenerate", "continue", "prefill", "impersonate", "quiet"]


@dataclass(frozen=True, slots=True)
class Thread:
    """Where an incoming request sits in stored memory: the result of recognising it, decided once.

    `path` is the stored branch's tail ending at `anchor_id` (oldest first); `earlier` holds the stored
    messages before the client's first chat message (what a trimmed or thin client did not send,
    newest within a token cap); `matched` the stored id of each client chat message recognised;
    `new` the incoming messages not stored yet, to be stored under the anchor; the reply goes after
    them. `revisions` are stored messages the client shows differently (an edit, what it kept after
    Stop): the client's text wins. `first` is the stored copy of the client's first chat message.
    """

    conversation_id: int
    public_id: str
    created: bool
    kind: TurnKind
    anchor_id: int | None
    path: tuple[StoredMessage, ...]
    new: tuple[Message, ...]
    prefill: str = ""
    earlier: tuple[StoredMessage, ...] = ()
    matched: tuple[int, ...] = ()
    revisions: tuple[tuple[int, Message], ...] = ()
    speaker: str | None = None
    first: StoredMessage | None = None

    @property
    def stores_reply(self) -> bool:
        return self.kind not in ("impersonate", "quiet")

    @property
    def oldest(self) -> StoredMessage | None:
        """The oldest stored message the prompt can hold (the earlier history's, else the client's first)."""
        return self.earlier[0] if self.earlier else self.first

    @property
    def older(self) -> bool:
        """The branch holds messages older than anything the prompt can hold."""
        oldest = self.oldest
        if oldest is None:
            return bool(self.path)
        return oldest.depth > 0


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
class TurnRecord:
    """What happened in one turn, for storing it: the reply text and the prompt that produced it."""

    reply: str
    status: str  # complete | partial
    model: str
    prompt: list[dict[str, Any]]
    tokens: dict[str, Any]
    newest: Annotation | None = None  # the emotion step's reading of the newest user message
    persona: dict[str, Any] | None = None  # {"name", "version"} that answered
    persona_id: int | None = None  # the conversation's persona from now on
    incoming: tuple[Message, ...] = ()  # the request's messages: what the journal re-recognises
    reply_tool_calls: tuple[ToolCall, ...] = ()  # the reply's function calls (stored with it)
    # vectors the request already computed, by the exact text embedded (the recall query): stored with
    # the message of that text instead of encoding it again (memory.workers.store_known)
    vectors: dict[str, list[float]] = field(default_factory=dict)
    turn_id: str = field(
        default_factory=lambda: uuid.uuid4().hex
    )  # one turn is stored once, whatever retries


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
