"""Relationships in Postgres: one row per user, end user and persona (interactions counted, the
emotional score, the stage the user chose). Apart from memory/fact_store.py: a relationship is a running
tally upserted every batch, not a versioned fact that reconciliation opens and supersedes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memory.fact_models import RelationshipRow
from memory.fact_store import Scope


async def touch_relationship(
    session: AsyncSession, scope: Scope, *, interactions: int, trend: float, weight: float, at: datetime
) -> None:
    """Count `interactions` more and move the emotional score toward `trend` by `weight` (0-1)."""
    assert scope.persona_id is not None
    stmt = insert(RelationshipRow).values(
        user_id=scope.user_id,
        end_user=scope.end_user,
        persona_id=scope.persona_id,
        interactions=interactions,
        score=round(trend * weight, 4),
        first_at=at,
        updated_at=func.now(),
    )
    table = RelationshipRow.__table__
    stmt = stmt.on_conflict_do_update(
        constraint="uq_relationship_user_id",
        set_={
            "interactions": table.c.interactions + interactions,
            "score": (table.c.score * (1 - weight) + trend * weight),
            "updated_at": func.now(),
        },
    )
    await session.execute(stmt)


async def relationships(session: AsyncSession, user_id: int) -> list[RelationshipRow]:
    stmt = select(RelationshipRow).where(RelationshipRow.user_id == user_id).order_by(RelationshipRow.id)
    return list((await session.scalars(stmt)).all())


async def relationship(session: AsyncSession, scope: Scope) -> RelationshipRow | None:
    if scope.persona_id is None:
        return None
    return await session.scalar(
        select(RelationshipRow).where(
            RelationshipRow.user_id == scope.user_id,
            RelationshipRow.end_user == scope.end_user,
            RelationshipRow.persona_id == scope.persona_id,
        )
    )


async def set_relationship(
    session: AsyncSession, scope: Scope, *, stage: str | None, score: float | None
) -> RelationshipRow:
    """The user's own say: a stage (None: back to automatic) and optionally the score."""
    assert scope.persona_id is not None
    values: dict[str, object] = {"stage": stage, "updated_at": func.now()}
    if score is not None:
        values["score"] = score
    stmt = insert(RelationshipRow).values(
        user_id=scope.user_id, end_user=scope.end_user, persona_id=scope.persona_id, **values
    )
    stmt = stmt.on_conflict_do_update(constraint="uq_relationship_user_id", set_=values)
    await session.execute(stmt)
    row = await relationship(session, scope)
    assert row is not None
    return row
