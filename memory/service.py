"""MemoryService: the public face of memory/ for the request path (recognise, recall, remember).

Reads happen on the request path under a deadline; every write happens after the reply, in a
background task (memory/store.py), so storing never delays an answer. Recognition (which chat, what
is new, what kind of turn) is memory/recognition.py's; this module wires the parts together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.archive import Archive
from memory.budget import TokenCounter
from memory.db import autocommit
from memory.drain import JournalDrain
from memory.journal import InFlight, JournalEntry, TurnJournal
from memory.privacy import erase_user
from memory.recall import Boost, Fusion, RecallQuery, Scope, needs_transaction, recall
from memory.recognition import Recognizer
from memory.store import TurnStore, Vectors, unreachable
from memory.summaries import SummaryJob, SummaryWorker, branch_summaries
from memory.types import Message, Recall, SessionKey, StoredMessage, Thread, TurnRecord
from memory.window import WorkingMemory
from memory.workers import Annotate, EmbeddingWorker, store_known

if TYPE_CHECKING:
    from memory.embedder import Embedder

__all__ = ["BehindJournal", "MemoryConfig", "MemoryService", "TurnRecord", "unreachable"]

log = logging.getLogger("anima.memory")


class BehindJournal(RuntimeError):
    """A turn of a conversation whose earlier turns are still journaled: storing it now would put it
    before them, so it is answered without memory and journaled after them (they drain in the
    background; the request does not wait)."""


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    window_turns: int = 64  # messages of each branch's tail cached in RAM: a cache, never a limit
    window_conversations: int = 1000
    recall_k: int = 40
    scope: Scope = "branch"
    fusion: Fusion = field(default_factory=Fusion)
    deadline_s: float = 0.25
    summaries: bool = True
    summary_min_messages: int = 8
    embed_batch: int = 64
    store_wait_s: float = 10.0
    drain_concurrency: int = 4  # conversations whose journaled turns are stored at once (pool minus headroom)


def _whole(text: str) -> list[str]:
    return [text]


class MemoryService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        counter: TokenCounter,
        embedder: Embedder | None,
        config: MemoryConfig,
        *,
        chunker: Any = None,
        annotate: Annotate | None = None,
        journal: TurnJournal | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self.sessions, self.counter, self.embedder, self.config = sessions, counter, embedder, config
        self.reads = autocommit(sessions)  # reads that need no transaction: no BEGIN/ROLLBACK round trips
        self.window = WorkingMemory(turns=config.window_turns, conversations=config.window_conversations)
        self.chunker = chunker or _whole  # what the worker embeds per message, and what a known vector fits
        self.embeddings = (
            EmbeddingWorker(
                sessions,
                embedder,
                chunker=self.chunker,
                batch=config.embed_batch,
                annotate=annotate,
            )
            if embedder is not None
            else None
        )
        self.summaries = SummaryWorker(sessions, counter, min_messages=config.summary_min_messages)
        self.archive = Archive(
            sessions,
            counter,
            self.window,
            embedder,
            config.fusion,
            stored=self._wake_embedder,
            quiesce=self._before_delete,
        )
        self.journal, self.inflight = journal, inflight
        self.recognizer = Recognizer(sessions, self.window)
        self.store = TurnStore(
            sessions,
            counter,
            self.window,
            self.recognizer,
            journal=journal,
            store_wait_s=config.store_wait_s,
            stored=self._wake_embedder,
            known=self._known,
            vectors=self._store_vectors if embedder is not None else None,
        )
        self.drain = (
            JournalDrain(journal, self.store.replay, unreachable, concurrency=config.drain_concurrency)
            if journal is not None
            else None
        )
        self._annotating = annotate is not None
        self._public_ids: OrderedDict[tuple[int, str], int] = OrderedDict()  # (user, public id) → row id

    # -- recognising the conversation -------------------------------------------------------------

    async def recognise(
        self, session: SessionKey, messages: Sequence[Message], *, earlier_tokens: int = 0
    ) -> Thread:
        """Which stored conversation and branch this request continues, what in it is new and what kind
        of turn it is. Waits on the journal only for this conversation's own journaled turns, and at
        most the memory deadline (the rest drains in the background); waits, bounded, for this
        conversation's stores in flight. `earlier_tokens`: how much stored history older than the
        client's first message may be offered to the prompt."""
        await self._catch_up(session)
        await self.store.after_stores_of(session)
        thread = await self.recognizer.recognise(session, messages, earlier_tokens=earlier_tokens)
        if thread.conversation_id:
            self._known(session.user_id, thread.public_id, thread.conversation_id)
        return thread

    async def _catch_up(self, session: SessionKey) -> None:
        """Journaled turns of this conversation are stored first, within the memory deadline; if they
        cannot be (the database is still away, or too many wait), this turn is journaled after them."""
        if (
            self.journal is None
            or self.drain is None
            or not len(self.journal)
            or not self.journal.waiting(session.user_id, session.conversation)
        ):
            return
        try:
            async with asyncio.timeout(self.config.deadline_s):
                await self.drain.drain(session)
        except Exception as exc:  # the deadline, or still no database
            log.info("journal: %s's turns are still waiting (%s)", session.conversation, type(exc).__name__)
        if self.journal.waiting(session.user_id, session.conversation):
            raise BehindJournal("turns of this conversation wait in the journal: this one queues after them")

    def _known(self, user_id: int, public_id: str, conversation_id: int) -> None:
        """Which row a public id names, for answering from the RAM window when Postgres is down (LRU)."""
        self._public_ids[(user_id, public_id)] = conversation_id
        self._public_ids.move_to_end((user_id, public_id))
        while len(self._public_ids) > self.config.window_conversations:
            self._public_ids.popitem(last=False)

    # -- recall --------------------------------------------------------------------------------------

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
            async with asyncio.timeout(self.config.deadline_s):  # the embedding is awaited by recall
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

    def summarise_later(
        self, session: SessionKey, thread: Thread, last_cut_id: int, cut_count: int, model: str
    ) -> None:
        """History up to message `last_cut_id` is out of the prompt: have it summarised in the background."""
        if self.config.summaries and thread.conversation_id and cut_count >= self.config.summary_min_messages:
            self.summaries.request(SummaryJob(session.user_id, thread.conversation_id, last_cut_id, model))

    # -- storing -----------------------------------------------------------------------------------

    def begin(self, session: SessionKey, turn: TurnRecord) -> Path | None:
        """The turn's write-ahead file, before its reply streams (see `InFlight`)."""
        return self.inflight.begin(JournalEntry(session, turn)) if self.inflight is not None else None

    def remember(
        self,
        session: SessionKey,
        thread: Thread,
        turn: TurnRecord,
        *,
        wal: Path | None = None,
        vectors: Vectors | None = None,
    ) -> None:
        """Store the turn in the background, right after the reply (journaled if that fails); `vectors`:
        what the request embedded, stored with the messages of those texts (asked for when storing)."""
        self.store.remember(session, thread, turn, wal=wal, vectors=vectors)

    def journal_later(self, session: SessionKey, turn: TurnRecord, *, wal: Path | None = None) -> None:
        self.store.journal_later(session, turn, wal=wal)

    async def store_turn(self, session: SessionKey, thread: Thread, turn: TurnRecord) -> list[StoredMessage]:
        return await self.store.store_turn(session, thread, turn)

    async def drain_journal(self) -> int:
        return await self.drain.drain() if self.drain is not None else 0

    async def run_journal(self, interval_s: float = 1.0) -> None:
        if self.drain is not None:
            await self.drain.run(interval_s)

    def recent(self, session: SessionKey) -> tuple[Message, ...]:
        """What this process still knows of an explicitly named conversation without the database:
        its RAM window, then its journaled turns (a thin client sends only its newest message)."""
        if session.conversation is None:
            return ()
        conversation_id = self._public_ids.get((session.user_id, session.conversation))
        window = self.window.latest(conversation_id) if conversation_id else ()
        known = [Message(m.role, m.content, m.name) for m in window]
        for entry in self.journal.entries() if self.journal is not None else []:
            if (
                entry.session.user_id == session.user_id
                and entry.session.conversation == session.conversation
            ):
                known += [m for m in entry.turn.incoming if m.role != "system" and m not in known]
                known.append(Message("assistant", entry.turn.reply))
        return tuple(known)

    async def _store_vectors(
        self,
        s: AsyncSession,
        rows: Sequence[StoredMessage],
        known: Mapping[str, Sequence[float]],
        user_id: int,
        conversation_id: int,
    ) -> None:
        """The store's hook: rows whose vector the request computed are embedded now, not by the worker."""
        await store_known(
            s,
            rows,
            known,
            user_id=user_id,
            conversation_id=conversation_id,
            chunker=self.chunker,
            annotating=self._annotating,
        )

    def _wake_embedder(self) -> None:
        if self.embeddings is not None:
            self.embeddings.wake.set()

    async def _before_delete(self, user_id: int, public_id: str) -> None:
        """Before a conversation is deleted: its user's stores in flight land (or are journaled), then
        its journaled turns are dropped."""
        await self.store.stores_of_user(user_id)
        if self.drain is not None:
            await self.drain.discard(user_id, public_id)

    async def erase_user(self, user_id: int) -> None:
        """Everything of one user, after the turns being stored for them have landed (or they would
        come back); their conversations leave the RAM window too."""
        await self.store.stores_of_user(user_id)
        for conversation_id in await erase_user(self.sessions, user_id):
            self.window.forget(conversation_id)

    @property
    def store_failures(self) -> int:
        """Answered turns neither stored nor journaled (read by proxy/metrics.py)."""
        return self.store.lost

    @property
    def stores_in_flight(self) -> int:
        return self.store.in_flight

    async def settle(self) -> None:
        """Wait until every scheduled store has finished (shutdown, tests)."""
        await self.store.settle()
