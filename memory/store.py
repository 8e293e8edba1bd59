"""Storing turns: after the reply, in a background task; exactly once; any failure journals the turn.

Idempotent by turn: each turn carries a `turn_id` stored with its prompt snapshot, and every store of
one conversation takes a Postgres advisory lock first, so a retry, a store that outlived the wait of
the next request, or a journal replay finds what is already there (messages are reused by parent
and content) and adds nothing twice. Any exception while storing an answered turn journals it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import history
from memory.budget import TokenCounter
from memory.journal import InFlight, JournalEntry, TurnJournal
from memory.models import TurnContext
from memory.recognition import Recognizer
from memory.threads import same_or_trimmed
from memory.types import Message, SessionKey, StoredMessage, Thread, TurnRecord
from memory.window import WorkingMemory

log = logging.getLogger("anima.memory.store")

# stores vectors the request computed with the rows of those texts (memory.workers.store_known)
KnownVectors = Callable[
    [AsyncSession, Sequence[StoredMessage], Mapping[str, Sequence[float]], int, int], Awaitable[object]
]

Vectors = Callable[[], Awaitable[dict[str, list[float]]]]  # the request's vectors, once computed

RETRY_FAILED_S = 60.0  # a journaled turn that failed for another reason than an outage waits this long
DRAIN_BATCH = 50  # stored journal entries removed from the file this many at a time


def unreachable(exc: BaseException) -> bool:
    """The database cannot be reached (as opposed to a bad statement): stop draining and retry later."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


def _same_chat(journaled: SessionKey, session: SessionKey) -> bool:
    return journaled.user_id == session.user_id and journaled.conversation == session.conversation


def continued(text: str, more: str) -> str:
    """A continued message: SillyTavern puts a space between the text and its continuation unless
    one of them already has whitespace there."""
    if not text or not more or text[-1].isspace() or more[0].isspace():
        return text + more
    return f"{text} {more}"


