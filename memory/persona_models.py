"""ORM tables of persona versions and client card chunks (the persona row itself is memory/models.py's,
since conversations refer to it): what memory/personas.py stores for personas/, as opaque specs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from memory.models import EMBEDDING_DIM, Base, creation_time, identity, owner


class PersonaVersionRow(Base):
    """One immutable version of a persona; replies record which version answered."""

    __tablename__ = "persona_version"
    __table_args__ = (UniqueConstraint("persona_id", "version"),)
    id: Mapped[int] = identity()
    persona_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("persona.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = creation_time()


class PersonaChunk(Base):
    """A piece of a client's character card, embedded so an oversized card is recalled piecewise."""

    __tablename__ = "persona_chunk"
    __table_args__ = (UniqueConstraint("persona_id", "card_hash", "position"),)
    id: Mapped[int] = identity()
    persona_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("persona.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = owner()
    card_hash: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any | None] = mapped_column(Vector(EMBEDDING_DIM))
    created_at: Mapped[datetime] = creation_time()
