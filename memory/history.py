"""Postgres turn history: every query takes an AsyncSession, filters by user, and never commits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from memory.models import ConversationRow, MessageEmbedding, MessageRow
from memory.threads import Candidate, content_hash, same_or_trimmed
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


def _with_tool_meta(meta: dict[str, Any] | None, message: Message) -> dict[str, Any] | None:
    extra = tool_meta(message)
    return (meta or {}) | extra if extra else meta


def _stored(row: Any) -> StoredMessage:
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


async def candidates(
    session: AsyncSession, *, user_id: int, end_user: str, hashes: Sequence[str], conversation_id: int | None
) -> list[Candidate]:
    """Stored messages whose hash occurs in the request, with their parent's role and parent (edits),
    whether they have children and grandchildren, and their conversation's public id and character:
    all recognition needs to choose a conversation, in one round trip."""
    parent = MessageRow.__table__.alias("parent")
    child = MessageRow.__table__.alias("child")
    grandchild = MessageRow.__table__.alias("grandchild")
    has_child = exists().where(child.c.parent_id == MessageRow.id)
    has_grandchild = exists().where(child.c.parent_id == MessageRow.id, grandchild.c.parent_id == child.c.id)
    query = (
        select(
            MessageRow.id,
            MessageRow.conversation_id,
            MessageRow.parent_id,
            MessageRow.content_hash,
            MessageRow.role,
            parent.c.role.label("parent_role"),
            parent.c.parent_id.label("grandparent_id"),
            has_child.label("has_child"),
            has_grandchild.label("has_grandchild"),
            ConversationRow.public_id,
            ConversationRow.character,
        )
        .join(ConversationRow, ConversationRow.id == MessageRow.conversation_id)
        .outerjoin(parent, parent.c.id == MessageRow.parent_id)
        .where(MessageRow.user_id == user_id, MessageRow.content_hash.in_(set(hashes)))
        .where(ConversationRow.end_user == end_user)
    )
    if conversation_id is not None:
        query = query.where(MessageRow.conversation_id == conversation_id)
    rows = (await session.execute(query)).all()
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
    return [_stored(r) for r in rows]


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
    return [_stored(r) for r in rows]


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


async def append(
    session: AsyncSession,
    *,
    user_id: int,
    conversation_id: int,
    parent_id: int | None,
    messages: Sequence[Message],
    token_counts: Sequence[int],
    source: str = "chat",
    status: str = "complete",
    created_at: Sequence[datetime | None] | None = None,
    metadata: Sequence[dict[str, Any] | None] | None = None,
    extras: Sequence[dict[str, Any]] | None = None,
    parent_depth: int | None = None,
    reuse: bool = False,
    client_copies: int = 0,
    persona_id: int | None = None,
) -> list[StoredMessage]:
    """Store `messages` as a chain under `parent_id`; returns them with their ids.

    One bulk INSERT (executemany) for the whole chain: the ids are drawn from the table's sequence
    first, so each row's parent id is known before anything is written. `parent_depth`, when the
    caller knows it, saves a lookup, and timestamps are set here so nothing is read back. `reuse`:
    a message that is already stored under the same parent (same role and text) is taken instead of
    stored again; a request recognised before the previous turn's store landed (another worker, a
    slow store) then adds only what is really new. Only a leading run can be reused: the first new
    message has no children yet, so nothing after it can exist. The first `client_copies` messages are
    the client's own copies: an assistant one among them may be the part of a broken-off reply it
    kept, which is then that stored reply, revised to the client's text. `persona_id`: the persona the
    conversation talks to now, set in the same UPDATE that marks the conversation updated.
    """
    depth = parent_depth if parent_depth is not None else await depth_of(session, parent_id)
    stored: list[StoredMessage] = []
    start = 0
    while reuse and start < len(messages):
        existing = await _stored_child(session, conversation_id, parent_id, messages[start])
        if existing is None and start < client_copies:
            existing = await _kept_part(session, user_id, conversation_id, parent_id, messages[start])
        if existing is None:
            break
        if existing.content != messages[start].content:  # the part of a broken-off reply the client kept
            message = messages[start]
            await revise(
                session, user_id=user_id, message_id=existing.id, message=message, tokens=token_counts[start]
            )
            existing = replace(existing, content=message.content)
        stored.append(existing)
        parent_id, depth, start = existing.id, existing.depth, start + 1
    if start < len(messages):
        now = datetime.now(UTC)
        ids = await _new_ids(session, len(messages) - start)
        rows: list[dict[str, Any]] = []
        for offset, i in enumerate(range(start, len(messages))):
            message, depth = messages[i], depth + 1
            rows.append(
                {
                    "id": ids[offset],
                    "conversation_id": conversation_id,
                    "user_id": user_id,
                    "parent_id": parent_id,
                    "depth": depth,
                    "role": message.role,
                    "name": message.name,
                    "content": message.content,
                    "content_hash": content_hash(message),
                    "token_count": token_counts[i],
                    "source": source,
                    "status": status,
                    "meta": _with_tool_meta(metadata[i] if metadata else None, message),
                    "created_at": created_at[i] if created_at and created_at[i] is not None else now,
                }
                | (extras[i] if extras else {})
            )
            parent_id = ids[offset]
        await _insert_chain(session, rows)
        stored += [_stored_row(row) for row in rows]
    now_talking = {"persona_id": persona_id} if persona_id is not None else {}
    await session.execute(
        update(ConversationRow)
        .where(ConversationRow.id == conversation_id)
        .values(updated_at=func.now(), **now_talking)
    )
    return stored


async def _new_ids(session: AsyncSession, count: int) -> list[int]:
    """`count` fresh message ids, ascending (storage order is id order)."""
    rows = await session.scalars(
        text("SELECT nextval(pg_get_serial_sequence('message', 'id')) FROM generate_series(1, :n)"),
        {"n": count},
    )
    return sorted(int(i) for i in rows)


async def _stored_child(
    session: AsyncSession, conversation_id: int, parent_id: int | None, message: Message
) -> StoredMessage | None:
    """The message with this role and text already stored under `parent_id`, if any."""
    same_parent = MessageRow.parent_id.is_(None) if parent_id is None else MessageRow.parent_id == parent_id
    existing = await session.scalar(
        select(MessageRow)
        .where(
            MessageRow.conversation_id == conversation_id,
            same_parent,
            MessageRow.content_hash == content_hash(message),
            MessageRow.role == message.role,
        )
        .order_by(MessageRow.id)
        .limit(1)
    )
    return _stored(existing) if existing is not None else None


async def _kept_part(
    session: AsyncSession, user_id: int, conversation_id: int, parent_id: int | None, message: Message
) -> StoredMessage | None:
    """A broken-off (partial) reply stored under `parent_id` of which `message` is the part the client
    kept after Stop: its store can land between the recognition and the store of the client's next turn,
    which then carries that shorter copy as new."""
    if message.role != "assistant" or parent_id is None:
        return None
    stored = await replies(session, user_id=user_id, parent_id=parent_id, conversation_id=conversation_id)
    return next(
        (r for r in stored if r.status == "partial" and same_or_trimmed(message.content, r.content)), None
    )


_RECORDS = "jsonb_to_recordset(CAST(:rows AS jsonb))"
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


async def _insert_chain(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """The rows in one INSERT from a JSON record set. The ORM's bulk insert leaves a row's None columns
    out and sends one INSERT per set of columns: a user message with its emotion and the reply without
    took two round trips (issue 15). As there, a column a row leaves out or sets None gets its server
    default, else SQL NULL (a JSON null is SQL NULL here, never JSON 'null')."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    columns = [MessageRow.__mapper__.columns[key] for key in keys]
    names = ", ".join(_quoted(c) for c in columns)
    spec = ", ".join(f"{_quoted(c)} {c.type.compile(dialect=_DIALECT)}" for c in columns)
    gaps = [any(row.get(key) is None for row in rows) for key in keys]
    values = ", ".join(_or_default(c, gap) for c, gap in zip(columns, gaps, strict=True))
    records = [{c.name: row.get(key) for key, c in zip(keys, columns, strict=True)} for row in rows]
    await session.execute(
        text(f"INSERT INTO message ({names}) SELECT {values} FROM {_RECORDS} AS r({spec})"),
        {"rows": json.dumps(records, default=_json_default)},
    )


def _quoted(column: Any) -> str:
    return f'"{column.name}"'


def _or_default(column: Any, missing: bool) -> str:
    """The record's value, or the column's server default where some row has none."""
    default = getattr(column.server_default, "arg", None)
    if not missing or default is None:
        return f"r.{_quoted(column)}"
    sql = str(default.compile(dialect=_DIALECT)) if hasattr(default, "compile") else _literal(str(default))
    return f"COALESCE(r.{_quoted(column)}, {sql})"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in a message row")


def _stored_row(row: dict[str, Any]) -> StoredMessage:
    """A row just inserted in bulk, as `_stored` reads rows (emotion columns default to unset)."""
    unset = {"emotion_label": None, "importance": None, "emotion_scores": None, "emotion_confidence": None}
    return _stored(SimpleNamespace(**(unset | row), metadata=row.get("meta")))
