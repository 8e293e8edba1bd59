"""What the memory API reads back from the archive: conversations listed with their counts, a
conversation's stored messages as they are, and the prompt recorded for one of its turns. The queries
take the session and the conversation's row id; memory/archive.py finds the row and raises when it is
missing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from memory.models import ConversationRow, MessageRow, PersonaRef, TurnContext


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    id: str
    title: str | None
    persona: str | None
    end_user: str
    created_at: datetime
    updated_at: datetime
    message_count: int
    pending_embeddings: int


async def conversation_infos(
    s: AsyncSession, user_id: int, *, public_id: str | None, limit: int, offset: int
) -> list[ConversationInfo]:
    """The user's conversations (or the one `public_id` names), the most recently updated first, with
    their message counts and how many of those still wait for an embedding."""
    counts = (
        select(
            MessageRow.conversation_id,
            func.count().label("n"),
            func.count().filter(~MessageRow.embedded).label("pending"),
        )
        .group_by(MessageRow.conversation_id)
        .subquery()
    )
    query = (
        select(ConversationRow, PersonaRef.name, counts.c.n, counts.c.pending)
        .outerjoin(counts, counts.c.conversation_id == ConversationRow.id)
        .outerjoin(PersonaRef, PersonaRef.id == ConversationRow.persona_id)
        .where(ConversationRow.user_id == user_id)
        .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    if public_id is not None:
        query = query.where(ConversationRow.public_id == public_id)
    return [
        ConversationInfo(
            id=c.public_id,
            title=c.title,
            persona=persona,
            end_user=c.end_user,
            created_at=c.created_at,
            updated_at=c.updated_at,
            message_count=n or 0,
            pending_embeddings=pending or 0,
        )
        for c, persona, n, pending in (await s.execute(query)).all()
    ]


async def stored_messages(
    s: AsyncSession, *, user_id: int, conversation_id: int, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Every stored message of the conversation (all branches) in storage order, as the API shows it."""
    rows = await s.scalars(
        select(MessageRow)
        .where(MessageRow.conversation_id == conversation_id, MessageRow.user_id == user_id)
        .order_by(MessageRow.id)
        .limit(limit)
        .offset(offset)
    )
    return [
        {
            "id": m.id,
            "parent_id": m.parent_id,
            "role": m.role,
            "name": m.name,
            "content": m.content,
            "created_at": m.created_at.isoformat(),
            "source": m.source,
            "status": m.status,
            "token_count": m.token_count,
            "emotion": m.emotion_label,
            "importance": m.importance,
            "metadata": m.meta,
        }
        for m in rows
    ]


async def recorded_prompt(
    s: AsyncSession, *, user_id: int, conversation_id: int, turn: int | None
) -> dict[str, Any] | None:
    """The prompt recorded for the latest turn, or for turn `turn` (1 = the first); None: no such turn."""
    query = select(TurnContext).where(
        TurnContext.conversation_id == conversation_id, TurnContext.user_id == user_id
    )
    if turn is None:
        query = query.order_by(TurnContext.id.desc())
    else:
        query = query.order_by(TurnContext.id).offset(turn - 1)
    found = await s.scalar(query.limit(1))
    if found is None:
        return None
    total = await s.scalar(select(func.count()).where(TurnContext.conversation_id == conversation_id))
    return {
        "turn": turn or total,
        "turns": total,
        "model": found.model,
        "reply_message_id": found.reply_message_id,
        "messages": found.messages,
        "tokens": found.tokens,
        "persona": found.persona,
        "created_at": found.created_at.isoformat(),
    }
