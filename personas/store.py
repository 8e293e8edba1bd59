"""PersonaStore: every persona a request can choose, from the YAML folder, the API, cards and learning.

Shared personas come from YAML files (the shipped examples, then the user's folder, which overrides by
name) and are reloaded when the folder changes or on `anima personas reload`; a file that stops
validating keeps its last good version and its error is reported. A user's own personas (API, imported
cards, learned profiles) live in Postgres as versions and shadow a shared persona of the same name for
that user. Without a database the folder still works; API writes need one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personas.folder import folder_signature, persona_files, read_persona_file
from personas.models import Persona, PersonaError, TraitChange, adjusted, validate_persona
from personas.records import Record, Records
from personas.render import render

log = logging.getLogger("anima.personas")


class PersonaNotFound(LookupError):
    pass


class PersonasReadOnly(RuntimeError):
    """API writes need the database (memory on)."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """One version of a persona, ready for the prompt (`text` is rendered once, here)."""

    persona: Persona
    version: int
    source: str
    shared: bool
    id: int | None = None  # the database row, when there is a database
    created_at: datetime | None = None
    note: str | None = None
    text: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.persona.name

    def public(self) -> dict[str, Any]:
        return {
            "name": self.persona.name,
            "version": self.version,
            "source": self.source,
            "shared": self.shared,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "note": self.note,
            "persona": self.persona.model_dump(),
        }


def resolved(persona: Persona, record: Record | None, *, source: str, version: int = 1) -> Resolved:
    return Resolved(
        persona=persona,
        version=record.version if record else version,
        source=record.source if record else source,
        shared=record.user_id is None if record else True,
        id=record.id if record else None,
        created_at=record.created_at if record else datetime.now(UTC),
        note=record.note if record else None,
        text=render(persona),
    )


@dataclass(frozen=True, slots=True)
class ReloadReport:
    loaded: tuple[str, ...]
    changed: tuple[str, ...]
    errors: dict[str, str]

    def public(self) -> dict[str, Any]:
        return {"loaded": list(self.loaded), "changed": list(self.changed), "errors": self.errors}


class PersonaStore:
    def __init__(
        self,
        folder: Path | None,
        *,
        examples: bool = True,
        records: Records | None = None,
        cache_ttl_s: float = 2.0,
    ) -> None:
        self.folder, self.examples, self.records, self.cache_ttl_s = folder, examples, records, cache_ttl_s
        self.shared: dict[str, Resolved] = {}
        self.errors: dict[str, str] = {}
        self._signature: tuple[Any, ...] = ()
        self._cache: dict[tuple[int | None, str], tuple[float, Resolved | None]] = {}
        self._lock = asyncio.Lock()

    # -- the folder ------------------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        return persona_files(self.folder, examples=self.examples)

    async def reload(self) -> ReloadReport:
        """Read the folder again; store changed personas as new versions; report what did not validate."""
        async with self._lock:
            signature = folder_signature(self._files())
            found: dict[str, Persona] = {}
            errors: dict[str, str] = {}
            for path in self._files():
                try:
                    persona = read_persona_file(path)
                except PersonaError as exc:
                    errors[path.name] = exc.message
                    log.warning("persona file skipped: %s", exc.message)
                    continue
                found[persona.name] = persona
            for name, old in self.shared.items():  # a broken file keeps its last good version
                if name not in found and any(e for f, e in errors.items() if Path(f).stem == name):
                    found[name] = old.persona
            changed: list[str] = []
            shared: dict[str, Resolved] = {}
            for name, persona in found.items():
                before = self.shared.get(name)
                if before is not None and before.persona == persona:
                    shared[name] = before
                    continue
                record = (
                    await self.records.save(None, name, persona.model_dump(), source="file")
                    if self.records is not None
                    else None
                )
                version = (before.version + 1) if before is not None else 1
                shared[name] = resolved(persona, record, source="file", version=version)
                changed.append(name)
            self.shared, self.errors = shared, errors
            self._signature = signature  # only now: a reload that failed is tried again
            self._cache.clear()
            return ReloadReport(loaded=tuple(sorted(shared)), changed=tuple(changed), errors=errors)

    async def watch(self, interval_s: float) -> None:
        """Reload whenever a file in the folder is added, changed or removed (polled: works everywhere)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if folder_signature(self._files()) != self._signature:
                    report = await self.reload()
                    log.info("personas reloaded: %d loaded, changed %s", len(report.loaded), report.changed)
            except Exception as exc:
                log.warning("persona reload failed: %s", exc)

    # -- reading -----------------------------------------------------------------------------------------

    async def get(self, user_id: int | None, name: str) -> Resolved | None:
        """The persona a request named: the user's own first, then the shared one; cached briefly."""
        key = (user_id, name.casefold())
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_ttl_s:
            return hit[1]
        found = await self._load(user_id, name)
        self._cache[key] = (now, found)
        return found

    async def _load(self, user_id: int | None, name: str) -> Resolved | None:
        if self.records is not None and user_id is not None:
            record = await self.records.get(user_id, name, shared=False)
            if record is not None:
                return resolved(validate_persona(record.spec), record, source=record.source)
        return self.shared.get(name) or next(
            (p for n, p in self.shared.items() if n.casefold() == name.casefold()), None
        )

    async def require(self, user_id: int | None, name: str) -> Resolved:
        found = await self.get(user_id, name)
        if found is None:
            raise PersonaNotFound(f"The persona '{name}' does not exist.")
        return found

    async def listing(self, user_id: int | None) -> list[Resolved]:
        own: dict[str, Resolved] = {}
        if self.records is not None and user_id is not None:
            for record in await self.records.listing(user_id):
                if record.user_id is not None:
                    own[record.name] = resolved(validate_persona(record.spec), record, source=record.source)
        merged = {**self.shared, **own}
        return [merged[name] for name in sorted(merged)]

    async def versions(self, user_id: int | None, name: str) -> list[Resolved]:
        current = await self.require(user_id, name)
        if self.records is None or current.id is None:
            return [current]
        return [
            resolved(validate_persona(r.spec), r, source=r.source)
            for r in await self.records.versions(current.id)
        ]

    # -- writing (the user's own personas) ---------------------------------------------------------------

    def _writable(self, user_id: int | None) -> Records:
        if self.records is None or user_id is None:
            raise PersonasReadOnly("Personas can only be changed through the API when memory is on.")
        return self.records

    async def put(
        self,
        user_id: int | None,
        persona: Persona,
        *,
        source: str = "api",
        note: str | None = None,
        expected_version: int | None = None,
    ) -> Resolved:
        records = self._writable(user_id)
        record = await records.save(
            user_id,
            persona.name,
            persona.model_dump(),
            source=source,
            note=note,
            expected_version=expected_version,
        )
        self._forget(user_id, persona.name)
        return resolved(persona, record, source=source)

    async def patch(self, user_id: int | None, name: str, change: TraitChange) -> Resolved:
        """One trait changed; a shared persona is copied into the user's own on the first change."""
        self._writable(user_id)
        current = await self.require(user_id, name)
        note = f"{change.action} {change.trait}" + (
            f" {change.intensity}" if change.intensity is not None else ""
        )
        return await self.put(user_id, adjusted(current.persona, change), source="api", note=note)

    async def delete(self, user_id: int | None, name: str) -> None:
        records = self._writable(user_id)
        if not await records.delete(user_id, name):
            if name in self.shared:
                raise PersonasReadOnly(
                    f"The persona '{name}' comes from the personas folder: delete its file to remove it."
                )
            raise PersonaNotFound(f"The persona '{name}' does not exist.")
        self._forget(user_id, name)

    def _forget(self, user_id: int | None, name: str) -> None:
        self._cache.pop((user_id, name.casefold()), None)

    def forget_user(self, user_id: int) -> None:
        """Drop a user's cached personas (their data was erased)."""
        for key in [k for k in self._cache if k[0] == user_id]:
            del self._cache[key]
