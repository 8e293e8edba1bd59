"""Postgres turn history: every query takes an AsyncSession, filters by user, and never commits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, bindparam, delete, exists, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from memory.models import ConversationRow, MessageEmbedding, MessageRow
from memory.threads import Candidate, content_hash
from memory.types import Message, StoredMessage, ToolCall

_PATH = text(
    """
    WITH RECURSIVE path AS (
        SELECT m.*, 0 AS up FROM message m WHERE m.id = :anchor AND m.user_id = :user
        UNION ALL
        SELECT m.*, p.up + 1 FROM message m JOIN path p ON m.id = p.parent_id WHERE p.up + 1 < :limit
    )
    SELECT id, role, content, name, token_count, created_at, parent_id, depth,
           emotion_label, importance, status, emotion_scores, emotion_confidence, metadata
    FROM path ORDER BY up DESC
    """
)
_PATH_TOKENS = text(
    """
    WITH RECURSIVE path AS (
        SELECT m.*, 0 AS up, CASE WHEN :skip_first THEN 0 ELSE m.token_count + 4 END AS spent
        FROM message m WHERE m.id = :anchor AND m.user_id = :user
        UNION ALL
        SELECT m.*, p.up + 1, p.spent + m.token_count + 4 FROM message m JOIN path p ON m.id = p.parent_id
        WHERE p.up + 1 < :limit AND p.spent + m.token_count + 4 <= :tokens
    )
    SELECT id, role, content, name, token_count, created_at, parent_id, depth,
           emotion_label, importance, status, emotion_scores, emotion_confidence, metadata
    FROM path WHERE spent <= :tokens ORDER BY up DESC
    """
)


def tool_meta(message: Message) -> dict[str, Any]:
    """What a message carries besides its text, for the row's metadata: its tool calls, the call it
    answers, and a marker per image/media part (type, sha256 and size of the data, never the data)."""
    meta: dict[str, Any] = {}
    if message.tool_calls:
        meta["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        meta["tool_call_id"] = message.tool_call_id
    media = [p for p in message.parts if p.type != "text"]
    if media:
        meta["parts"] = [
            {
                "type": p.type,
                "ref": "sha256:" + hashlib.sha256(p.raw.encode()).hexdigest(),
                "chars": len(p.raw),
            }
            for p in media
        ]
    return meta


def with_tool_meta(meta: dict[str, Any] | None, message: Message) -> dict[str, Any] | None:
    extra = tool_meta(message)
    return (meta or {}) | extra if extra else meta


def stored_row_of(row: Any) -> StoredMessage:
    meta = getattr(row, "meta", None) if isinstance(row, MessageRow) else getattr(row, "metadata", None)
    meta = meta if isinstance(meta, dict) else {}
    return StoredMessage(
        id=row.id,
        role=row.role,
        content=row.content,
        name=row.name,
        token_count=row.token_count,
        created_at=row.created_at,
        parent_id=row.parent_id,
        depth=row.depth,
        emotion_label=row.emotion_label,
        importance=row.importance,
        status=row.status,
        emotion_scores=row.emotion_scores,
        emotion_confidence=row.emotion_confidence,
        tool_calls=tuple(
            ToolCall(str(c.get("id")), str(c.get("name")), str(c.get("arguments") or ""))
            for c in meta.get("tool_calls") or ()
        ),
        tool_call_id=meta.get("tool_call_id"),
    )


def _candidates_query(in_conversation: bool) -> Select[Any]:
    """Recognition's one read, built once (building it took longer than Postgres took to run it)."""
    m, c = MessageRow.__table__.c, ConversationRow.__table__.c  # Core, not ORM: no ORM compile step
    parent = MessageRow.__table__.alias("parent")
    child = MessageRow.__table__.alias("child")
    grandchild = MessageRow.__table__.alias("grandchild")
    has_child = exists().where(child.c.parent_id == m.id)
    has_grandchild = exists().where(child.c.parent_id == m.id, grandchild.c.parent_id == child.c.id)
    query = (
        select(
            m.id,
            m.conversation_id,
            m.parent_id,
            m.content_hash,
            m.role,
            parent.c.role.label("parent_role"),
            parent.c.parent_id.label("grandparent_id"),
            has_child.label("has_child"),
            has_grandchild.label("has_grandchild"),
            c.public_id,
            c.character,
        )
        .select_from(MessageRow.__table__.join(ConversationRow.__table__, c.id == m.conversation_id))
        .outerjoin(parent, parent.c.id == m.parent_id)
        .where(m.user_id == bindparam("user"), m.content_hash.in_(bindparam("hashes", expanding=True)))
        .where(c.end_user == bindparam("end_user"))
    )
    return query.where(m.conversation_id == bindparam("conversation")) if in_conversation else query


_CANDIDATES, _CANDIDATES_OF = _candidates_query(False), _candidates_query(True)


