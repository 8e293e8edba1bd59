"""MemoryService: the public face of memory/ for the request path (recognise, recall, remember).

Reads happen on the request path under a deadline; every write happens after the reply, in a
background task (memory/store.py), so storing never delays an answer. Recognition (which chat, what
is new, what kind of turn) is memory/recognition.py's, the recall step memory/recaller.py's; this module
wires the parts together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.archive import Archive
from memory.budget import TokenCounter
from memory.config import MemoryConfig
from memory.db import autocommit
from memory.drain import JournalDrain
from memory.foreground import Foreground
from memory.journal import InFlight, JournalEntry, TurnJournal
from memory.privacy import erase_user
from memory.recaller import Recaller
from memory.recognition import Recognizer
from memory.store import TurnStore, Vectors, unreachable
from memory.summaries import SummaryJob, SummaryWorker
from memory.types import Message, SessionKey, StoredMessage, Thread, TurnRecord
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


def _whole(text: str) -> list[str]:
    return [text]


def _embedding_worker(
    sessions: async_sessionmaker[AsyncSession],
    embedder: Embedder | None,
    chunker: Callable[[str], list[str]],
    config: MemoryConfig,
    annotate: Annotate | None,
) -> EmbeddingWorker | None:
    """The worker that embeds stored messages in the background (none without an embedder)."""
    if embedder is None:
        return None
    return EmbeddingWorker(sessions, embedder, chunker=chunker, batch=config.embed_batch, annotate=annotate)


def _journal_drain(
    journal: TurnJournal | None, store: TurnStore, config: MemoryConfig
) -> JournalDrain | None:
    """What stores the journaled turns in the background (none without a journal)."""
    if journal is None:
        return None
    return JournalDrain(journal, store.replay, unreachable, concurrency=config.drain_concurrency)


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
        self.journal, self.inflight = journal, inflight
        self.reads = autocommit(sessions)  # reads that need no transaction: no BEGIN/ROLLBACK round trips
        self.recaller = Recaller(sessions, self.reads, embedder, config)
        # the recall step is the Recaller's: start embedding the query, then recall under the deadline
        self.embed_query, self.recall = self.recaller.embed_query, self.recaller.recall
        self.window = WorkingMemory(turns=config.window_turns, conversations=config.window_conversations)
        self.chunker = chunker or _whole  # what the worker embeds per message, and what a known vector fits
        self._annotating = annotate is not None
        self.embeddings = _embedding_worker(sessions, embedder, self.chunker, config, annotate)
        self.summaries = SummaryWorker(sessions, counter, min_messages=config.summary_min_messages)
        self.archive = self._new_archive()
        self.recognizer = Recognizer(sessions, self.window)
        self.store = self._new_store()
        self.drain = _journal_drain(journal, self.store, config)
        self.foreground = Foreground()  # the pipeline marks its turns; the embedding worker yields to them
        self._public_ids: OrderedDict[tuple[int, str], int] = OrderedDict()  # (user, public id) → row id

    def _new_archive(self) -> Archive:
        """The memory API's archive; a conversation it stores wakes the embedding worker, and one it
        deletes first lets its stores in flight land."""
        return Archive(
            self.sessions,
            self.counter,
            self.window,
            self.embedder,
            self.config.fusion,
            stored=self._wake_embedder,
            quiesce=self._before_delete,
        )

    def _new_store(self) -> TurnStore:
        """The turn store (after the window and the recognizer, which it shares); vectors the request
        computed are stored with their messages only when there is an embedder to have made them."""
        return TurnStore(
            self.sessions,
            self.counter,
            self.window,
            self.recognizer,
            journal=self.journal,
            store_wait_s=self.config.store_wait_s,
            stored=self._wake_embedder,
            known=self._known,
            vectors=self._store_vectors if self.embedder is not None else None,
        )

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

    # -- summaries ----------------------------------------------------------------------------------

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
        """After a store: the worker embeds what it stored once no turn is being prepared (bounded)."""
        if self.embeddings is not None:
            self.foreground.after(self.embeddings.wake.set)

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
