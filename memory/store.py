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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import history, turn_rows
from memory.budget import TokenCounter
from memory.journal import InFlight, JournalEntry, TurnJournal
from memory.models import TurnContext
from memory.recognition import Recognizer
from memory.types import SessionKey, StoredMessage, Thread, TurnRecord
from memory.window import WorkingMemory

log = logging.getLogger("anima.memory.store")

# stores vectors the request computed with the rows of those texts (memory.workers.store_known)
KnownVectors = Callable[
    [AsyncSession, Sequence[StoredMessage], Mapping[str, Sequence[float]], int, int], Awaitable[object]
]

Vectors = Callable[[], Awaitable[dict[str, list[float]]]]  # the request's vectors, once computed


def unreachable(exc: BaseException) -> bool:
    """The database cannot be reached (as opposed to a bad statement): stop draining and retry later."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
# Taken after the lock (a statement's snapshot is taken when it starts: in the lock's statement it would
# miss the turn a store holding the lock was committing).
_STORABLE = text(
    """
    SELECT NOT EXISTS (SELECT 1 FROM turn_context WHERE turn_id = :turn)
       AND (:conversation = 0 OR EXISTS (SELECT 1 FROM conversation WHERE id = :conversation))
    """
)
# The turn's prompt snapshot, in Core (the ORM's unit of work was a flush per turn).
_CONTEXT = insert(TurnContext.__table__)  # type: ignore[arg-type]  # the mapped class's Table


async def _snapshot(
    s: AsyncSession, user_id: int, conversation_id: int, reply_id: int | None, turn: TurnRecord
) -> None:
    """The turn's prompt snapshot (what the backend was sent, per-tier tokens, the persona used)."""
    await s.execute(
        _CONTEXT,
        {
            "conversation_id": conversation_id,
            "user_id": user_id,
            "reply_message_id": reply_id,
            "model": turn.model,
            "messages": turn.prompt,
            "tokens": turn.tokens,
            "persona": turn.persona,
            "turn_id": turn.turn_id,
        },
    )


async def _storable(s: AsyncSession, turn_id: str, conversation_id: int) -> bool:
    """Not stored yet (by turn id), and the conversation it was recognised in was not deleted since:
    a store in flight when its conversation is deleted must not bring its rows back."""
    return bool(await s.scalar(_STORABLE, {"turn": turn_id, "conversation": conversation_id}))


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
            if not await self.journaled(session, turn, thread.public_id):
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

    async def journaled(self, session: SessionKey, turn: TurnRecord, public_id: str | None = None) -> bool:
        if self.journal is None:
            return False
        if turn.status == "partial" and not turn.reply and not turn.incoming:
            return True  # nothing was said: nothing to keep
        if await asyncio.to_thread(self.journal.append, JournalEntry(session, turn, public_id)):
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
            await s.execute(_LOCK, {"key": lock_key(session.user_id, thread.public_id)})
            if not await _storable(s, turn.turn_id, thread.conversation_id):
                return []  # stored already (a retry, a replay), or its conversation was deleted meanwhile
            conversation_id = thread.conversation_id or await history.ensure_conversation(
                s,
                user_id=session.user_id,
                public_id=thread.public_id,
                end_user=session.end_user,
                character=session.character,
            )
            chained = turn_rows.chained_reply(thread, turn)
            added = await turn_rows.messages(s, self.counter, session, thread, turn, conversation_id, chained)
            if chained is not None:  # stored with the new messages, in the same INSERT
                added, reply_id = added[:-1], added[-1:]
            else:
                reply_id = await turn_rows.reply(
                    s, self.counter, session, thread, turn, conversation_id, added
                )
            if turn.vectors and self._vectors is not None:
                await self._vectors(s, added, turn.vectors, session.user_id, conversation_id)
            added += [r for r in reply_id if r not in added]
            await _snapshot(s, session.user_id, conversation_id, reply_id[0].id if reply_id else None, turn)
        self._known(session.user_id, thread.public_id, conversation_id)
        if thread.revisions or thread.kind == "continue":
            self.window.forget(conversation_id)
        else:
            self.window.extend(conversation_id, thread.anchor_id, added)
        self._stored()
        return added

    # -- the journal -----------------------------------------------------------------------------

    async def replay(self, entry: JournalEntry) -> list[StoredMessage]:
        """A journaled turn, recognised again from the messages its request carried, stored once."""
        thread = await self.recognizer.recognise(
            entry.session, entry.turn.incoming, earlier_tokens=0, replay=True
        )
        return await self.store_turn(entry.session, thread, entry.turn)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def settle(self) -> None:
        """Wait until every scheduled store has finished (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