async def candidates(
    session: AsyncSession, *, user_id: int, end_user: str, hashes: Sequence[str], conversation_id: int | None
) -> list[Candidate]:
    """Stored messages whose hash occurs in the request, with their parent's role and parent (edits),
    whether they have children and grandchildren, and their conversation's public id and character:
    all recognition needs to choose a conversation, in one round trip."""
    query = _CANDIDATES if conversation_id is None else _CANDIDATES_OF
    params = {"user": user_id, "hashes": list(set(hashes)), "end_user": end_user}
    if conversation_id is not None:
        params["conversation"] = conversation_id
    rows = (await session.execute(query, params)).all()
    return [
        Candidate(
            r.id,
            r.conversation_id,
            r.parent_id,
            r.content_hash,
            r.role,
            r.parent_role,
            r.grandparent_id,
            bool(r.has_child),
            bool(r.has_grandchild),
            r.public_id,
            r.character,
        )
        for r in rows
    ]


async def replies(
    session: AsyncSession, *, user_id: int, parent_id: int | None, conversation_id: int
) -> list[StoredMessage]:
    """The assistant replies stored under one message (swipes), newest first."""
    same_parent = MessageRow.parent_id.is_(None) if parent_id is None else MessageRow.parent_id == parent_id
    rows = await session.scalars(
        select(MessageRow)
        .where(MessageRow.user_id == user_id, MessageRow.conversation_id == conversation_id, same_parent)
        .where(MessageRow.role == "assistant")
        .order_by(MessageRow.id.desc())
        .limit(32)
    )
    return [stored_row_of(r) for r in rows]


async def conversation_by_public_id(
    session: AsyncSession, *, user_id: int, public_id: str
) -> ConversationRow | None:
    row: ConversationRow | None = await session.scalar(
        select(ConversationRow).where(
            ConversationRow.user_id == user_id, ConversationRow.public_id == public_id
        )
    )
    return row


async def create_conversation(
    session: AsyncSession,
    *,
    user_id: int,
    public_id: str,
    end_user: str = "",
    character: str | None = None,
    title: str | None = None,
    persona_id: int | None = None,
) -> ConversationRow:
    row = ConversationRow(
        user_id=user_id,
        public_id=public_id,
        end_user=end_user,
        character=character,
        title=title,
        persona_id=persona_id,
    )
    session.add(row)
    await session.flush()
    return row


async def ensure_conversation(
    session: AsyncSession, *, user_id: int, public_id: str, end_user: str, character: str | None
) -> int:
    """The conversation's row id, creating it if needed; safe when two workers create it at once."""
    inserted = await session.scalar(
        pg_insert(ConversationRow)
        .values(user_id=user_id, public_id=public_id, end_user=end_user, character=character)
        .on_conflict_do_nothing(index_elements=["user_id", "public_id"])
        .returning(ConversationRow.id)
    )
    if inserted is not None:
        return int(inserted)
    existing = await conversation_by_public_id(session, user_id=user_id, public_id=public_id)
    assert existing is not None
    return existing.id


async def head(session: AsyncSession, *, conversation_id: int) -> int | None:
    """The newest message of a conversation: where a thin client's new message goes."""
    value: int | None = await session.scalar(
        select(func.max(MessageRow.id)).where(MessageRow.conversation_id == conversation_id)
    )
    return value


async def path(
    session: AsyncSession,
    *,
    user_id: int,
    anchor_id: int,
    limit: int,
    max_tokens: int | None = None,
    skip_first: bool = False,
) -> list[StoredMessage]:
    """The branch ending at `anchor_id`, oldest first: at most `limit` messages and, with
    `max_tokens`, only as many as fit that many tokens, newest first (`skip_first`: the anchor itself
    is returned but not counted)."""
    if max_tokens is None:
        rows = (await session.execute(_PATH, {"anchor": anchor_id, "user": user_id, "limit": limit})).all()
    else:
        params = {
            "anchor": anchor_id,
            "user": user_id,
            "limit": limit,
            "tokens": max_tokens,
            "skip_first": skip_first,
        }
        rows = (await session.execute(_PATH_TOKENS, params)).all()
    return [stored_row_of(r) for r in rows]


async def revise(
    session: AsyncSession, *, user_id: int, message_id: int, message: Message, tokens: int, keep: bool = True
) -> None:
    """The client shows a stored message differently (an edit, what it kept after Stop) or a continue
    grew it: the new text wins and the message is embedded again; with `keep`, the previous text
    stays in the row's metadata (the last ten versions)."""
    row = await session.get(MessageRow, message_id)
    if row is None or row.user_id != user_id or row.content == message.content:
        return
    if keep:
        earlier = list((row.meta or {}).get("revisions", []))[-9:]
        row.meta = (row.meta or {}) | {"revisions": [*earlier, row.content]}
    row.content = message.content
    row.content_hash = content_hash(Message(row.role, message.content))
    row.token_count = tokens
    row.embedded = False
    await session.execute(delete(MessageEmbedding).where(MessageEmbedding.message_id == message_id))


async def depth_of(session: AsyncSession, message_id: int | None) -> int:
    if message_id is None:
        return -1
    value = await session.scalar(select(MessageRow.depth).where(MessageRow.id == message_id))
    return int(value) if value is not None else -1
