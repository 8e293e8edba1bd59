"""The facts API's operations: list, search, read, state, edit and delete facts; profile; relationships.

A fact the user states or edits here is a *correction*: it wins over what extraction inferred, and an
edit opens a new version (the old one is kept, superseded) rather than rewriting history.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import fact_store, history, relationship_store
from memory.fact_models import FactRow, RelationshipRow
from memory.fact_store import FactFilter, Scope
from memory.facts import Candidate, Ignore, Open, Strengthen, Subject, reconcile
from memory.models import ConversationRow, PersonaRef


class FactNotFound(LookupError):
    pass


class UnknownName(LookupError):
    """A persona or conversation the request names does not exist for this user; `param` says which."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class NotCurrent(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Statement:
    """A fact as the user states it through the API."""

    subject: Subject
    kind: str
    attribute: str
    value: str
    statement: str
    name: str | None = None
    persona: str | None = None
    conversation: str | None = None
    end_user: str = ""


FIELDS = (
    "id", "subject", "kind", "attribute", "value", "statement", "confidence", "origin", "valid_from",
    "valid_to", "superseded_by", "created_at", "updated_at",
)  # fmt: skip


class FactBook:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def find(
        self, user_id: int, where: dict[str, Any], *, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        async with self._sessions() as s:
            flt = FactFilter(
                persona_id=await _persona_id(s, user_id, where.get("persona")),
                conversation_id=await _conversation_id(s, user_id, where.get("conversation")),
                subject=where.get("subject"),
                query=where.get("q"),
                history=bool(where.get("history")),
                end_user=where.get("end_user"),
            )
            rows = await fact_store.facts(s, user_id, flt, limit=limit, offset=offset)
            return [await _public(s, r, sources) for r, sources in rows]

    async def get(self, user_id: int, fact_id: int) -> dict[str, Any]:
        async with self._sessions() as s:
            found = await fact_store.fact(s, user_id, fact_id)
            if found is None:
                raise FactNotFound(f"No fact {fact_id}.")
            return await _public(s, *found)

    async def state(self, user_id: int, said: Statement) -> dict[str, Any]:
        """A fact the user states: reconciled like any other, as a correction (it wins)."""
        async with self._sessions.begin() as s:
            scope = Scope(
                user_id,
                said.end_user,
                await _persona_id(s, user_id, said.persona),
                await _conversation_id(s, user_id, said.conversation),
            )
            await fact_store.lock(s, user_id)
            known = await fact_store.known(s, user_id=user_id, end_user=said.end_user)
            [action] = reconcile(known, [_candidate(said)])
            opened = await fact_store.apply(s, scope, [action])
            fact_id = opened[0] if opened else _target(action)
        return await self.get(user_id, fact_id)

    async def edit(self, user_id: int, fact_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """A new version of a current fact with `changes`; the old one is closed and kept."""
        async with self._sessions.begin() as s:
            await fact_store.lock(s, user_id)
            old = await s.scalar(select(FactRow).where(FactRow.id == fact_id, FactRow.user_id == user_id))
            if old is None:
                raise FactNotFound(f"No fact {fact_id}.")
            if old.valid_to is not None:
                raise NotCurrent(f"Fact {fact_id} is an old version (superseded by {old.superseded_by}).")
            said = Statement(
                **{
                    k: changes.get(k, getattr(old, k))
                    for k in ("subject", "kind", "attribute", "value", "statement")
                },
                name=changes.get("name", old.subject_name),
                end_user=old.end_user,
            )
            known = [
                k for k in await fact_store.known(s, user_id=user_id, end_user=old.end_user) if k.id != old.id
            ]
            [action] = reconcile(known, [_candidate(said)])
            if isinstance(action, Open) and action.supersedes is None:
                action = replace(action, supersedes=old.id)
            scope = Scope(user_id, old.end_user, old.persona_id, old.conversation_id)
            opened = await fact_store.apply(s, scope, [action])
            new_id = opened[0] if opened else _target(action)
            if not (isinstance(action, Open) and action.supersedes == old.id):
                await _close(s, user_id, old.id, new_id)
        return await self.get(user_id, new_id)

    async def delete(self, user_id: int, fact_id: int) -> int:
        async with self._sessions.begin() as s:
            gone = await fact_store.forget(s, user_id, fact_id)
        if not gone:
            raise FactNotFound(f"No fact {fact_id}.")
        return gone

    async def relationships(self, user_id: int) -> list[tuple[RelationshipRow, str]]:
        """Each relationship with its persona's name."""
        async with self._sessions() as s:
            rows = await relationship_store.relationships(s, user_id)
            names = await _persona_names(s, [r.persona_id for r in rows])
        return [(r, names.get(r.persona_id, "")) for r in rows]

    async def set_relationship(
        self, user_id: int, persona: str, *, end_user: str, stage: str | None, score: float | None
    ) -> RelationshipRow:
        async with self._sessions.begin() as s:
            persona_id = await _persona_id(s, user_id, persona)
            return await relationship_store.set_relationship(
                s, Scope(user_id, end_user, persona_id), stage=stage, score=score
            )


def _candidate(said: Statement) -> Candidate:
    return Candidate(
        subject=said.subject,
        subject_name=said.name if said.subject == "other" else None,
        kind=said.kind,
        attribute=said.attribute,
        value=said.value,
        statement=said.statement,
        confidence=1.0,
        origin="correction",
        sources=(),
        at=datetime.now(UTC),
    )


def _target(action: Strengthen | Open | Ignore) -> int:
    """The existing fact a repeat landed on."""
    if isinstance(action, Strengthen):
        return action.fact_id
    assert isinstance(action, Ignore) and action.fact_id is not None  # a repeat of a known fact
    return action.fact_id


async def _close(s: AsyncSession, user_id: int, fact_id: int, by: int) -> None:
    await s.execute(
        update(FactRow)
        .where(FactRow.id == fact_id, FactRow.user_id == user_id)
        .values(valid_to=datetime.now(UTC), superseded_by=by)
    )


async def _persona_id(s: AsyncSession, user_id: int, name: str | None) -> int | None:
    """The user's own persona of that name, else the shared one."""
    if name is None:
        return None
    rows = (
        await s.execute(
            select(PersonaRef.id, PersonaRef.user_id).where(
                PersonaRef.name == name, or_(PersonaRef.user_id == user_id, PersonaRef.user_id.is_(None))
            )
        )
    ).all()
    if not rows:
        raise UnknownName(f"No persona '{name}'.", "persona")
    return int(sorted(rows, key=lambda r: r.user_id is None)[0].id)


async def _conversation_id(s: AsyncSession, user_id: int, public_id: str | None) -> int | None:
    if public_id is None:
        return None
    row = await history.conversation_by_public_id(s, user_id=user_id, public_id=public_id)
    if row is None:
        raise UnknownName(f"No conversation '{public_id}'.", "conversation")
    return row.id


async def _persona_names(s: AsyncSession, ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = await s.execute(select(PersonaRef.id, PersonaRef.name).where(PersonaRef.id.in_(ids)))
    return {r.id: r.name for r in rows}


async def _public(s: AsyncSession, row: FactRow, sources: list[int]) -> dict[str, Any]:
    persona = (await _persona_names(s, [row.persona_id])).get(row.persona_id) if row.persona_id else None
    conversation = (
        await s.scalar(select(ConversationRow.public_id).where(ConversationRow.id == row.conversation_id))
        if row.conversation_id
        else None
    )
    return {f: getattr(row, f) for f in FIELDS} | {
        "object": "fact",
        "name": row.subject_name,
        "current": row.valid_to is None,
        "persona": persona,
        "conversation_id": conversation,
        "user": row.end_user,
        "sources": sources,
    }
