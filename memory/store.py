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
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import chain, history
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


def unreachable(exc: BaseException) -> bool:
    """The database cannot be reached (as opposed to a bad statement): stop draining and retry later."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


def continued(text: str, more: str) -> str:
    """A continued message: SillyTavern puts a space between the text and its continuation unless
    one of them already has whitespace there."""
    if not text or not more or text[-1].isspace() or more[0].isspace():
        return text + more
    return f"{text} {more}"


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


async def _storable(s: AsyncSession, turn_id: str, conversation_id: int) -> bool:
    """Not stored yet (by turn id), and the conversation it was recognised in was not deleted since:
    a store in flight when its conversation is deleted must not bring its rows back."""
    return bool(await s.scalar(_STORABLE, {"turn": turn_id, "conversation": conversation_id}))


def chained_reply(thread: Thread, turn: TurnRecord) -> Message | None:
    """The reply, when it is stored as the next link of the new messages' chain: a complete reply to a
    turn, swipe or prefill. A continue grows a stored message instead, and a broken-off reply may meet
    the copy the client kept (`TurnStore._reply` handles both)."""
    if thread.kind == "continue" or not thread.stores_reply or turn.status == "partial":
        return None
    if not (turn.reply.strip() or turn.reply_tool_calls):
        return None
    content = thread.prefill + turn.reply
    return Message("assistant", content, thread.speaker, tool_calls=turn.reply_tool_calls)


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
            chained = chained_reply(thread, turn)
            added = await self._messages(s, session, thread, turn, conversation_id, chained)
            if chained is not None:  # stored with the new messages, in the same INSERT
                added, reply_id = added[:-1], added[-1:]
            else:
                reply_id = await self._reply(s, session, thread, turn, conversation_id, added)
            if turn.vectors and self._vectors is not None:
                await self._vectors(s, added, turn.vectors, session.user_id, conversation_id)
            added += [r for r in reply_id if r not in added]
            await s.execute(
                _CONTEXT,
                {
                    "conversation_id": conversation_id,
                    "user_id": session.user_id,
                    "reply_message_id": reply_id[0].id if reply_id else None,
                    "model": turn.model,
                    "messages": turn.prompt,
                    "tokens": turn.tokens,
                    "persona": turn.persona,
                    "turn_id": turn.turn_id,
                },
            )
        self._known(session.user_id, thread.public_id, conversation_id)
        if thread.revisions or thread.kind == "continue":
            self.window.forget(conversation_id)
        else:
            self.window.extend(conversation_id, thread.anchor_id, added)
        self._stored()
        return added

    async def _messages(
        self,
        s: AsyncSession,
        session: SessionKey,
        thread: Thread,
        turn: TurnRecord,
        conversation_id: int,
        reply: Message | None = None,
    ) -> list[StoredMessage]:
        """The client's edits and trimmed replies reconcile stored messages; new messages are appended,
        and `reply` after them (one chain, one INSERT; it is reused only if they all were)."""
        for message_id, message in thread.revisions:
            await history.revise(
                s,
                user_id=session.user_id,
                message_id=message_id,
                message=message,
                tokens=self.counter.of(message.content, message.tool_calls),
            )
        known_depth = (
            thread.path[-1].depth if thread.path and thread.path[-1].id == thread.anchor_id else None
        )
        messages, extras = (
            list(thread.new),
            [
                turn.newest.columns() if turn.newest and i == len(thread.new) - 1 and m.role == "user" else {}
                for i, m in enumerate(thread.new)
            ],
        )
        metadata: list[dict[str, Any] | None] = [None] * len(messages)
        if reply is not None:
            messages, extras = [*messages, reply], [*extras, {}]
            metadata.append({"persona": turn.persona} if turn.persona else None)
        return await chain.append(
            s,
            user_id=session.user_id,
            conversation_id=conversation_id,
            parent_id=thread.anchor_id,
            parent_depth=-1 if thread.anchor_id is None else known_depth,
            messages=messages,
            token_counts=[self.counter.of(m.content, m.tool_calls) for m in messages],
            reuse=True,
            client_copies=len(thread.new),  # not the reply: a generated reply is never a client's copy
            extras=extras,
            metadata=metadata,
            persona_id=turn.persona_id,  # recall's persona scope follows the conversation's persona
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
        return await chain.append(
            s,
            user_id=session.user_id,
            conversation_id=conversation_id,
            parent_id=parent,
            parent_depth=depth if depth is not None else (-1 if parent is None else None),
            messages=[Message("assistant", content, thread.speaker, tool_calls=turn.reply_tool_calls)],
            token_counts=[self.counter.of(content, turn.reply_tool_calls)],
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
