"""Stored personas: names, immutable versions (the spec is opaque JSON here) and card chunks.

memory/ does not know what a persona is; `personas/` validates specs before they get here. A version
is only added when the spec changed (same content → same version), so re-saving or re-syncing a
folder is free and concurrent writers of one persona serialise on its row lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.models import PersonaRef
from memory.persona_models import PersonaChunk, PersonaVersionRow


@dataclass(frozen=True, slots=True)
class PersonaRecord:
    id: int  # the persona row
    user_id: int | None  # None: shared (from the personas folder)
    name: str
    source: str
    version: int
    spec: dict[str, Any]
    content_hash: str
    created_at: datetime  # of this version
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CardChunk:
    position: int
    content: str
    token_count: int
    embedding: list[float] | None


class VersionConflict(ValueError):
    """The persona changed since the version the caller read (optimistic concurrency)."""


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.md5(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _record(ref: PersonaRef, version: PersonaVersionRow) -> PersonaRecord:
    return PersonaRecord(
        id=ref.id,
        user_id=ref.user_id,
        name=ref.name,
        source=version.source,
        version=version.version,
        spec=version.spec,
        content_hash=version.content_hash,
        created_at=version.created_at,
        note=version.note,
    )


def _owned_by(user_id: int | None) -> Any:
    return PersonaRef.user_id.is_(None) if user_id is None else PersonaRef.user_id == user_id


class PersonaRecords:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def _current(self) -> Any:
        return select(PersonaRef, PersonaVersionRow).join(
            PersonaVersionRow,
            (PersonaVersionRow.persona_id == PersonaRef.id)
            & (PersonaVersionRow.version == PersonaRef.version),
        )

    async def get(self, user_id: int | None, name: str, *, shared: bool = True) -> PersonaRecord | None:
        """The current version of `name` for this user: their own persona first, then a shared one."""
        owners = [_owned_by(user_id)] + ([PersonaRef.user_id.is_(None)] if shared and user_id else [])
        query = (
            self._current()
            .where(PersonaRef.name == name, or_(*owners))
            .order_by(PersonaRef.user_id.asc().nulls_last())
            .limit(1)
        )
        async with self.sessions() as s:
            row = (await s.execute(query)).first()
        return _record(*row) if row else None

    async def listing(self, user_id: int | None) -> list[PersonaRecord]:
        """The user's own personas and the shared ones (current versions, own first)."""
        owners = [PersonaRef.user_id.is_(None)] + ([PersonaRef.user_id == user_id] if user_id else [])
        query = (
            self._current()
            .where(or_(*owners))
            .order_by(PersonaRef.name, PersonaRef.user_id.asc().nulls_last())
        )
        async with self.sessions() as s:
            return [_record(*row) for row in (await s.execute(query)).all()]

    async def versions(self, persona_id: int) -> list[PersonaRecord]:
        query = (
            select(PersonaRef, PersonaVersionRow)
            .join(PersonaVersionRow, PersonaVersionRow.persona_id == PersonaRef.id)
            .where(PersonaRef.id == persona_id)
            .order_by(PersonaVersionRow.version)
        )
        async with self.sessions() as s:
            return [_record(*row) for row in (await s.execute(query)).all()]

    async def save(
        self,
        user_id: int | None,
        name: str,
        spec: dict[str, Any],
        *,
        source: str,
        note: str | None = None,
        expected_version: int | None = None,
        reuse: bool = False,
    ) -> PersonaRecord:
        """Store `spec` as the new current version of the user's `name` (unchanged spec: no new version).

        `reuse`: a spec equal to any earlier version makes that version current again instead of adding
        one (client cards whose world-info entries come and go would otherwise version every turn)."""
        digest = spec_hash(spec)
        async with self.sessions.begin() as s:
            ref = await self._locked(s, user_id, name, source)
            if expected_version is not None and ref.version != expected_version:
                raise VersionConflict(f"persona '{name}' is at version {ref.version}, not {expected_version}")
            same = await self._same_spec(s, ref, digest, reuse=reuse) if ref.version else None
            if same is not None:
                if same.version != ref.version:  # an earlier version is current again
                    ref.version = same.version
                return _record(ref, same)
            row = PersonaVersionRow(
                persona_id=ref.id,
                version=ref.version + 1,
                source=source,
                content_hash=digest,
                spec=spec,
                note=note,
                created_at=func.now(),
            )
            s.add(row)
            ref.version, ref.source, ref.updated_at = row.version, source, func.now()
            await s.flush()
            await s.refresh(row)
            return _record(ref, row)

    @staticmethod
    async def _same_spec(
        s: AsyncSession, ref: PersonaRef, digest: str, *, reuse: bool
    ) -> PersonaVersionRow | None:
        """The version that already holds this spec: the current one, else (`reuse`) the latest earlier."""
        current = await s.scalar(
            select(PersonaVersionRow).where(
                PersonaVersionRow.persona_id == ref.id, PersonaVersionRow.version == ref.version
            )
        )
        if current is not None and current.content_hash == digest:
            return current
        if not reuse:
            return None
        return await s.scalar(
            select(PersonaVersionRow)
            .where(PersonaVersionRow.persona_id == ref.id, PersonaVersionRow.content_hash == digest)
            .order_by(PersonaVersionRow.version.desc())
            .limit(1)
        )

    @staticmethod
    async def _locked(s: AsyncSession, user_id: int | None, name: str, source: str) -> PersonaRef:
        """The persona row, created if missing, locked for this transaction (writers queue on it)."""
        insert = pg_insert(PersonaRef).values(user_id=user_id, name=name, source=source, version=0)
        if user_id is None:
            insert = insert.on_conflict_do_nothing(
                index_elements=["name"], index_where=text("user_id IS NULL")
            )
        else:
            insert = insert.on_conflict_do_nothing(index_elements=["user_id", "name"])
        await s.execute(insert)
        ref = await s.scalar(
            select(PersonaRef).where(PersonaRef.name == name, _owned_by(user_id)).with_for_update()
        )
        assert ref is not None
        return ref

    async def delete(self, user_id: int | None, name: str) -> bool:
        """Delete the user's own persona and its versions; conversations keep their messages."""
        async with self.sessions.begin() as s:
            deleted = await s.execute(
                delete(PersonaRef).where(PersonaRef.name == name, _owned_by(user_id)).returning(PersonaRef.id)
            )
            return deleted.first() is not None

    # -- client cards, chunked -------------------------------------------------------------------------

    async def chunks(self, persona_id: int, card_hash: str) -> list[CardChunk]:
        query = (
            select(PersonaChunk)
            .where(PersonaChunk.persona_id == persona_id, PersonaChunk.card_hash == card_hash)
            .order_by(PersonaChunk.position)
        )
        async with self.sessions() as s:
            rows = (await s.scalars(query)).all()
        return [
            CardChunk(
                r.position,
                r.content,
                r.token_count,
                [float(x) for x in r.embedding] if r.embedding is not None else None,
            )
            for r in rows
        ]

    async def save_chunks(
        self, persona_id: int, user_id: int, card_hash: str, chunks: Sequence[CardChunk]
    ) -> None:
        if not chunks:
            return
        async with self.sessions.begin() as s:
            await s.execute(
                pg_insert(PersonaChunk)
                .values(
                    [
                        {
                            "persona_id": persona_id,
                            "user_id": user_id,
                            "card_hash": card_hash,
                            "position": c.position,
                            "content": c.content,
                            "token_count": c.token_count,
                            "embedding": c.embedding,
                        }
                        for c in chunks
                    ]
                )
                .on_conflict_do_nothing()
            )
