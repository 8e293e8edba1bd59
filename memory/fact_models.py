"""ORM tables of what conversations established (facts, their supporting messages) and of where the
user stands with each persona; written by the fact worker, read for the prompt's knowledge blocks.
Apart from memory/models.py because only the fact path and the memory API need them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from memory.models import Base, creation_time, identity, owner


class FactRow(Base):
    """Something a conversation established about the user, the character or a named third party.

    Versions are never overwritten: a changed fact closes the old row (`valid_to`, `superseded_by`)
    and opens a new one. `attribute` names the slot a value fills ("home city", "sister's job"), so a
    new value for the same slot is a change and the same value is a repeat (memory/facts.py).
    """

    __tablename__ = "fact"
    __table_args__ = (
        Index(
            "ix_fact_current",
            "user_id",
            "end_user",
            "subject",
            "attribute",
            postgresql_where=text("valid_to IS NULL"),
        ),
    )
    id: Mapped[int] = identity()
    user_id: Mapped[int] = owner()
    end_user: Mapped[str] = mapped_column(String(200), server_default="")
    persona_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("persona.id", ondelete="SET NULL"), index=True
    )
    conversation_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("conversation.id", ondelete="SET NULL"), index=True
    )
    subject: Mapped[str] = mapped_column(String(16))  # user | character | other
    subject_name: Mapped[str | None] = mapped_column(String(200))  # the third party (or character) named
    kind: Mapped[str] = mapped_column(String(32))
    attribute: Mapped[str] = mapped_column(String(200))
    value: Mapped[str] = mapped_column(Text)
    statement: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    origin: Mapped[str] = mapped_column(String(16))  # inference | correction
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    superseded_by: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("fact.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = creation_time()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FactSource(Base):
    """A message that supports a fact. When a fact's last source is deleted, a trigger deletes the fact
    (and reopens the version it had superseded): facts only deleted messages supported do not outlive them.
    Facts the user stated through the API have no sources and are never removed that way."""

    __tablename__ = "fact_source"
    fact_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("fact.id", ondelete="CASCADE"), primary_key=True
    )
    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("message.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    user_id: Mapped[int] = owner()


class RelationshipRow(Base):
    """How the user stands with one persona: interactions, emotional trend (`score`, -1..1), and the
    stage the user set (NULL: the persona's ladder decides from the numbers, personas/relationship.py)."""

    __tablename__ = "relationship"
    __table_args__ = (UniqueConstraint("user_id", "end_user", "persona_id"),)
    id: Mapped[int] = identity()
    user_id: Mapped[int] = owner()
    end_user: Mapped[str] = mapped_column(String(200), server_default="")
    persona_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("persona.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float, server_default="0")
    interactions: Mapped[int] = mapped_column(Integer, server_default="0")
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
