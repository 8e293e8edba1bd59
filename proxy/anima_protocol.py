"""Anima's own API bodies (memory, emotion, persona learning): wire models, but not OpenAI's.

Kept apart from proxy/protocol.py so that module stays the OpenAI surface a drop-in client sees; both
share `Storable` (no NUL, lone surrogate or NaN reaches Postgres) and `ContentPart`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from proxy.protocol import ContentPart, Storable


class MemoryMessage(BaseModel):
    """A message given to the memory API (import or append)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart]
    name: str | None = Field(default=None, max_length=200)
    created_at: datetime | None = None
    metadata: dict[str, Any] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class ConversationCreate(Storable):
    id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[\w.:@-]+$")
    persona: str | None = Field(default=None, max_length=200)
    title: str | None = Field(default=None, max_length=500)
    user: str | None = Field(default=None, max_length=200)
    messages: list[MemoryMessage] = Field(min_length=1, max_length=100_000)


class MessagesAppend(Storable):
    messages: list[MemoryMessage] = Field(min_length=1, max_length=100_000)


ANALYZE_BATCH = 256
AnalyzedText = Annotated[str, StringConstraints(min_length=1, max_length=20_000, pattern=r"\S")]


class EmotionAnalyze(Storable):
    """`{"text": "..."}` or `{"texts": ["...", ...]}` (at most 256); blank text is an error."""

    text: AnalyzedText | None = None
    texts: list[AnalyzedText] | None = Field(default=None, min_length=1, max_length=ANALYZE_BATCH)

    @model_validator(mode="after")
    def _one_of(self) -> EmotionAnalyze:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of 'text' or 'texts'")
        return self

    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or ())


class MemorySearch(Storable):
    query: str = Field(min_length=1, max_length=10_000)
    conversation_id: str | None = None
    scope: Literal["branch", "persona", "user"] | None = None
    k: int = Field(default=10, ge=1, le=100)


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    title: str | None = None
    persona: str | None = None
    user: str = ""
    created_at: datetime
    updated_at: datetime
    message_count: int
    pending_embeddings: int


class SearchHit(BaseModel):
    message_id: int
    conversation_id: str
    role: str
    name: str | None = None
    content: str
    score: float
    created_at: datetime
    metadata: dict[str, Any] | None = None


LearnText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class PersonaLearn(Storable):
    """`POST /v1/personas/{name}/learn`: whose messages to profile, from a conversation or given."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str | None = Field(default=None, min_length=1, max_length=200)
    role: Literal["user", "assistant"] = Field(default="user", description="whose messages to profile")
    messages: list[LearnText] | None = Field(default=None, min_length=1, max_length=20_000)
    model: str | None = Field(default=None, max_length=200, description="model that writes the profile")
    display_name: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_source(self) -> PersonaLearn:
        if (self.conversation_id is None) == (self.messages is None):
            raise ValueError("give either conversation_id or messages")
        return self
