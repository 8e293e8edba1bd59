"""A chat turn ready to answer: `PreparedChat` (the open backend stream with its first delta pulled,
and what the reply's streaming, usage and store need) and `primed()`, which pulls that first delta.
Apart from proxy/pipeline.py, which decides the steps, because proxy/streaming.py only reads these.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from proxy.backends.base import BackendRequest, Delta
from proxy.turn_records import MemoryTurn, PersonaUse


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """A turn whose backend stream is open and primed; `deltas` starts with the first delta."""

    id: str
    created: int
    model: str
    backend: str
    request: BackendRequest
    deltas: AsyncIterator[Delta]
    include_usage: bool
    memory: MemoryTurn | None = None
    memory_status: str = "off"  # off | ok | degraded
    persona: PersonaUse | None = None
    after: Callable[[str], None] | None = None  # called with the reply text (the token rate limit)
    stream: bool = True  # the client sees the reply as it comes (a partial reply was seen)
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the turn is stored once by this id
    wal: Path | None = None  # the turn's write-ahead file (memory/journal.py `InFlight`)

    def headers(self) -> dict[str, str]:
        headers = {"X-Anima-Backend": self.backend, "X-Anima-Memory": self.memory_status}
        if self.memory is not None and self.memory.thread is not None:
            headers["X-Anima-Conversation"] = self.memory.thread.public_id
        if self.persona is not None:
            headers["X-Anima-Persona"] = f"{self.persona.name};v={self.persona.version}"
        return headers


async def primed(stream: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """Pull the first delta now (raising connect errors here), then hand back a stream that replays it."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = Delta(finish_reason="stop")
    except BaseException:
        await _aclose(stream)
        raise
    return _replay(first, stream)


async def _replay(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    ended = False
    try:
        yield first
        async for delta in rest:
            yield delta
        ended = True  # the backend stream closed itself: nothing to cancel (a timer less per reply)
    finally:  # runs on client disconnect too: closing the backend stream cancels the upstream request
        if not ended:
            with anyio.move_on_after(5, shield=True):  # shielded, or the disconnect's cancel scope skips it
                await _aclose(rest)


async def _aclose(stream: AsyncIterator[Delta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
