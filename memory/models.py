"""ORM tables of users, personas and conversations; Alembic migrations (alembic/versions) are the only
schema source, these mirror them. Persona versions and card chunks are memory/persona_models.py's, facts
and relationships memory/fact_models.py's; their foreign keys only point here (or among themselves), so a
process that imports this module alone can still flush these rows. memory/schema.py gathers them all.

Every row carries `user_id` (the API key's user) and every query filters on it: memory never mixes users.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2; checked against the embedder at start-up
TEXT_SEARCH_CONFIG = "english"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def identity() -> Mapped[int]:
    return mapped_column(BigInteger, Identity(), primary_key=True)


def creation_time() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


def owner() -> Mapped[int]:
    return mapped_column(BigInteger, ForeignKey("app_user.id", ondelete="CASCADE"), index=True)


class AppUser(Base):
    """One per API key (`key_hash` = sha256 of the key); the local user of open mode has none."""

    __tablename__ = "app_user"
    id: Mapped[int] = identity()
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str | None] = mapped_column(String(16))  # shown by `anima keys list`
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    revoked: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)  # None: the server's default
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = creation_time()


class PersonaRef(Base):
    """A persona by name; the personas package owns what a persona is (its versions hold the spec).

    `user_id` is NULL for shared personas (the YAML folder); a user's own persona of the same name
    shadows a shared one for that user.
    """

    __tablename__ = "persona"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        Index("uq_persona_shared_name", "name", unique=True, postgresql_where=text("user_id IS NULL")),
    )
    id: Mapped[int] = identity()
    user_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("app_user.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16), server_default="api")  # file | api | card | learned
    version: Mapped[int] = mapped_column(Integer, server_default="0")  # the current version
    created_at: Mapped[datetime] = creation_time()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ConversationRow(Base):
    __tablename__ = "conversation"
    __table_args__ = (
        UniqueConstraint("user_id", "public_id"),
        Index("ix_conversation_scope", "user_id", "end_user", "updated_at"),
    )
    id: Mapped[int] = identity()
    public_id: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int] = owner()
    end_user: Mapped[str] = mapped_column(String(200), server_default="")
    persona_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("persona.id", ondelete="SET NULL"))
    character: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = creation_time()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MessageRow(Base):
    """One message; `parent_id` links it to the previous message of its branch (a tree per conversation)."""

    __tablename__ = "message"
    __table_args__ = (
        Index("ix_message_user_hash", "user_id", "content_hash"),
        Index("ix_message_conversation", "conversation_id", "id"),
        Index("ix_message_search", "search", postgresql_using="gin"),
        Index("ix_message_unembedded", "id", postgresql_where=text("NOT embedded")),
        Index("ix_message_facts_pending", "conversation_id", "id", postgresql_where=text("NOT facts_done")),
        Index("ix_message_user_newest", "user_id", "id"),  # recall's IDF sample: a user's newest
    )
    id: Mapped[int] = identity()
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversation.id", ondelete="CASCADE")
    )
    user_id: Mapped[int] = owner()
    parent_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    depth: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(32))
    token_count: Mapped[int] = mapped_column(Integer)
    emotion_label: Mapped[str | None] = mapped_column(String(32))
    emotion_confidence: Mapped[float | None] = mapped_column(Float)
    emotion_scores: Mapped[dict[str, float] | None] = mapped_column(JSONB)
    importance: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16), server_default="chat")  # chat | imported
    status: Mapped[str] = mapped_column(String(16), server_default="complete")  # complete | partial
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    embedded: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    facts_done: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))  # read by the fact worker
    embed_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # worker's lease
    created_at: Mapped[datetime] = creation_time()
    search: Mapped[Any] = mapped_column(
        TSVECTOR, Computed(f"to_tsvector('{TEXT_SEARCH_CONFIG}', content)", persisted=True)
    )  # the content only: a speaker's name in every one of their messages would match them all


class MessageEmbedding(Base):
    """A message's embedding; long messages have several chunks."""

    __tablename__ = "message_embedding"
    __table_args__ = (
        Index(
            "ix_message_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )
    id: Mapped[int] = identity()
    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversation.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = owner()
    chunk: Mapped[int] = mapped_column(Integer, server_default="0")
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIM))


class SummaryRow(Base):
    """A summary of the span first_message_id..last_message_id of one branch."""

    __tablename__ = "summary"
    id: Mapped[int] = identity()
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversation.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = owner()
    first_message_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("message.id", ondelete="CASCADE"))
    last_message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    message_count: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any | None] = mapped_column(Vector(EMBEDDING_DIM))
    created_at: Mapped[datetime] = creation_time()


class TurnContext(Base):
    """The prompt Anima assembled for one turn and its tokens per tier (`GET .../context`)."""

    __tablename__ = "turn_context"
    id: Mapped[int] = identity()
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversation.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = owner()
    reply_message_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("message.id", ondelete="SET NULL")
    )
    model: Mapped[str] = mapped_column(String(200))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    tokens: Mapped[dict[str, Any]] = mapped_column(JSONB)
    persona: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # {"name", "version"} that answered
    turn_id: Mapped[str | None] = mapped_column(String(36), unique=True)  # idempotent journal replays
    created_at: Mapped[datetime] = creation_time()
