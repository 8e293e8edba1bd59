"""Facts in Postgres: applying reconciliation, the API's queries, the prompt's read (relationships:
memory/relationship_store.py).

Every query filters by user. Writes to one user's facts take a transaction-level advisory lock, so
two workers (or a worker and the API) reconciling the same user's facts cannot interleave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memory.fact_models import FactRow, FactSource
from memory.facts import Action, Candidate, Current, Known, Open, Strengthen

_LOCK = text("SELECT pg_advisory_xact_lock(1717, CAST(:user AS integer))")  # 1717: the facts namespace

_CHAIN = text(
    """
    WITH RECURSIVE chain AS (
        SELECT id FROM fact WHERE id = :id AND user_id = :user
        UNION ALL
        SELECT f.id FROM fact f JOIN chain c ON f.superseded_by = c.id WHERE f.user_id = :user
    )
    SELECT id FROM chain
    """
)


@dataclass(frozen=True, slots=True)
class Scope:
    """Where facts are learned or asked for: one user (key), one end user, maybe one persona/chat."""

    user_id: int
    end_user: str = ""
    persona_id: int | None = None
    conversation_id: int | None = None


async def lock(session: AsyncSession, user_id: int) -> None:
    await session.execute(_LOCK, {"user": user_id % 2**31})


async def known(session: AsyncSession, *, user_id: int, end_user: str) -> list[Known]:
    """The current facts of one user and end user, with their sources (what reconciliation meets)."""
    rows = (
        await session.scalars(
            select(FactRow).where(
                FactRow.user_id == user_id, FactRow.end_user == end_user, FactRow.valid_to.is_(None)
            )
        )
    ).all()
    sources = await _sources(session, [r.id for r in rows])
    return [
        Known(
            r.id,
            r.subject,
            r.subject_name,
            r.attribute,
            r.value,
            r.confidence,
            r.origin,
            frozenset(sources.get(r.id, ())),
            r.valid_from,
        )
        for r in rows
    ]


async def _sources(session: AsyncSession, fact_ids: Sequence[int]) -> dict[int, list[int]]:
    if not fact_ids:
        return {}
    found: dict[int, list[int]] = {}
    rows = await session.execute(
        select(FactSource.fact_id, FactSource.message_id)
        .where(FactSource.fact_id.in_(fact_ids))
        .order_by(FactSource.message_id)
    )
    for fact_id, message_id in rows:
        found.setdefault(fact_id, []).append(message_id)
    return found


async def apply(session: AsyncSession, scope: Scope, actions: Sequence[Action]) -> list[int]:
    """Carry out reconciliation's actions in order; returns the ids of the facts opened."""
    ids: dict[int, int] = {}  # Open.ref -> row id
    for action in actions:
        if isinstance(action, Strengthen):
            await _strengthen(session, scope.user_id, action)
        elif isinstance(action, Open):
            ids[action.ref] = await _open(session, scope, action, ids)
    return list(ids.values())


async def _strengthen(session: AsyncSession, user_id: int, action: Strengthen) -> None:
    await session.execute(
        update(FactRow)
        .where(FactRow.id == action.fact_id, FactRow.user_id == user_id)
        .values(confidence=action.confidence, origin=action.origin, updated_at=func.now())
    )
    await _add_sources(session, user_id, action.fact_id, action.add_sources)


async def _add_sources(session: AsyncSession, user_id: int, fact_id: int, messages: Sequence[int]) -> None:
    if messages:
        await session.execute(
            insert(FactSource)
            .values([{"fact_id": fact_id, "message_id": m, "user_id": user_id} for m in messages])
            .on_conflict_do_nothing()
        )


async def _open(session: AsyncSession, scope: Scope, action: Open, ids: dict[int, int]) -> int:
    c: Candidate = action.candidate
    row = FactRow(
        user_id=scope.user_id,
        end_user=scope.end_user,
        persona_id=scope.persona_id,
        conversation_id=scope.conversation_id,
        subject=c.subject,
        subject_name=c.subject_name,
        kind=c.kind,
        attribute=c.attribute,
        value=c.value,
        statement=c.statement,
        confidence=c.confidence,
        origin=c.origin,
        valid_from=c.at,
    )
    session.add(row)
    await session.flush()
    await _add_sources(session, scope.user_id, row.id, c.sources)
    if action.supersedes is not None:
        old = ids.get(action.supersedes, action.supersedes)
        await session.execute(
            update(FactRow)
            .where(FactRow.id == old, FactRow.user_id == scope.user_id)
            .values(
                valid_to=c.at,
                superseded_by=row.id,
                updated_at=func.now(),
            )
        )
    return row.id


