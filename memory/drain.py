"""Draining the turn journal: each conversation's turns in order, different conversations side by side.

After an outage the journal can hold turns of hundreds of conversations; stored one at a time they
took the better part of a minute (the 100-client fault run settled 51 s after the load stopped).
Each conversation's turns are stored in the order they were answered, one at a time, under that
conversation's lock, which a request catching up on its own journaled turns and a deletion take too;
different conversations drain concurrently, at most `concurrency` at once in the background (the
database pool minus headroom for requests; a request catching up on its own conversation's turns
does not queue for a slot: its memory deadline bounds it). A turn whose store fails for another
reason than an outage stops its conversation's drain (the turns behind it wait, in order) and is
retried a minute later; an outage stops the whole drain, which the background loop retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from memory.journal import JournalEntry, TurnJournal
from memory.types import SessionKey

log = logging.getLogger("anima.memory.drain")

RETRY_FAILED_S = 60.0  # a journaled turn that failed for another reason than an outage waits this long
DRAIN_BATCH = 50  # stored entries removed from the file this many at a time (each removal rewrites it)

Chat = tuple[int, str | None]  # (user, the conversation the request named, or None: found by content)


def chat_of(entry: JournalEntry) -> Chat:
    return entry.session.user_id, entry.session.conversation


class JournalDrain:
    def __init__(
        self,
        journal: TurnJournal,
        replay: Callable[[JournalEntry], Awaitable[object]],
        unreachable: Callable[[BaseException], bool],
        *,
        concurrency: int = 4,
    ) -> None:
        self.journal, self._replay, self._unreachable = journal, replay, unreachable
        self._gate = asyncio.Semaphore(max(1, concurrency))
        self._locks: dict[Chat, asyncio.Lock] = {}
        self._retry_at: dict[str, float] = {}
        self._discarded: set[str] = set()  # turns of deleted conversations: never replayed
        self._reading = 0  # drains between reading the journal and their end: they may hold discarded turns
        self.active = 0  # conversations draining right now
        self.peak = 0  # the most that ever drained at once (what tests observe)

    def lock(self, chat: Chat) -> asyncio.Lock:
        if chat not in self._locks:
            self._locks[chat] = asyncio.Lock()
        return self._locks[chat]

    async def drain(self, session: SessionKey | None = None) -> int:
        """Store journaled turns, each once; returns how many. With a session: only its conversation's
        (a request catching up), or all of its user's when it names none. An outage is raised once
        every conversation in progress has stopped."""
        self._reading += 1
        try:
            chats = self._chats(session)
            outage: list[BaseException] = []
            gate = self._gate if session is None else contextlib.nullcontext()  # a request's: its deadline
            counts = await asyncio.gather(*(self._drain_chat(c, e, outage, gate) for c, e in chats.items()))
        finally:
            self._reading -= 1
            if not self._reading:  # a discarded turn is gone from the journal: only a read before saw it
                self._discarded.clear()
        if outage:
            raise outage[0]
        return sum(counts)

    def _chats(self, session: SessionKey | None) -> dict[Chat, list[JournalEntry]]:
        """The journaled turns to drain, by conversation, in journal order."""
        chats: dict[Chat, list[JournalEntry]] = {}
        for entry in self.journal.entries():
            chat = chat_of(entry)
            if session is None or (chat[0] == session.user_id and session.conversation in (None, chat[1])):
                chats.setdefault(chat, []).append(entry)
        return chats

    async def _drain_chat(
        self,
        chat: Chat,
        entries: list[JournalEntry],
        outage: list[BaseException],
        gate: contextlib.AbstractAsyncContextManager[object],
    ) -> int:
        """One conversation's turns, in order, under its lock; stops at the first that cannot be stored."""
        stored: list[str] = []
        done = 0
        async with gate, self.lock(chat):
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                for entry in entries:
                    if outage or self._retry_at.get(entry.turn_id, 0.0) > time.monotonic():
                        break  # the turns behind a failed one wait: a conversation's order holds
                    if entry.turn_id in self._discarded:
                        continue
                    if not await self._stored(entry, outage):
                        break
                    stored.append(entry.turn_id)
                    self._retry_at.pop(entry.turn_id, None)
                    done += 1
                    if len(stored) >= DRAIN_BATCH:  # removed as it goes: requests see the backlog shrink
                        await asyncio.to_thread(self.journal.remove, set(stored))
                        stored.clear()
            finally:
                self.active -= 1
                if stored:
                    await asyncio.to_thread(self.journal.remove, set(stored))
        return done

    async def _stored(self, entry: JournalEntry, outage: list[BaseException]) -> bool:
        """True once stored; an outage is noted for the whole drain, any other failure keeps the turn."""
        try:
            await self._replay(entry)
        except Exception as exc:
            if self._unreachable(exc):
                outage.append(exc)
            else:
                self._retry_at[entry.turn_id] = time.monotonic() + RETRY_FAILED_S
                log.error(
                    "journal: turn %s cannot be stored yet (%s); kept", entry.turn_id, type(exc).__name__
                )
            return False
        return True

    async def discard(self, user_id: int, public_id: str) -> int:
        """A deleted conversation's journaled turns are dropped, never replayed: under its lock (and that
        of its user's unnamed turns), so no drain is storing one of them meanwhile."""
        async with self.lock((user_id, public_id)), self.lock((user_id, None)):
            doomed = {
                e.turn_id
                for e in self.journal.entries()
                if e.session.user_id == user_id and public_id in (e.session.conversation, e.public_id)
            }
            self._discarded |= doomed
            if doomed:
                await asyncio.to_thread(self.journal.remove, doomed)
        return len(doomed)

    async def run(self, interval_s: float = 1.0) -> None:
        """Retry the journal in the background until it is empty (the database is back)."""
        while True:
            await asyncio.sleep(interval_s)
            if len(self.journal):
                try:
                    await self.drain()
                except Exception as exc:
                    log.info("journal: %d turn(s) still waiting (%s)", len(self.journal), type(exc).__name__)
