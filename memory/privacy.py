"""Everything stored for one user: exported as one JSON document, or erased.

The export streams conversation by conversation (a long-time user's history can be large) and holds
what Anima keeps about them: conversations with every message (emotion, importance, metadata),
summaries and the prompts assembled for each turn, their own personas with every version, every
version of every fact known about them (with its source messages) and their relationships.
Embeddings are left out (derived data, 384 floats per chunk); they are rebuilt from the text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from memory.fact_models import FactRow, FactSource, RelationshipRow
from memory.models import AppUser, ConversationRow, MessageRow, PersonaRef, SummaryRow, TurnContext
from memory.persona_models import PersonaVersionRow
from memory.quoting import redact_messages
from memory.users import delete_user

_MESSAGE = (
    "id", "parent_id", "depth", "role", "name", "content", "status", "source", "emotion_label",
    "emotion_confidence", "emotion_scores", "importance", "created_at",
)  # fmt: skip


_FACT = (
    "id", "end_user", "subject", "subject_name", "kind", "attribute", "value", "statement", "confidence",
    "origin", "valid_from", "valid_to", "superseded_by", "persona_id", "conversation_id", "created_at",
)  # fmt: skip
_RELATIONSHIP = ("end_user", "stage", "score", "interactions", "first_at", "updated_at")


def _row(row: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: getattr(row, f) for f in fields}


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


async def export_user(sessions: async_sessionmaker[AsyncSession], user_id: int) -> AsyncIterator[bytes]:
    """The user's data as one JSON object, in pieces."""
    async with sessions() as s:
        user = await s.get(AppUser, user_id)
        if user is None:
            yield b"{}"
            return
        head = {"id": user.id, "name": user.name, "admin": user.is_admin, "created_at": user.created_at}
        yield b'{"user":' + _json(head) + b',"conversations":['
        conversations = await _all(s, ConversationRow.user_id == user_id, ConversationRow.id)
        for i, c in enumerate(conversations):
            yield (b"," if i else b"") + _json(await _conversation(s, c))
        yield b'],"personas":['
        for i, ref in enumerate(await _all(s, PersonaRef.user_id == user_id, PersonaRef.id)):
            versions = await _all(s, PersonaVersionRow.persona_id == ref.id, PersonaVersionRow.version)
            persona: dict[str, Any] = {
                "name": ref.name,
                "source": ref.source,
                "version": ref.version,
                "versions": [_row(v, ("version", "source", "spec", "note", "created_at")) for v in versions],
            }
            yield (b"," if i else b"") + _json(persona)
        yield b'],"facts":' + _json(await _facts(s, user_id))
        yield b',"relationships":' + _json(await _relationships(s, user_id)) + b"}"


async def _all(
    s: AsyncSession, where: ColumnElement[bool], order: InstrumentedAttribute[Any]
) -> Sequence[Any]:
    """The rows of `order`'s table that match `where`, in `order`."""
    return (await s.scalars(select(order.class_).where(where).order_by(order))).all()


async def _conversation(s: AsyncSession, c: ConversationRow) -> dict[str, Any]:
    """One conversation with its messages, summaries and the prompts assembled for its turns."""
    messages = await _all(s, MessageRow.conversation_id == c.id, MessageRow.id)
    summaries = await _all(s, SummaryRow.conversation_id == c.id, SummaryRow.id)
    turns = await _all(s, TurnContext.conversation_id == c.id, TurnContext.id)
    return {
        "id": c.public_id,
        "title": c.title,
        "character": c.character,
        "end_user": c.end_user,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "messages": [_row(m, _MESSAGE) | {"metadata": m.meta} for m in messages],
        "summaries": [
            _row(x, ("first_message_id", "last_message_id", "message_count", "content", "created_at"))
            for x in summaries
        ],
        "turns": [
            _row(t, ("reply_message_id", "model", "messages", "tokens", "persona", "created_at"))
            for t in turns
        ],
    }


async def _facts(s: AsyncSession, user_id: int) -> list[dict[str, Any]]:
    """Every version of every fact (issue 17), with the messages that support it."""
    rows = await _all(s, FactRow.user_id == user_id, FactRow.id)
    sources: dict[int, list[int]] = {}
    for fact_id, message_id in await s.execute(
        select(FactSource.fact_id, FactSource.message_id)
        .where(FactSource.user_id == user_id)
        .order_by(FactSource.message_id)
    ):
        sources.setdefault(fact_id, []).append(message_id)
    return [_row(r, _FACT) | {"sources": sources.get(r.id, [])} for r in rows]


async def _relationships(s: AsyncSession, user_id: int) -> list[dict[str, Any]]:
    rows = await s.execute(
        select(RelationshipRow, PersonaRef.name)
        .join(PersonaRef, PersonaRef.id == RelationshipRow.persona_id)
        .where(RelationshipRow.user_id == user_id)
        .order_by(RelationshipRow.id)
    )
    return [_row(r, _RELATIONSHIP) | {"persona": name} for r, name in rows]


async def erase_user(sessions: async_sessionmaker[AsyncSession], user_id: int) -> list[int]:
    """Delete the user and all it owns; returns the erased conversations' ids (to drop from caches)."""
    async with sessions.begin() as s:
        ids = list(
            (await s.scalars(select(ConversationRow.id).where(ConversationRow.user_id == user_id))).all()
        )
        await delete_user(s, user_id)
    return ids


async def redact_recalled(session: AsyncSession, *, user_id: int, conversation: ConversationRow) -> int:
    """Before a conversation is deleted: its text leaves the prompts recorded for the user's other
    conversations (recall quoted it there), unless that conversation holds the same text itself.
    Only prompts recorded since the conversation was created can quote it. Returns prompts changed."""
    texts = set(
        await session.scalars(select(MessageRow.content).where(MessageRow.conversation_id == conversation.id))
    )
    texts |= set(
        await session.scalars(select(SummaryRow.content).where(SummaryRow.conversation_id == conversation.id))
    )
    if not texts:
        return 0
    snapshots = await session.scalars(
        select(TurnContext)
        .where(
            TurnContext.user_id == user_id,
            TurnContext.conversation_id != conversation.id,
            TurnContext.created_at >= conversation.created_at,
        )
        .order_by(TurnContext.id)
    )
    own: dict[int, set[str]] = {}
    changed = 0
    for snapshot in snapshots:
        if redact_messages(snapshot.messages, texts) is None:
            continue
        if snapshot.conversation_id not in own:
            own[snapshot.conversation_id] = set(
                await session.scalars(
                    select(MessageRow.content).where(MessageRow.conversation_id == snapshot.conversation_id)
                )
            )
        redacted = redact_messages(snapshot.messages, texts - own[snapshot.conversation_id])
        if redacted is not None:
            snapshot.messages, changed = redacted, changed + 1
    return changed
