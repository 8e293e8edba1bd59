"""The seam between personas/ and where persona versions are stored (memory/personas.py implements it):
personas/ decides what a persona is and validates it; the records only keep opaque specs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol


class Record(Protocol):
    """One stored version (read-only: memory.personas.PersonaRecord)."""

    @property
    def id(self) -> int: ...

    @property
    def user_id(self) -> int | None: ...

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def spec(self) -> dict[str, Any]: ...

    @property
    def created_at(self) -> datetime: ...

    @property
    def note(self) -> str | None: ...


class Records(Protocol):
    """Where versions are stored (memory.personas.PersonaRecords); personas/ validates, it stores."""

    async def get(self, user_id: int | None, name: str, *, shared: bool = True) -> Record | None: ...
    async def listing(self, user_id: int | None) -> Sequence[Record]: ...
    async def versions(self, persona_id: int) -> Sequence[Record]: ...
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
    ) -> Record: ...
    async def delete(self, user_id: int | None, name: str) -> bool: ...
