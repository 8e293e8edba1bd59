"""MemoryService: the public face of memory/ for the request path (recognise, recall, remember).

Reads happen on the request path under a deadline; every write happens after the reply, in a
background task the service owns (`remember`), so storing never delays an answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import history
from memory.archive import Archive
from memory.budget import TokenCounter
from memory.journal import TurnJournal
from memory.models import TurnContext
from memory.privacy import erase_user
from memory.recall import Boost, Fusion, RecallQuery, Scope, recall
from memory.summaries import SummaryJob, SummaryWorker, branch_summaries
from memory.threads import align, choose, content_hash, new_public_id, shape_of
from memory.types import Annotation, Message, Recall, SessionKey, StoredMessage, Thread
from memory.window import WorkingMemory
from memory.workers import Annotate, EmbeddingWorker

if TYPE_CHECKING:
    from memory.embedder import Embedder

log = logging.getLogger("anima.memory")


def unreachable(exc: BaseException) -> bool:
    """The database cannot be reached (as opposed to a bad statement): worth journaling and retrying."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    window_turns: int = 24
    window_conversations: int = 1000
    recall_k: int = 8
    scope: Scope = "branch"
    fusion: Fusion = field(default_factory=Fusion)
    deadline_s: float = 0.25
    summary_min_messages: int = 8
    embed_batch: int = 32
    store_wait_s: float = 10.0


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """What happened in one turn, for `remember`: the reply text and the prompt that produced it."""

    reply: str
    status: str  # complete | partial
    model: str
    prompt: list[dict[str, Any]]
    tokens: dict[str, Any]
    newest: Annotation | None = None  # the emotion step's reading of the newest user message
    persona: dict[str, Any] | None = None  # {"name", "version"} that answered
    persona_id: int | None = None  # the conversation's persona from now on
    incoming: tuple[Message, ...] = ()  # the request's messages: what the journal re-recognises
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # makes a journal replay idempotent


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
    ) -> None:
        self.sessions, self.counter, self.embedder, self.config = sessions, counter, embedder, config
        self.window = WorkingMemory(turns=config.window_turns, conversations=config.window_conversations)
        self.embeddings = (
            EmbeddingWorker(
                sessions,
                embedder,
                chunker=chunker or (lambda t: [t]),
                batch=config.embed_batch,
                annotate=annotate,
            )
            if embedder is not None
            else None
        )
        self.summaries = SummaryWorker(sessions, counter, min_messages=config.summary_min_messages)
        self.archive = Archive(
            sessions, counter, self.window, embedder, config.fusion, stored=self._wake_embedder
        )
        self.journal = journal
        self.store_failures = 0  # turns neither stored nor journaled
        self._draining = asyncio.Lock()
        self._public_ids: OrderedDict[tuple[int, str], int] = OrderedDict()  # (user, public id) → row id
        self._stores: set[asyncio.Task[None]] = set()
        self._pending: dict[tuple[int, str | None], set[asyncio.Task[None]]] = {}

    # -- recognising the conversation -------------------------------------------------------------

    async def recognise(self, session: SessionKey, messages: Sequence[Message]) -> Thread:
        """Which stored conversation and branch this request continues, and what in it is new.

        Turns journaled during an outage are stored first, so this request sees them (and they are
        not stored again as part of its history)."""
        if self.journal is not None and len(self.journal):
            await self.drain_journal()
        thread = await self._recognise(session, messages)
        if thread.conversation_id:
            self._known(session.user_id, thread.public_id, thread.conversation_id)
        return thread

    def _known(self, user_id: int, public_id: str, conversation_id: int) -> None:
        """Which row a public id names, for answering from the RAM window when Postgres is down (LRU)."""
        self._public_ids[(user_id, public_id)] = conversation_id
        self._public_ids.move_to_end((user_id, public_id))
        while len(self._public_ids) > self.config.window_conversations:
            self._public_ids.popitem(last=False)

    async def _recognise(self, session: SessionKey, messages: Sequence[Message]) -> Thread:
        await self._after_stores_of(session)
        shape = shape_of(messages)
        chat = shape.history
        hashes = [content_hash(m) for m in chat]
        async with self.sessions() as s:
            conversation_id, public_id, anchor, matched = await self._locate(s, session, hashes)
            if anchor is not None:
                path = self.window.get(conversation_id, anchor)
                if path is None:
                    path = tuple(
                        await history.path(
                            s, user_id=session.user_id, anchor_id=anchor, limit=self.config.window_turns
                        )
                    )
                    self.window.put(conversation_id, path)
            else:
                path = ()
        new = chat[matched:]
        kind, prefill = shape.kind, ""
        if kind == "continue" and new:  # the trailing assistant message is not stored: a reply prefill
            kind, prefill, new = "prefill", new[-1].content, new[:-1]
        elif kind == "turn" and not new:  # the whole request is stored already: a regenerate/swipe
            kind = "regenerate"
        return Thread(
            conversation_id=conversation_id,
            public_id=public_id,
            created=conversation_id == 0,
            kind=kind,
            anchor_id=anchor,
            path=path,
            new=tuple(new),
            prefill=prefill,
        )

    async def _locate(
        self, s: AsyncSession, session: SessionKey, hashes: list[str]
    ) -> tuple[int, str, int | None, int]:
        """(conversation id or 0 if new, public id, anchor message id, matched message count)."""
        if session.conversation is not None:
            row = await history.conversation_by_public_id(
                s, user_id=session.user_id, public_id=session.conversation
            )
            if row is None:
                return 0, session.conversation, None, 0
            found = (
                align(
                    hashes,
                    await history.candidates(
                        s,
                        user_id=session.user_id,
                        end_user=row.end_user,
                        hashes=hashes,
                        conversation_id=row.id,
                    ),
                ).get(row.id)
                if hashes
                else None
            )
            if found is not None:
                return row.id, row.public_id, found.anchor_id, found.length
            return row.id, row.public_id, await history.head(s, conversation_id=row.id), 0
        if not hashes:
            return 0, new_public_id(), None, 0
        candidates = await history.candidates(
            s, user_id=session.user_id, end_user=session.end_user, hashes=hashes, conversation_id=None
        )
        matches = align(hashes, candidates)
        preferred: set[int] = set()
        if matches and session.character:  # a chat recorded with another character is another chat
            recorded = await history.characters(s, list(matches))
            matches = {c: m for c, m in matches.items() if recorded[c] in (None, session.character)}
            preferred = {c for c in matches if recorded[c] == session.character}
        if not matches:
            return 0, new_public_id(), None, 0
        unsure = [m.anchor_id for m in matches.values() if not m.has_user]  # only these need the tip check
        tips = await history.tips(s, unsure) if unsure else set()
        best = choose(matches, tips, preferred)
        if best is None:
            return 0, new_public_id(), None, 0
        public = await history.public_id(s, best.conversation_id)
        return best.conversation_id, public, best.anchor_id, best.length

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
        """Memories and summaries for this turn, within the deadline; a miss degrades, never fails."""
        pending = embedding if embedding is not None else self.embed_query(query)
        if not query.strip() or (thread.anchor_id is None and self.config.scope == "branch"):
            if embedding is None:  # a caller's own future is the caller's to cancel (it may use it)
                pending.cancel()
            return Recall(thread=thread)
        recent = [m.id for m in thread.path[-self.config.window_turns :]]
        try:
            async with asyncio.timeout(self.config.deadline_s):
                vector = await pending
                async with self.sessions() as s:
                    memories = await recall(
                        s,
                        RecallQuery(
                            user_id=session.user_id,
                            text=query,
                            embedding=vector,
                            scope=self.config.scope,
                            anchor_id=thread.anchor_id,
                            character=session.character,
                            persona_id=persona_id,
                            end_user=session.end_user,
                            exclude=recent,
                            k=self.config.recall_k,
                        ),
                        self.config.fusion,
                        boost,
                    )
                    older = bool(thread.path) and thread.path[0].depth > 0  # the branch outgrew the window
                    summaries = (
                        await branch_summaries(s, user_id=session.user_id, anchor_id=thread.anchor_id)
                        if thread.anchor_id is not None and older
                        else []
                    )
        except TimeoutError:
            log.warning("recall missed its %.0f ms deadline", self.config.deadline_s * 1000)
            return Recall(thread=thread, degraded=("recall_deadline",))
        except Exception as exc:
            log.warning("recall failed: %s", exc)
            return Recall(thread=thread, degraded=("recall_failed",))
        return Recall(thread=thread, memories=tuple(memories), summaries=tuple(summaries))

    def summarise_later(
        self, session: SessionKey, thread: Thread, last_cut_id: int, cut_count: int, model: str
    ) -> None:
        """History up to message `last_cut_id` is out of the prompt: have it summarised in the background."""
        if thread.conversation_id and cut_count >= self.config.summary_min_messages:
            self.summaries.request(SummaryJob(session.user_id, thread.conversation_id, last_cut_id, model))

    # -- storing -----------------------------------------------------------------------------------

    def remember(self, session: SessionKey, thread: Thread, turn: TurnRecord) -> None:
        """Store the turn in the background, right after the reply; the service keeps the task."""
        task = asyncio.get_running_loop().create_task(self._store_logged(session, thread, turn))
        self._stores.add(task)
        # pending stores by user, and by conversation: a request naming its conversation waits for
        # that conversation's stores only; one recognised by content waits for all of its user's
        keys: list[tuple[int, str | None]] = [(session.user_id, None), (session.user_id, thread.public_id)]
        for key in keys:
            self._pending.setdefault(key, set()).add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._stores.discard(finished)
            for key in keys:
                waiting = self._pending.get(key)
                if waiting is not None:
                    waiting.discard(finished)
                    if not waiting:
                        del self._pending[key]

        task.add_done_callback(done)

    async def _after_stores_of(self, session: SessionKey) -> None:
        """A client that answers fast can send its next turn before the last one is stored; reading
        memory before that store lands would see a stale branch. (If the wait times out, storing
        still reuses what is already there, so nothing is stored twice.)"""
        pending = self._pending.get((session.user_id, session.conversation))
        if pending:
            await asyncio.wait(list(pending), timeout=self.config.store_wait_s)

    async def _store_logged(self, session: SessionKey, thread: Thread, turn: TurnRecord) -> None:
        try:
            await self.store_turn(session, thread, turn)
        except Exception as exc:
            if unreachable(exc) and await self._journaled(session, turn):
                return
            self.store_failures += 1  # read by proxy/metrics.py
            log.exception("could not store a turn of conversation %s", thread.public_id)

    # -- the journal (Postgres unreachable) ----------------------------------------------------------

    def journal_later(self, session: SessionKey, turn: TurnRecord) -> None:
        """A turn answered without the database: journal it (durably, in a thread), store it later."""

        async def journal() -> None:
            await self._journaled(session, turn)

        task = asyncio.get_running_loop().create_task(journal())
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _journaled(self, session: SessionKey, turn: TurnRecord) -> bool:
        if self.journal is None or (turn.status == "partial" and not turn.reply):
            return False
        entry = {
            "turn_id": turn.turn_id,
            "session": dataclasses.asdict(session),
            "turn": {k: v for k, v in dataclasses.asdict(turn).items() if k not in ("incoming", "newest")}
            | {"newest": dataclasses.asdict(turn.newest) if turn.newest else None},
            "messages": [[m.role, m.content, m.name] for m in turn.incoming],
        }
        if await asyncio.to_thread(self.journal.append, entry):
            log.warning("database unreachable: turn journaled (%d waiting)", len(self.journal))
            return True
        log.error("database unreachable and the journal is full: a turn of %s is not stored", session.user_id)
        return False

    async def drain_journal(self) -> int:
        """Store journaled turns in order; stops at the first that still cannot reach the database."""
        assert self.journal is not None
        stored: set[str] = set()
        async with self._draining:
            try:
                for entry in self.journal.entries():
                    try:
                        session = SessionKey(**entry["session"])
                        messages = [Message(r, c, n) for r, c, n in entry["messages"]]
                        data = dict(entry["turn"])
                        newest = data.pop("newest", None)
                        turn = TurnRecord(
                            **data, newest=Annotation(**newest) if newest else None, incoming=tuple(messages)
                        )
                        thread = await self._recognise(session, messages)
                        await self.store_turn(session, thread, turn, replay=True)
                    except Exception as exc:
                        if unreachable(exc):
                            raise
                        log.error("a journaled turn cannot be stored and is dropped: %s", exc)
                    stored.add(entry["turn_id"])
            finally:
                if stored:
                    await asyncio.to_thread(self.journal.remove, stored)
                    log.info("journal: %d turn(s) stored, %d waiting", len(stored), len(self.journal))
        return len(stored)

    async def run_journal(self, interval_s: float = 1.0) -> None:
        """Retry the journal in the background until it is empty (the database is back)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.journal is not None and len(self.journal):
                try:
                    await self.drain_journal()
                except Exception as exc:
                    log.info("journal: %d turn(s) still waiting (%s)", len(self.journal), type(exc).__name__)
                    log.debug("journal: store failed", exc_info=exc)

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
                entry["session"]["user_id"] == session.user_id
                and entry["session"]["conversation"] == session.conversation
            ):
                known += [Message(r, c, n) for r, c, n in entry["messages"] if r != "system"]
                known.append(Message("assistant", entry["turn"]["reply"]))
        return tuple(known)

    async def store_turn(
        self, session: SessionKey, thread: Thread, turn: TurnRecord, *, replay: bool = False
    ) -> list[StoredMessage]:
        if not thread.conversation_id and not thread.new and (thread.kind == "quiet" or not turn.reply):
            return []  # nothing to remember (e.g. a bare system prompt): no empty conversation
        async with self.sessions.begin() as s:
            if replay and await s.scalar(select(TurnContext.id).where(TurnContext.turn_id == turn.turn_id)):
                return []  # stored before the acknowledgement was lost
            conversation_id = thread.conversation_id or await self._conversation(s, session, thread.public_id)
            known_depth = (
                thread.path[-1].depth if thread.path and thread.path[-1].id == thread.anchor_id else None
            )
            added = await history.append(
                s,
                user_id=session.user_id,
                conversation_id=conversation_id,
                parent_id=thread.anchor_id,
                parent_depth=-1 if thread.anchor_id is None else known_depth,
                messages=thread.new,
                token_counts=[self.counter.count(m.content) for m in thread.new],
                reuse=True,
                extras=[
                    turn.newest.columns()
                    if turn.newest and i == len(thread.new) - 1 and m.role == "user"
                    else {}
                    for i, m in enumerate(thread.new)
                ],
            )
            parent = added[-1].id if added else thread.anchor_id
            reply_id: int | None = None
            if thread.kind == "continue" and thread.anchor_id is not None:
                await history.extend(
                    s,
                    user_id=session.user_id,
                    message_id=thread.anchor_id,
                    text_=turn.reply,
                    tokens=self.counter.count(turn.reply),
                )
                reply_id = thread.anchor_id
            elif thread.kind != "quiet" and (thread.prefill + turn.reply):
                content = thread.prefill + turn.reply
                reply = await history.append(
                    s,
                    user_id=session.user_id,
                    conversation_id=conversation_id,
                    parent_id=parent,
                    parent_depth=added[-1].depth if added else (-1 if parent is None else known_depth),
                    messages=[Message("assistant", content)],
                    token_counts=[self.counter.count(content)],
                    status=turn.status,
                    metadata=[{"persona": turn.persona}] if turn.persona else None,
                )
                added += reply
                reply_id = reply[0].id
            s.add(
                TurnContext(
                    conversation_id=conversation_id,
                    user_id=session.user_id,
                    reply_message_id=reply_id,
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
        if thread.kind == "continue":
            self.window.forget(conversation_id)
        else:
            self.window.extend(conversation_id, thread.anchor_id, added)
        self._wake_embedder()
        return added

    def _wake_embedder(self) -> None:
        if self.embeddings is not None:
            self.embeddings.wake.set()

    async def _conversation(self, s: AsyncSession, session: SessionKey, public_id: str) -> int:
        return await history.ensure_conversation(
            s,
            user_id=session.user_id,
            public_id=public_id,
            end_user=session.end_user,
            character=session.character,
        )

    async def erase_user(self, user_id: int) -> None:
        """Everything of one user, after the turns being stored for them have landed (or they would
        come back); their conversations leave the RAM window too."""
        pending = self._pending.get((user_id, None))
        if pending:
            await asyncio.gather(*list(pending), return_exceptions=True)
        for conversation_id in await erase_user(self.sessions, user_id):
            self.window.forget(conversation_id)

    @property
    def stores_in_flight(self) -> int:
        return len(self._stores)

    async def settle(self) -> None:
        """Wait until every scheduled store has finished (shutdown, tests)."""
        while self._stores:
            await asyncio.gather(*list(self._stores), return_exceptions=True)
