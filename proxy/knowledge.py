"""Knowing the user (issue 17), wired: the facts and relationship blocks for the prompt, and the fact
worker's model calls through the chat pipeline's routes.

The logic lives below: memory/facts.py (reconciliation, ranking), memory/fact_store.py (queries),
memory/relationship_store.py (relationship rows), memory/fact_worker.py (extraction off the request
path), personas/knowing.py (rendering, stages).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import fact_store, relationship_store
from memory.budget import Budget, TokenCounter
from memory.db import autocommit
from memory.fact_models import RelationshipRow
from memory.fact_store import Scope
from memory.fact_worker import Completion, Extract, FactConfig, FactWorker, NoModel
from memory.facts import Current, ranked
from memory.types import SessionKey, Thread
from personas.knowing import current_stage, facts_text, relationship_text
from personas.store import Resolved
from proxy.errors import BackendError, ModelNotFound
from proxy.pipeline import ChatPipeline
from proxy.settings import Settings

log = logging.getLogger("anima.knowledge")

OFF = "off"


@dataclass(frozen=True, slots=True)
class Known:
    """What the database holds about the user for one turn (read while recall runs)."""

    scope: Scope
    facts: list[Current]
    relationship: RelationshipRow | None


class Knowledge:
    """The prompt's "what you know about the user" part: one read started right after recognition
    (it runs alongside recall), rendered once the budget is known; a miss leaves it out, never fails
    the turn."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        counter: TokenCounter,
        *,
        share: float = 0.05,
        deadline_s: float = 0.25,
    ) -> None:
        self._sessions, self._counter, self.share, self.deadline_s = sessions, counter, share, deadline_s
        self._reads = autocommit(sessions)  # a turn's fact reads: no BEGIN and ROLLBACK round trips

    def read(self, session: SessionKey, thread: Thread, persona: Resolved | None) -> asyncio.Future[Known]:
        scope = Scope(
            session.user_id, session.end_user, persona.id if persona else None, thread.conversation_id or None
        )
        ladder = persona is not None and bool(persona.persona.relationship)

        async def fetch() -> Known:
            async with self._reads() as s:
                found = await fact_store.current(s, scope)
                rel = await relationship_store.relationship(s, scope) if ladder else None
            return Known(scope, found, rel)

        return asyncio.ensure_future(fetch())

    async def blocks(
        self, reading: asyncio.Future[Known], persona: Resolved | None, budget: Budget
    ) -> tuple[str, ...]:
        try:
            async with asyncio.timeout(self.deadline_s):
                known = await reading
        except Exception as exc:
            reading.cancel()
            log.warning("facts unavailable for this turn: %s", exc or type(exc).__name__)
            return ()
        out = []
        if persona is not None and persona.persona.relationship:
            rel = known.relationship
            stage = current_stage(
                persona.persona,
                pinned=rel.stage if rel else None,
                interactions=rel.interactions if rel else 0,
                first_at=rel.first_at if rel else None,
                now=datetime.now(UTC),
                score=rel.score if rel else 0.0,
            )
            if stage is not None:
                out.append(relationship_text(persona.persona, stage))
        scope = known.scope
        order = ranked(known.facts, persona_id=scope.persona_id, conversation_id=scope.conversation_id)
        text, _ = facts_text([f.statement for f in order], self._counter, int(budget.window * self.share))
        if text:
            out.append(text)
        return tuple(out)


def extractor(pipeline: ChatPipeline, settings: Settings) -> Extract:
    """The worker's model call: `memory.facts_model`, else the chat's own route (its persona alias
    dropped); none, 'off', or a route that rejects the request: no extraction (NoModel)."""
    m = settings.memory

    async def extract(chat_model: str | None, prompt: str, schema: dict[str, Any]) -> Completion:
        model = m.facts_model or (pipeline.registry.split_alias(chat_model)[1] if chat_model else None)
        if model is None or model == OFF:
            raise NoModel("no model for fact extraction")
        try:
            text, usage = await pipeline.complete(
                model, prompt, max_tokens=m.facts_max_tokens, json_schema=schema
            )
        except ModelNotFound as exc:
            raise NoModel(str(exc)) from exc
        except BackendError as exc:
            if exc.retryable or exc.status() >= 500 or exc.status() == 429:
                raise
            raise NoModel(f"{model} rejects extraction requests: {exc}") from exc
        if usage is None:
            return Completion(text, pipeline.tokens.count(prompt) + 7, pipeline.tokens.count(text))
        return Completion(text, usage.prompt_tokens, usage.completion_tokens)

    return extract


def fact_worker(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> FactWorker:
    m = settings.memory
    return FactWorker(
        sessions,
        FactConfig(
            batch_messages=m.facts_batch_messages,
            min_user_messages=m.facts_min_user_messages,
            settle_s=m.facts_settle_s,
            tries=m.facts_tries,
        ),
    )


def start_facts(pipeline: ChatPipeline, settings: Settings) -> tuple[FactWorker, asyncio.Task[None]] | None:
    """The fact worker of this process (None with memory or facts off)."""
    if pipeline.memory is None or not settings.memory.facts_enabled:
        return None
    worker = fact_worker(pipeline.memory.sessions, settings)
    extract = None if settings.memory.facts_model == OFF else extractor(pipeline, settings)
    return worker, asyncio.get_running_loop().create_task(worker.run(extract))
