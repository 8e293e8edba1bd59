"""Appending a chain of messages to a conversation's history: one INSERT for the whole chain, reusing
what is already stored (a regenerate's twin, a broken-off reply the client kept part of).

Split from `memory/history.py` (the reads and small writes), which it builds on; every query filters by
user and never commits.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from memory.history import depth_of, replies, revise, stored_row_of, with_tool_meta
from memory.models import MessageRow
from memory.threads import content_hash, same_or_trimmed
from memory.types import Message, StoredMessage


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
    stored, drawn = list[StoredMessage](), list[int]()
    if reuse:
        stored, drawn = await _reused(
            session, user_id, conversation_id, parent_id, messages, token_counts, client_copies
        )
    if stored:
        parent_id, depth = stored[-1].id, stored[-1].depth
    start = len(stored)
    if start == len(messages):
        await session.execute(_touch(persona_id is not None), {"c": conversation_id, "persona": persona_id})
        return stored
    ids = drawn[: len(messages) - start] if drawn else await _new_ids(session, len(messages) - start)
    rows: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for i, message_id in enumerate(ids, start):
        depth += 1
        at = created_at[i] if created_at and created_at[i] is not None else now
        row: dict[str, Any] = {"id": message_id, "conversation_id": conversation_id, "user_id": user_id}
        row |= {"parent_id": parent_id, "depth": depth}
        row |= _columns(messages[i], token_counts[i], metadata[i] if metadata else None)
        row |= {"source": source, "status": status, "created_at": at}
        rows.append(row | (extras[i] if extras else {}))
        parent_id = message_id
    await _insert_chain(session, rows, conversation_id, persona_id)  # marks the conversation updated
    return stored + [_stored_row(row) for row in rows]


async def _reused(
    session: AsyncSession,
    user_id: int,
    conversation_id: int,
    parent_id: int | None,
    messages: Sequence[Message],
    token_counts: Sequence[int],
    client_copies: int,
) -> tuple[list[StoredMessage], list[int]]:
    """The leading run of `messages` already stored as a chain under `parent_id` (see `append`), and
    the fresh ids the first look drew for the rest (none if the run went on past the first message)."""
    stored: list[StoredMessage] = []
    drawn: list[int] = []
    for start, message in enumerate(messages):
        draw = 0 if start else len(messages)  # the first look draws the ids too: one round trip, not two
        existing, drawn = await _stored_child(session, conversation_id, parent_id, message, draw)
        if existing is None and start < client_copies:
            existing = await _kept_part(session, user_id, conversation_id, parent_id, message)
        if existing is None:
            break
        if existing.content != message.content:  # the part of a broken-off reply the client kept
            tokens = token_counts[start]
            await revise(session, user_id=user_id, message_id=existing.id, message=message, tokens=tokens)
            existing = replace(existing, content=message.content, token_count=tokens)
        stored.append(existing)
        parent_id = existing.id
    return stored, drawn


def _columns(message: Message, tokens: int, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A new row's columns that come from its message."""
    return {
        "role": message.role,
        "name": message.name,
        "content": message.content,
        "content_hash": content_hash(message),
        "token_count": tokens,
        "meta": with_tool_meta(metadata, message),
    }


async def _new_ids(session: AsyncSession, count: int) -> list[int]:
    """`count` fresh message ids, ascending (storage order is id order)."""
    return sorted(int(i) for i in await session.scalars(_NEW_IDS, {"n": count}))


_NEW_IDS = text("SELECT nextval(pg_get_serial_sequence('message', 'id')) FROM generate_series(1, :n)")


_COLUMNS = """id, role, content, name, token_count, created_at, parent_id, depth, emotion_label, importance,
    status, emotion_scores, emotion_confidence, metadata"""
# The child with this role and text under a parent, if any, and `:n` fresh ids (an id drawn for a
# message that then is reused is left unused: ids only need to grow).
_CHILD, _ROOT = (
    text(
        f"""
        SELECT c.*, ARRAY(
            SELECT nextval(pg_get_serial_sequence('message', 'id')) FROM generate_series(1, :n)
        ) AS drawn
        FROM (SELECT 1) one LEFT JOIN LATERAL (
            SELECT {_COLUMNS} FROM message
            WHERE conversation_id = :c AND {parent} AND content_hash = :hash AND role = :role
            ORDER BY id LIMIT 1
        ) c ON true
        """
    )
    for parent in ("parent_id = :parent", "parent_id IS NULL")
)


def _touch(persona: bool) -> TextClause:
    """Marks the conversation updated (and talking to `:persona`, when the turn has one)."""
    return _TOUCH_PERSONA if persona else _TOUCH


_TOUCH = text("UPDATE conversation SET updated_at = now() WHERE id = :c")
_TOUCH_PERSONA = text("UPDATE conversation SET updated_at = now(), persona_id = :persona WHERE id = :c")


async def _stored_child(
    session: AsyncSession, conversation_id: int, parent_id: int | None, message: Message, draw: int = 0
) -> tuple[StoredMessage | None, list[int]]:
    """The message with this role and text already stored under `parent_id`, if any, and `draw` fresh
    message ids, ascending."""
    query = _CHILD if parent_id is not None else _ROOT
    params = {"c": conversation_id, "parent": parent_id, "hash": content_hash(message), "role": message.role}
    found = (await session.execute(query, params | {"n": draw})).one()
    return (stored_row_of(found) if found.id is not None else None), sorted(int(i) for i in found.drawn)


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


async def _insert_chain(
    session: AsyncSession, rows: list[dict[str, Any]], conversation_id: int, persona_id: int | None
) -> None:
    """The rows in one INSERT from a JSON record set, which also marks the conversation updated (one
    round trip, not two). The ORM's bulk insert left a row's None columns out and sent one INSERT per
    set of columns: a user message with its emotion and the reply without took two round trips (issue
    15). As there, a column a row leaves out or sets None gets its server default, else SQL NULL (a
    JSON null is SQL NULL here, never JSON 'null')."""
    keys = tuple(dict.fromkeys(key for row in rows for key in row))
    gaps = tuple(any(row.get(key) is None for row in rows) for key in keys)
    records = [{_NAMES[key]: row.get(key) for key in keys} for row in rows]
    await session.execute(
        _insert_sql(keys, gaps, persona_id is not None),
        {"rows": json.dumps(records, default=_json_default), "c": conversation_id, "persona": persona_id},
    )


_NAMES = {key: column.name for key, column in MessageRow.__mapper__.columns.items()}


@functools.lru_cache(maxsize=64)
def _insert_sql(keys: tuple[str, ...], gaps: tuple[bool, ...], persona: bool) -> TextClause:
    """The chain's INSERT for rows with these columns (`gaps`: where some row has none), built once."""
    columns = [MessageRow.__mapper__.columns[key] for key in keys]
    names = ", ".join(_quoted(c) for c in columns)
    spec = ", ".join(f"{_quoted(c)} {c.type.compile(dialect=_DIALECT)}" for c in columns)
    values = ", ".join(_or_default(c, gap) for c, gap in zip(columns, gaps, strict=True))
    insert = f"INSERT INTO message ({names}) SELECT {values} FROM {_RECORDS} AS r({spec})"
    return text(f"WITH touched AS ({_touch(persona).text}) {insert}")


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
    return stored_row_of(SimpleNamespace(**(unset | row), metadata=row.get("meta")))