# -- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FactFilter:
    persona_id: int | None = None
    conversation_id: int | None = None
    subject: str | None = None
    query: str | None = None
    history: bool = False
    end_user: str | None = None


def _filtered(user_id: int, where: FactFilter) -> Select[FactRow]:
    stmt = select(FactRow).where(FactRow.user_id == user_id)
    if not where.history:
        stmt = stmt.where(FactRow.valid_to.is_(None))
    if where.persona_id is not None:
        stmt = stmt.where(FactRow.persona_id == where.persona_id)
    if where.conversation_id is not None:
        stmt = stmt.where(FactRow.conversation_id == where.conversation_id)
    if where.subject is not None:
        stmt = stmt.where(FactRow.subject == where.subject)
    if where.end_user is not None:
        stmt = stmt.where(FactRow.end_user == where.end_user)
    if where.query:
        like = "%" + where.query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            or_(FactRow.statement.ilike(like), FactRow.value.ilike(like), FactRow.subject_name.ilike(like))
        )
    return stmt


async def facts(
    session: AsyncSession, user_id: int, where: FactFilter, *, limit: int, offset: int
) -> list[tuple[FactRow, list[int]]]:
    """One user's facts (current only, unless `history`), newest first, with their source messages."""
    stmt = _filtered(user_id, where).order_by(FactRow.id.desc()).limit(limit).offset(offset)
    rows = (await session.scalars(stmt)).all()
    sources = await _sources(session, [r.id for r in rows])
    return [(r, sources.get(r.id, [])) for r in rows]


async def fact(session: AsyncSession, user_id: int, fact_id: int) -> tuple[FactRow, list[int]] | None:
    row = await session.scalar(select(FactRow).where(FactRow.id == fact_id, FactRow.user_id == user_id))
    if row is None:
        return None
    return row, (await _sources(session, [row.id])).get(row.id, [])


async def forget(session: AsyncSession, user_id: int, fact_id: int) -> int:
    """Delete a fact and every older version of it; returns how many rows went."""
    ids = list((await session.execute(_CHAIN, {"id": fact_id, "user": user_id})).scalars())
    if not ids:
        return 0
    await session.execute(delete(FactRow).where(FactRow.id.in_(ids), FactRow.user_id == user_id))
    return len(ids)


def _current_query(
    by: str,
) -> Select[int, str, str | None, str, str, float, int, int | None, int | None]:
    """The prompt's fact read, built once (each turn built it again: longer than Postgres ran it)."""
    f = FactRow.__table__.c  # Core, not ORM: the rows are read as tuples
    sources = select(func.count()).where(FactSource.__table__.c.fact_id == f.id).scalar_subquery()
    character = {  # without a persona: this conversation's (none yet: those of no conversation, as before)
        "persona": f.persona_id == bindparam("persona"),
        "conversation": f.conversation_id == bindparam("conversation"),
        "none": f.conversation_id.is_(None),
    }[by]
    return select(
        f.id,
        f.subject,
        f.subject_name,
        f.kind,
        f.statement,
        f.confidence,
        sources,
        f.persona_id,
        f.conversation_id,
    ).where(
        f.user_id == bindparam("user"),
        f.end_user == bindparam("end_user"),
        f.valid_to.is_(None),
        or_(f.subject != "character", and_(f.subject == "character", character)),
    )


_CURRENT = {by: _current_query(by) for by in ("persona", "conversation", "none")}


async def current(session: AsyncSession, scope: Scope) -> list[Current]:
    """Facts for the prompt: current, of this user and end user; facts about the character only from
    chats with this persona (or, without a persona, from this conversation)."""
    params = {"user": scope.user_id, "end_user": scope.end_user}
    params |= {"persona": scope.persona_id, "conversation": scope.conversation_id}
    by = "conversation" if scope.conversation_id is not None else "none"
    by = "persona" if scope.persona_id is not None else by
    rows = await session.execute(_CURRENT[by], params)
    return [Current(*r) for r in rows]
