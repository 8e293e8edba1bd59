"""The embedding worker: embeds stored messages off the request path, in batches.

Work is found from database state (messages with `embedded = false`), so a restart loses nothing;
`FOR UPDATE SKIP LOCKED` lets several processes share the work without embedding a row twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.models import MessageEmbedding, MessageRow
from memory.types import Annotation

if TYPE_CHECKING:
    from memory.embedder import Embedder

log = logging.getLogger("anima.workers")

Annotate = Callable[[Sequence[tuple[str, str]]], Awaitable[list[Annotation]]]  # (role, text) -> annotation

_PENDING = text(
    """
    SELECT m.id, m.user_id, m.conversation_id, m.role, m.name, m.content, m.created_at, m.importance
    FROM message m WHERE NOT m.embedded ORDER BY m.id LIMIT :n FOR UPDATE OF m SKIP LOCKED
    """
)


def index_text(role: str, name: str | None, content: str, day: str) -> str:
    """What is embedded for a message: speaker and date help every retrieval method."""
    return f"[{day}] {name or role}: {content}"


class EmbeddingWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        *,
        chunker: Callable[[str], list[str]],
        batch: int = 32,
        idle_s: float = 2.0,
        annotate: Annotate | None = None,
    ) -> None:
        self._sessions, self._embedder, self._chunk = sessions, embedder, chunker
        self._batch, self._idle_s, self._annotate = batch, idle_s, annotate
        self.wake = asyncio.Event()
        self.failures = 0

    async def step(self) -> int:
        """Embed one batch; returns how many messages it embedded."""
        async with self._sessions.begin() as session:
            rows = (await session.execute(_PENDING, {"n": self._batch})).all()
            if not rows:
                return 0
            texts: list[str] = []
            owners: list[tuple[int, int, int, int]] = []  # message, user, conversation, chunk
            for row in rows:
                day = f"{row.created_at:%Y-%m-%d}"
                for i, chunk in enumerate(self._chunk(row.content) or [""]):  # each chunk keeps who and when
                    texts.append(index_text(row.role, row.name, chunk, day))
                    owners.append((row.id, row.user_id, row.conversation_id, i))
            vectors = await self._embedder.embed(texts)
            await session.execute(
                insert(MessageEmbedding),
                [
                    {"message_id": m, "user_id": u, "conversation_id": c, "chunk": i, "embedding": v}
                    for (m, u, c, i), v in zip(owners, vectors, strict=True)
                ],
            )
            await session.execute(
                update(MessageRow).where(MessageRow.id.in_([r.id for r in rows])).values(embedded=True)
            )
            await self._annotate_missing(session, [r for r in rows if r.importance is None])
        return len(rows)

    async def _annotate_missing(self, session: AsyncSession, rows: list[Any]) -> None:
        """Messages stored without the emotion step (imports, replies) get importance (and emotion) here."""
        if self._annotate is None or not rows:
            return
        annotations = await self._annotate([(r.role, r.content) for r in rows])
        for row, annotation in zip(rows, annotations, strict=True):
            await session.execute(
                update(MessageRow).where(MessageRow.id == row.id).values(**annotation.columns())
            )

    async def run(self) -> None:
        """Until cancelled: drain the backlog, then sleep until woken or `idle_s` passes."""
        while True:
            try:
                done = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be restarting: back off, never die
                self.failures += 1
                log.warning("embedding batch failed: %s", exc)
                done = 0
            if done:
                continue
            self.wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as the
            # event fires, and this loop would then never stop (seen as a hung shutdown).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._idle_s):
                    await self.wake.wait()

    async def drain(self) -> None:
        """Embed everything pending now (tests, imports)."""
        while await self.step():
            pass
