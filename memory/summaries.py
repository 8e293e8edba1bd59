"""Rolling summaries of history that fell out of the prompt budget, written by a background worker.

When assembly cuts history, the pipeline asks for the branch up to the cut to be summarised. The
worker summarises the oldest unsummarised span (at most `max_span` messages) with a model it is
given, stores it, and repeats until the span before the cut is covered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import history
from memory.budget import TokenCounter
from memory.db import autocommit
from memory.models import SummaryRow
from memory.types import StoredMessage, Summary

log = logging.getLogger("anima.summaries")

Summarize = Callable[[str, str], Awaitable[str]]  # (model, instruction + excerpt) -> summary text

INSTRUCTION = (
    "Summarise this excerpt of a conversation in at most six sentences, in the third person. Keep names,"
    " facts about the people, decisions, plans, feelings and open questions; leave out small talk."
)

_BRANCH_SUMMARIES = text(
    """
    WITH RECURSIVE branch AS (
        SELECT id, parent_id FROM message WHERE id = :anchor AND user_id = :user
        UNION ALL
        SELECT m.id, m.parent_id FROM message m JOIN branch b ON m.id = b.parent_id
    )
    SELECT s.first_message_id, s.last_message_id, s.content, s.token_count
    FROM summary s WHERE s.user_id = :user AND s.last_message_id IN (SELECT id FROM branch)
    ORDER BY s.last_message_id DESC LIMIT :n
    """
)

# The branch up to `anchor`, newest first, walked only back to the newest message a summary of this
# user ends at (ids grow down a branch, so that is the one with the highest id): what is left to
# summarise. The worker walked the whole branch twice per job (the summaries, then every message).
_UNSUMMARISED = text(
    """
    WITH RECURSIVE branch AS (
        SELECT m.*, 0 AS up,
               EXISTS (SELECT 1 FROM summary s WHERE s.user_id = :user AND s.last_message_id = m.id)
                   AS covered
        FROM message m WHERE m.id = :anchor AND m.user_id = :user
        UNION ALL
        SELECT m.*, b.up + 1,
               EXISTS (SELECT 1 FROM summary s WHERE s.user_id = :user AND s.last_message_id = m.id)
        FROM message m JOIN branch b ON m.id = b.parent_id
        WHERE NOT b.covered AND b.up + 1 < :limit
    )
    SELECT id, role, content, name, token_count, created_at, parent_id, depth,
           emotion_label, importance, status, emotion_scores, emotion_confidence, metadata
    FROM branch WHERE NOT covered ORDER BY up DESC
    """
)
MAX_BRANCH = 5000  # messages walked back from a cut at most


@dataclass(frozen=True, slots=True)
class SummaryJob:
    user_id: int
    conversation_id: int
    last_id: int  # the newest message that was cut: summarise up to here
    model: str


async def branch_summaries(
    session: AsyncSession, *, user_id: int, anchor_id: int, n: int = 5
) -> list[Summary]:
    """The latest summaries of the branch ending at `anchor_id`, oldest first."""
    rows = (await session.execute(_BRANCH_SUMMARIES, {"anchor": anchor_id, "user": user_id, "n": n})).all()
    return [Summary(r.first_message_id, r.last_message_id, r.content, r.token_count) for r in reversed(rows)]


def transcript(messages: list[StoredMessage], counter: TokenCounter, max_tokens: int) -> str:
    lines, spent = [], 0
    for m in messages:
        line = f"{m.name or m.role}: {m.content}"
        spent += counter.count(line)
        if spent > max_tokens:
            break
        lines.append(line)
    return "\n".join(lines)


class SummaryWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        counter: TokenCounter,
        *,
        min_messages: int = 8,
        max_span: int = 40,
        max_excerpt_tokens: int = 2500,
    ) -> None:
        self._sessions, self._counter = sessions, counter
        self._reads = autocommit(sessions)  # its one read needs no BEGIN and ROLLBACK
        self._min, self._span, self._excerpt = min_messages, max_span, max_excerpt_tokens
        self.queue: asyncio.Queue[SummaryJob] = asyncio.Queue(maxsize=1000)
        self._queued: set[tuple[int, int]] = set()
        self.written = 0

    def request(self, job: SummaryJob) -> None:
        """Ask for the branch up to `job.last_id` to be summarised (dropped if already asked or full)."""
        key = (job.conversation_id, job.last_id)
        if key not in self._queued and not self.queue.full():
            self._queued.add(key)
            self.queue.put_nowait(job)

    async def step(self, job: SummaryJob, summarize: Summarize) -> bool:
        """Summarise the oldest unsummarised span up to `job.last_id`; True if one was written."""
        async with self._reads() as session:
            params = {"anchor": job.last_id, "user": job.user_id, "limit": MAX_BRANCH}
            rows = (await session.execute(_UNSUMMARISED, params)).all()
        span = [history.stored_row_of(r) for r in rows[: self._span]]
        if len(span) < self._min:
            return False
        summary = (
            await summarize(job.model, f"{INSTRUCTION}\n\n{transcript(span, self._counter, self._excerpt)}")
        ).strip()
        if not summary:
            return False
        async with self._sessions.begin() as session:
            session.add(
                SummaryRow(
                    conversation_id=job.conversation_id,
                    user_id=job.user_id,
                    first_message_id=span[0].id,
                    last_message_id=span[-1].id,
                    message_count=len(span),
                    content=summary,
                    token_count=self._counter.count(summary),
                )
            )
        self.written += 1
        return True

    async def run(self, summarize: Summarize) -> None:
        while True:
            job = await self.queue.get()
            try:
                while await self.step(job, summarize):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed summary is retried by the next cut, never fatal
                log.warning("summary of conversation %d failed: %s", job.conversation_id, exc)
            finally:
                self._queued.discard((job.conversation_id, job.last_id))