def lock_key(user_id: int, public_id: str) -> int:
    """A signed 64-bit advisory-lock key for one conversation."""
    digest = hashlib.blake2b(f"{user_id}\x1f{public_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class TurnStore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        counter: TokenCounter,
        window: WorkingMemory,
        recognizer: Recognizer,
        *,
        journal: TurnJournal | None = None,
        store_wait_s: float = 10.0,
        stored: Callable[[], None] = lambda: None,
        known: Callable[[int, str, int], None] = lambda u, p, c: None,
        vectors: KnownVectors | None = None,
    ) -> None:
        self.sessions, self.counter, self.window, self.recognizer = sessions, counter, window, recognizer
        self.journal, self.store_wait_s = journal, store_wait_s
        self._stored, self._known, self._vectors = stored, known, vectors
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[tuple[int, str | None], set[asyncio.Task[None]]] = {}
        self._draining = asyncio.Lock()
        self._retry_at: dict[str, float] = {}
        self._catching_up: dict[tuple[int, str | None], asyncio.Lock] = {}
        self.failures = 0  # stores that failed and were journaled
        self.lost = 0  # stores that failed and could not be journaled either

    # -- scheduling ------------------------------------------------------------------------------

    def remember(
        self,
        session: SessionKey,
        thread: Thread,
        turn: TurnRecord,
        *,
        wal: Path | None = None,
        vectors: Vectors | None = None,
    ) -> None:
        """Store the turn in the background, right after the reply; the store keeps the task. The turn's
        write-ahead file (`wal`) goes once the turn is stored or journaled. `vectors` (the request's
        own embeddings, by text) are awaited in that task and stored with their messages."""
        task = asyncio.get_running_loop().create_task(
            self._store_or_journal(session, thread, turn, wal, vectors)
        )
        self._track(task, [(session.user_id, None), (session.user_id, thread.public_id)])

    def _track(self, task: asyncio.Task[None], keys: list[tuple[int, str | None]]) -> None:
        """Pending stores by user and by conversation: a request naming its conversation waits for that
        conversation's stores only; one recognised by content waits for all of its user's."""
        self._tasks.add(task)
        for key in keys:
            self._pending.setdefault(key, set()).add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            for key in keys:
                waiting = self._pending.get(key)
                if waiting is not None:
                    waiting.discard(finished)
                    if not waiting:
                        del self._pending[key]

        task.add_done_callback(done)

    async def after_stores_of(self, session: SessionKey) -> None:
        """A fast client can send its next turn before the last one is stored; recognising it before
        that store lands would see a stale branch. The wait is bounded: storing is idempotent anyway."""
        pending = self._pending.get((session.user_id, session.conversation))
        if pending:
            await asyncio.wait(list(pending), timeout=self.store_wait_s)

    async def stores_of_user(self, user_id: int) -> None:
        pending = self._pending.get((user_id, None))
        if pending:
            await asyncio.gather(*list(pending), return_exceptions=True)

    async def _store_or_journal(
        self, session: SessionKey, thread: Thread, turn: TurnRecord, wal: Path | None, vectors: Vectors | None
    ) -> None:
        if vectors is not None:
            turn = dataclasses.replace(turn, vectors=await vectors())
        try:
            await self.store_turn(session, thread, turn)
        except Exception as exc:  # any failure: pool exhausted, outage, a bad statement; nothing is dropped
            self.failures += 1
            log.warning(
                "could not store a turn of %s (%s): journaling it", thread.public_id, type(exc).__name__
            )
            log.debug("store failed", exc_info=exc)
            if not await self.journaled(session, turn):
                self.lost += 1
                log.error("a turn of %s could not be stored nor journaled", thread.public_id)
                return  # its write-ahead file stays: the next start journals it
        if wal is not None:
            InFlight.end(wal)

    def journal_later(self, session: SessionKey, turn: TurnRecord, *, wal: Path | None = None) -> None:
        """A turn answered without the database: journal it (durably, in a thread), store it later."""
        task = asyncio.get_running_loop().create_task(self._journal_only(session, turn, wal))
        self._track(task, [(session.user_id, None)])

    async def _journal_only(self, session: SessionKey, turn: TurnRecord, wal: Path | None) -> None:
        if not await self.journaled(session, turn):
            self.lost += 1
        elif wal is not None:
            InFlight.end(wal)

    async def journaled(self, session: SessionKey, turn: TurnRecord) -> bool:
        if self.journal is None:
            return False
        if turn.status == "partial" and not turn.reply and not turn.incoming:
            return True  # nothing was said: nothing to keep
        if await asyncio.to_thread(self.journal.append, JournalEntry(session, turn)):
            log.warning("turn journaled (%d waiting)", len(self.journal))
            return True
        log.error("the journal is full: a turn of user %s is not stored", session.user_id)
        return False

    # -- storing ---------------------------------------------------------------------------------

    async def store_turn(self, session: SessionKey, thread: Thread, turn: TurnRecord) -> list[StoredMessage]:
        """Store what is new, the reply as its kind says, and the prompt snapshot; once per turn id."""
        replied = bool(thread.prefill + turn.reply or turn.reply_tool_calls)
        if not thread.conversation_id and not thread.new and not (thread.stores_reply and replied):
            return []  # nothing to remember (e.g. a bare system prompt): no empty conversation
        async with self.sessions.begin() as s:
            await s.execute(
                text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": lock_key(session.user_id, thread.public_id)},
            )
            if await s.scalar(select(TurnContext.id).where(TurnContext.turn_id == turn.turn_id)):
                return []  # stored already: a retry, a replay whose acknowledgement was lost
            conversation_id = thread.conversation_id or await history.ensure_conversation(
                s,
                user_id=session.user_id,
                public_id=thread.public_id,
                end_user=session.end_user,
                character=session.character,
            )
            added = await self._messages(s, session, thread, turn, conversation_id)
            if turn.vectors and self._vectors is not None:
                await self._vectors(s, added, turn.vectors, session.user_id, conversation_id)
            reply_id = await self._reply(s, session, thread, turn, conversation_id, added)
            added += [r for r in reply_id if r not in added]
            s.add(
                TurnContext(
                    conversation_id=conversation_id,
                    user_id=session.user_id,
                    reply_message_id=reply_id[0].id if reply_id else None,
                    model=turn.model,
                    messages=turn.prompt,
                    tokens=turn.tokens,
                    persona=turn.persona,
                    turn_id=turn.turn_id,
                )
            )
            if turn.persona_id is not None:
                await history.set_persona(s, conversation_id=conversation_id, persona_id=turn.persona_id)
        self._known(session.user_id, thread.public_id, conversation_id)
        if thread.revisions or thread.kind == "continue":
            self.window.forget(conversation_id)
        else:
            self.window.extend(conversation_id, thread.anchor_id, added)
        self._stored()
        return added

    async def _messages(
        self, s: AsyncSession, session: SessionKey, thread: Thread, turn: TurnRecord, conversation_id: int
    ) -> list[StoredMessage]:
        """The client's edits and trimmed replies reconcile stored messages; new messages are appended."""
        for message_id, message in thread.revisions:
            await history.revise(
                s,
                user_id=session.user_id,
                message_id=message_id,
                message=message,
                tokens=self.counter.count(message.content),
            )
        known_depth = (
            thread.path[-1].depth if thread.path and thread.path[-1].id == thread.anchor_id else None
        )
        return await history.append(
            s,
            user_id=session.user_id,
            conversation_id=conversation_id,
            parent_id=thread.anchor_id,
            parent_depth=-1 if thread.anchor_id is None else known_depth,
            messages=thread.new,
            token_counts=[self.counter.count(m.content) for m in thread.new],
            reuse=True,
            extras=[
                turn.newest.columns() if turn.newest and i == len(thread.new) - 1 and m.role == "user" else {}
                for i, m in enumerate(thread.new)
            ],
        )

    async def _reply(
        self,
        s: AsyncSession,
        session: SessionKey,
        thread: Thread,
        turn: TurnRecord,
        conversation_id: int,
        added: list[StoredMessage],
    ) -> list[StoredMessage]:
        """The reply by kind: a continue grows the message it continues (the client's text of it, then
        the reply, joined by a space as SillyTavern joins them); a turn, swipe or prefill adds one reply
        (reused if that exact reply is there)."""
        if not thread.stores_reply or not (turn.reply.strip() or turn.reply_tool_calls):
            return []
        if thread.kind == "continue":
            target = added[-1].id if added else thread.anchor_id
            if target is None:
                return []
            content = continued(thread.prefill, turn.reply)
            await history.revise(
                s,
                user_id=session.user_id,
                message_id=target,
                message=Message("assistant", content),
                tokens=self.counter.count(content),
                keep=False,
            )
            return []
        content = thread.prefill + turn.reply
        parent = added[-1].id if added else thread.anchor_id
        depth = added[-1].depth if added else None
        if turn.status == "partial":  # the client's shorter copy may have been stored first (Stop, then
            kept = await self._kept_copy(s, session, conversation_id, parent, content)  # a fast next turn)
            if kept is not None:
                return [kept]
        return await history.append(
            s,
            user_id=session.user_id,
            conversation_id=conversation_id,
            parent_id=parent,
            parent_depth=depth if depth is not None else (-1 if parent is None else None),
            messages=[Message("assistant", content, thread.speaker, tool_calls=turn.reply_tool_calls)],
            token_counts=[self.counter.count(content)],
            status=turn.status,
            metadata=[{"persona": turn.persona}] if turn.persona else None,
            reuse=True,
        )

    @staticmethod
    async def _kept_copy(
        s: AsyncSession, session: SessionKey, conversation_id: int, parent: int | None, content: str
    ) -> StoredMessage | None:
        """A stored reply that is the part of this broken-off one the client kept."""
        stored = await history.replies(
            s, user_id=session.user_id, parent_id=parent, conversation_id=conversation_id
        )
        return next((r for r in stored if same_or_trimmed(r.content, content)), None)

    # -- the journal -----------------------------------------------------------------------------

    async def drain_journal(self, session: SessionKey | None = None) -> int:
        """Store journaled turns in order, each once; stops at the first that still cannot reach the
        database. An entry that fails for another reason stays journaled and is retried later. With a
        session: only that conversation's turns (a request catching up before its own is stored)."""
        assert self.journal is not None
        lock = self._draining if session is None else self._lock_of(session)
        stored: set[str] = set()
        async with lock:
            try:
                for entry in self.journal.entries():
                    if session is not None and not _same_chat(entry.session, session):
                        continue
                    if self._retry_at.get(entry.turn_id, 0.0) > time.monotonic():
                        continue
                    if await self._replay(entry):
                        stored.add(entry.turn_id)
                    if len(stored) >= DRAIN_BATCH:  # removed as it goes: requests see the backlog shrink
                        await asyncio.to_thread(self.journal.remove, set(stored))
                        stored.clear()
            finally:
                if stored:
                    await asyncio.to_thread(self.journal.remove, stored)
        if session is None:
            log.info("journal: %d turn(s) waiting", len(self.journal))
        return len(stored)

    def _lock_of(self, session: SessionKey) -> asyncio.Lock:
        key = (session.user_id, session.conversation)
        if key not in self._catching_up:
            self._catching_up[key] = asyncio.Lock()
        return self._catching_up[key]

    async def _replay(self, entry: JournalEntry) -> bool:
        """True once stored; an outage propagates (the drain stops), any other failure keeps it."""
        try:
            thread = await self.recognizer.recognise(
                entry.session, entry.turn.incoming, earlier_tokens=0, replay=True
            )
            await self.store_turn(entry.session, thread, entry.turn)
        except Exception as exc:
            if unreachable(exc):
                raise
            self._retry_at[entry.turn_id] = time.monotonic() + RETRY_FAILED_S
            log.error("journal: turn %s cannot be stored yet (%s); kept", entry.turn_id, type(exc).__name__)
            return False
        return True

    async def run_journal(self, interval_s: float = 1.0) -> None:
        """Retry the journal in the background until it is empty (the database is back)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.journal is not None and len(self.journal):
                try:
                    await self.drain_journal()
                except Exception as exc:
                    log.info("journal: %d turn(s) still waiting (%s)", len(self.journal), type(exc).__name__)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def settle(self) -> None:
        """Wait until every scheduled store has finished (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
