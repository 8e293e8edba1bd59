"""The fact worker: reads new messages off the request path, in batches, and keeps facts and
relationships up to date.

Work is found from database state (messages with `facts_done = false`), so a restart resumes where
it stopped. A conversation's unread messages become one batch once it has `min_user_messages` unread
user messages or has been quiet for `settle_s`; one model call reads the batch (with a few earlier
messages as context and the facts already known), and one transaction reconciles what it found,
moves the relationship, and marks the batch read. Two processes may both read a batch; the second
to commit finds it read and stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import extraction, fact_store, history, relationship_store
from memory.fact_store import Scope
from memory.facts import Candidate, reconcile
from memory.models import ConversationRow, MessageRow, TurnContext
from memory.structured import StructuredError, ask

log = logging.getLogger("anima.facts")

# how the user's messages feel, for the relationship's emotional trend (labels of emotion/labels.py)
VALENCE = {"joy": 1.0, "surprise": 0.3, "neutral": 0.0, "sadness": -0.2, "fear": -0.3, "disgust": -0.8}
VALENCE |= {"anger": -1.0}

_PENDING = text(
    """
    SELECT conversation_id, count(*) FILTER (WHERE role = 'user') AS users,
           max(created_at) < now() - make_interval(secs => :settle) AS quiet
    FROM message WHERE NOT facts_done AND (CAST(:user AS bigint) IS NULL OR user_id = :user)
    GROUP BY conversation_id ORDER BY min(id) LIMIT 100
    """
)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


Extract = Callable[[str | None, str, dict[str, Any]], Awaitable[Completion]]  # (chat's model, prompt, schema)


class NoModel(Exception):
    """No model is suitable for extraction: the batch is read for the relationship only."""


@dataclass(frozen=True, slots=True)
class FactConfig:
    batch_messages: int = 12
    min_user_messages: int = 3
    settle_s: float = 60.0
    context_messages: int = 4
    known_facts: int = 40
    tries: int = 3
    idle_s: float = 5.0
    retry_s: float = 60.0


@dataclass(slots=True)
class FactStats:
    """What extraction cost and did, for logs and the bench."""

    batches: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    opened: int = 0
    invalid_answers: int = 0
    messages: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    scope: Scope
    character: str
    model: str | None
    lines: tuple[extraction.Line, ...]  # context (number 0) then the unread messages
    ids: tuple[int, ...]
    emotions: tuple[str | None, ...]  # of the unread user messages


class FactWorker:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], config: FactConfig | None = None) -> None:
        self._sessions, self.config = sessions, config or FactConfig()
        self.stats = FactStats()
        self.wake = asyncio.Event()
        self._cooling: dict[int, float] = {}  # conversation -> monotonic time it may be retried
        self.valence: Mapping[str, float] = VALENCE

    async def step(self, extract: Extract | None, *, force: bool = False, user_id: int | None = None) -> int:
        """Read one ready batch (of `user_id`'s, if given); returns how many messages it marked read."""
        conversation = await self._ready(force, user_id)
        if conversation is None:
            return 0
        batch = await self._batch(conversation)
        candidates: list[Candidate] = []
        try:
            if batch.emotions and extract is not None:
                candidates = await self._extract(extract, batch)
        except NoModel:
            pass
        except StructuredError as exc:
            self.stats.invalid_answers += 1
            log.info("facts of conversation %d: no valid answer (%s); nothing stored", conversation, exc)
        except Exception as exc:  # the backend is down or failing: retry this conversation later
            self._cooling[conversation] = time.monotonic() + self.config.retry_s
            log.warning("fact extraction for conversation %d failed: %s", conversation, exc)
            return 0
        return await self._store(batch, candidates)

    async def _ready(self, force: bool, user_id: int | None) -> int | None:
        now = time.monotonic()
        async with self._sessions() as s:
            rows = (await s.execute(_PENDING, {"settle": self.config.settle_s, "user": user_id})).all()
        for row in rows:
            if self._cooling.get(row.conversation_id, 0) > now:
                continue
            if force or row.quiet or row.users >= self.config.min_user_messages:
                return int(row.conversation_id)
        return None

    async def _batch(self, conversation_id: int) -> Batch:
        async with self._sessions() as s:
            conv = await s.get(ConversationRow, conversation_id)
            assert conv is not None
            unread = (
                await s.scalars(
                    select(MessageRow)
                    .where(MessageRow.conversation_id == conversation_id, ~MessageRow.facts_done)
                    .order_by(MessageRow.id)
                    .limit(self.config.batch_messages)
                )
            ).all()
            context = await self._context(s, conv.user_id, unread[0].parent_id) if unread else []
            model = await s.scalar(
                select(TurnContext.model)
                .where(TurnContext.conversation_id == conversation_id)
                .order_by(TurnContext.id.desc())
                .limit(1)
            )
        character = conv.character or "the assistant"
        speaker = {"user": "user", "assistant": character}
        lines = [
            extraction.Line(0, m.id, m.role, speaker.get(m.role, m.role), m.content, m.created_at)
            for m in context
        ]
        lines += [
            extraction.Line(i, m.id, m.role, speaker.get(m.role, m.role), m.content, m.created_at)
            for i, m in enumerate((m for m in unread if m.role in speaker), start=1)
        ]
        return Batch(
            scope=Scope(conv.user_id, conv.end_user, conv.persona_id, conversation_id),
            character=character,
            model=model,
            lines=tuple(lines),
            ids=tuple(m.id for m in unread),
            emotions=tuple(m.emotion_label for m in unread if m.role == "user"),
        )

    async def _context(self, s: AsyncSession, user_id: int, parent_id: int | None) -> Sequence[Any]:
        if parent_id is None or not self.config.context_messages:
            return []
        path = await history.path(s, user_id=user_id, anchor_id=parent_id, limit=self.config.context_messages)
        return [m for m in path if m.role in ("user", "assistant")]

    async def _extract(self, extract: Extract, batch: Batch) -> list[Candidate]:
        async with self._sessions() as s:
            known = await fact_store.known(s, user_id=batch.scope.user_id, end_user=batch.scope.end_user)
        known = known[-self.config.known_facts :]
        question = extraction.prompt(batch.lines, known, batch.character)

        async def complete(prompt: str, schema: dict[str, Any]) -> str:
            answer = await extract(batch.model, prompt, schema)
            self.stats.calls += 1
            self.stats.prompt_tokens += answer.prompt_tokens
            self.stats.completion_tokens += answer.completion_tokens
            return answer.text

        return await ask(
            complete,
            question,
            extraction.schema(),
            lambda text: extraction.parse(text, batch.lines, batch.character, known),
            tries=self.config.tries,
            what="facts answer",
        )

    async def _store(self, batch: Batch, candidates: list[Candidate]) -> int:
        async with self._sessions.begin() as s:
            await fact_store.lock(s, batch.scope.user_id)
            unread = set(
                (
                    await s.scalars(
                        select(MessageRow.id)
                        .where(MessageRow.id.in_(batch.ids), ~MessageRow.facts_done)
                        .with_for_update()
                    )
                ).all()
            )
            if not unread:
                return 0  # another process read this batch first
            candidates = [c for c in candidates if set(c.sources) <= unread]
            known = await fact_store.known(s, user_id=batch.scope.user_id, end_user=batch.scope.end_user)
            opened = await fact_store.apply(s, batch.scope, reconcile(known, candidates))
            await self._relate(s, batch)
            await s.execute(update(MessageRow).where(MessageRow.id.in_(unread)).values(facts_done=True))
        log.info(
            "facts: conversation %d, %d message(s) read, %d candidate(s), %d fact(s) opened",
            batch.scope.conversation_id, len(unread), len(candidates), len(opened),
        )  # fmt: skip
        self.stats.batches += 1
        self.stats.opened += len(opened)
        self.stats.messages += len(unread)
        return len(unread)

    async def _relate(self, s: AsyncSession, batch: Batch) -> None:
        """The user's messages move the relationship with the conversation's persona."""
        if batch.scope.persona_id is None or not batch.emotions:
            return
        trend = sum(self.valence.get(e or "neutral", 0.0) for e in batch.emotions) / len(batch.emotions)
        at = min(line.created_at for line in batch.lines if line.number)
        await relationship_store.touch_relationship(
            s,
            batch.scope,
            interactions=len(batch.emotions),
            trend=trend,
            weight=min(0.5, 0.1 * len(batch.emotions)),
            at=at,
        )

    async def drain(self, extract: Extract | None, *, user_id: int | None = None) -> int:
        """Read everything unread now (of one user, if given), ready or not (tests, the bench, imports)."""
        total = 0
        while done := await self.step(extract, force=True, user_id=user_id):
            total += done
        return total

    async def run(self, extract: Extract | None) -> None:
        """Until cancelled: read ready batches, then sleep until woken or `idle_s` passes."""
        while True:
            try:
                done = await self.step(extract)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be restarting: back off, never die
                log.warning("fact batch failed: %s", exc)
                done = 0
            if done:
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.idle_s):
                    await self.wake.wait()
