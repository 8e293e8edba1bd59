"""Recaller: the recall step of a turn as the request path runs it: the query embedded while recognition
runs, then memories and summaries under the memory deadline, degraded (never failed) on a miss.
memory/recall.py owns the query itself; this module owns its deadline and what it may leave out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.config import MemoryConfig
from memory.recall import Boost, RecallQuery, needs_transaction, recall
from memory.summaries import branch_summaries
from memory.types import Recall, SessionKey, Thread

if TYPE_CHECKING:
    from memory.embedder import Embedder

log = logging.getLogger("anima.memory")


class Recaller:
    """The recall step; MemoryService hands out its `embed_query` and `recall` as its own."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reads: async_sessionmaker[AsyncSession],
        embedder: Embedder | None,
        config: MemoryConfig,
    ) -> None:
        self.sessions, self.reads, self.embedder, self.config = sessions, reads, embedder, config

    def embed_query(self, query: str) -> asyncio.Future[list[float] | None]:
        """Start embedding the recall query now, so it runs (in a thread) while recognition queries
        Postgres; `recall()` awaits it under its deadline."""

        async def embed() -> list[float] | None:
            if self.embedder is None or not query.strip():
                return None
            return (await self.embedder.embed([query]))[0]

        return asyncio.ensure_future(embed())

    async def recall(
        self,
        session: SessionKey,
        thread: Thread,
        query: str,
        *,
        boost: Boost | Awaitable[Boost | None] | None = None,
        embedding: asyncio.Future[list[float] | None] | None = None,
        persona_id: int | None = None,
    ) -> Recall:
        """Memories and summaries for this turn, within the deadline; a miss degrades, never fails.
        What the prompt already holds (the client's messages, the earlier history offered) is left out."""
        pending = embedding if embedding is not None else self.embed_query(query)
        if not query.strip() or (thread.anchor_id is None and self.config.scope == "branch"):
            if embedding is None:  # a caller's own future is the caller's to cancel (it may use it)
                pending.cancel()
            return Recall(thread=thread)
        try:
            async with asyncio.timeout(self.config.deadline_s):  # recall awaits the embedding
                async with (self.sessions if needs_transaction(self.config.scope) else self.reads)() as s:
                    memories = await recall(
                        s, self._query(session, thread, query, pending, persona_id), self.config.fusion, boost
                    )
                    summaries = (
                        await branch_summaries(s, user_id=session.user_id, anchor_id=thread.anchor_id)
                        if thread.anchor_id is not None and thread.older and self.config.summaries
                        else []
                    )
        except TimeoutError:
            log.warning("recall missed its %.0f ms deadline", self.config.deadline_s * 1000)
            return Recall(thread=thread, degraded=("recall_deadline",))
        except Exception as exc:
            log.warning("recall failed: %s", exc)
            return Recall(thread=thread, degraded=("recall_failed",))
        return Recall(thread=thread, memories=tuple(memories), summaries=tuple(summaries))

    def _query(
        self,
        session: SessionKey,
        thread: Thread,
        text: str,
        vector: Awaitable[list[float] | None],
        persona_id: int | None,
    ) -> RecallQuery:
        return RecallQuery(
            user_id=session.user_id,
            text=text,
            embedding=vector,
            scope=self.config.scope,
            anchor_id=thread.anchor_id,
            character=session.character,
            persona_id=persona_id,
            end_user=session.end_user,
            exclude=[*thread.matched, *(m.id for m in thread.earlier)],
            k=self.config.recall_k,
        )
