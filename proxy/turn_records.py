"""The records of a turn's preparation: the request (`TurnRequest`), what its prompt was built from and
the store needs after the reply (`MemoryTurn`, `PersonaUse`), and the work it started ahead of need
(`Ahead`). Apart from proxy/turn.py, which builds them, because the pipeline and the store only read them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emotion.detector import Emotion
from memory.budget import Budget
from memory.recall import Boost
from memory.types import Annotation, Message, SessionKey, Thread
from personas.client_card import IndexedCard
from personas.prompt import Prompt
from personas.store import Resolved

if TYPE_CHECKING:
    from proxy.knowledge import Known  # issue 17


VECTOR_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class PersonaUse:
    """Which persona version answered a turn (stored with the reply, shown in headers)."""

    name: str
    version: int
    id: int | None = None  # database row: the conversation's persona

    def public(self) -> dict[str, str | int]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def of(cls, resolved: Resolved) -> PersonaUse:
        return cls(resolved.name, resolved.version, resolved.id)


@dataclass(frozen=True, slots=True)
class MemoryTurn:
    """What a turn's prompt was built from, kept to store the turn once the reply is in.

    `thread` is None when memory is off or down; `unstored` then says the turn must be journaled."""

    session: SessionKey | None
    thread: Thread | None
    prompt: Prompt
    degraded: tuple[str, ...] = ()
    newest: Annotation | None = None  # importance (and emotion) of the newest user message
    persona: PersonaUse | None = None
    incoming: tuple[Message, ...] = ()  # the request's messages (the journal re-recognises them)
    unstored: bool = False  # memory is on but was down: journal the turn
    query: str = ""  # the newest user message's text, embedded for recall ...
    embedding: asyncio.Future[list[float] | None] | None = None  # ... and its vector, stored with it

    async def vectors(self) -> dict[str, list[float]]:
        """The vectors this turn computed, by text, for storing them with their messages (the store
        asks after the reply; a vector not ready within `VECTOR_WAIT_S` is left to the worker)."""
        pending = self.embedding
        if pending is None:
            return {}
        await asyncio.wait({pending}, timeout=VECTOR_WAIT_S)
        if not pending.done() or pending.cancelled() or pending.exception() is not None:
            return {}
        vector = pending.result()
        return {self.query: vector} if vector is not None else {}


@dataclass(frozen=True, slots=True)
class TurnRequest:
    session: SessionKey | None
    messages: tuple[Message, ...]
    budget: Budget
    model: str
    persona: Resolved | None = None
    character: str | None = None  # the character the client named (header), if any


@dataclass(slots=True)
class Ahead:
    """Work a turn started before it needs the result, so it overlaps recognition and recall: the
    newest message's encoder pass (emotion and recall vector), the client's card, the facts, the
    recall boost. It ends with the turn's preparation (`end`): whatever is still pending then is
    cancelled (a failure, a client gone, a result the turn did not need), except the vector stored
    with the turn (`keep`, awaited by the store after the reply)."""

    feeling: asyncio.Future[Emotion | None] | None
    embedding: asyncio.Future[list[float] | None]
    indexing: asyncio.Future[IndexedCard] | None
    knowing: asyncio.Future[Known] | None = None
    boost: asyncio.Future[Boost | None] | None = None
    keep: asyncio.Future[list[float] | None] | None = None

    def end(self) -> None:
        self.embedding.add_done_callback(_retrieved)  # its failure was recall's to report
        for pending in (self.feeling, self.embedding, self.indexing, self.knowing, self.boost):
            if pending is not None and pending is not self.keep:
                pending.cancel()  # a no-op once done


def _retrieved(future: asyncio.Future[list[float] | None]) -> None:
    """Marks a failed future's exception as seen (asyncio logs unseen ones)."""
    if not future.cancelled():
        future.exception()
