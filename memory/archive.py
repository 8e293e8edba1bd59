"""The conversation archive behind the memory API: import, append, list, read, search, delete, inspect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import chain, history
from memory.archive_reads import ConversationInfo, conversation_infos, recorded_prompt, stored_messages
from memory.budget import TokenCounter
from memory.models import ConversationRow, PersonaRef
from memory.privacy import redact_recalled
from memory.recall import Fusion, RecallQuery, Scope, recall
from memory.store import lock_key
from memory.threads import new_public_id
from memory.types import Memory, Message, StoredMessage
from memory.window import WorkingMemory

if TYPE_CHECKING:
    from memory.embedder import Embedder


class ConversationNotFound(LookupError):
    pass


class ConversationExists(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message handed to the archive (import or append)."""

    role: str
    content: str
    name: str | None = None
    created_at: datetime | None = None
    metadata: dict[str, Any] | None = None


class Archive:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        counter: TokenCounter,
        window: WorkingMemory,
        embedder: Embedder | None,
        fusion: Fusion,
        *,
        stored: Callable[[], None] = lambda: None,
        quiesce: Callable[[int, str], Awaitable[object]] | None = None,
    ) -> None:
        self._sessions, self._counter, self._window = sessions, counter, window
        self._embedder, self._fusion, self._stored = embedder, fusion, stored
        self._quiesce = quiesce  # waits for the conversation's stores in flight, drops its journaled turns

    async def _row(self, session: AsyncSession, user_id: int, public_id: str) -> ConversationRow:
        row = await history.conversation_by_public_id(session, user_id=user_id, public_id=public_id)
        if row is None:
            raise ConversationNotFound(f"No conversation '{public_id}'.")
        return row

    async def create(
        self,
        user_id: int,
        messages: Sequence[Incoming],
        *,
        public_id: str | None = None,
        title: str | None = None,
        persona: str | None = None,
        end_user: str = "",
    ) -> str:
        """Import a conversation: stored as one branch, marked `imported`; returns its id."""
        public_id = public_id or new_public_id()
        async with self._sessions.begin() as s:
            if await history.conversation_by_public_id(s, user_id=user_id, public_id=public_id) is not None:
                raise ConversationExists(f"A conversation '{public_id}' already exists.")
            persona_id = await self._persona(s, user_id, persona) if persona else None
            row = await history.create_conversation(
                s, user_id=user_id, public_id=public_id, end_user=end_user, title=title, persona_id=persona_id
            )
            await self._store(s, user_id, row.id, None, messages)
        self._stored()
        return public_id

    async def append(self, user_id: int, public_id: str, messages: Sequence[Incoming]) -> int:
        """Add messages after the conversation's newest message; returns how many were stored."""
        async with self._sessions.begin() as s:
            row = await self._row(s, user_id, public_id)
            await self._store(s, user_id, row.id, await history.head(s, conversation_id=row.id), messages)
            self._window.forget(row.id)
        self._stored()
        return len(messages)

    async def _store(
        self,
        s: AsyncSession,
        user_id: int,
        conversation_id: int,
        parent: int | None,
        messages: Sequence[Incoming],
    ) -> None:
        await chain.append(
            s,
            user_id=user_id,
            conversation_id=conversation_id,
            parent_id=parent,
            messages=[Message(m.role, m.content, m.name) for m in messages],
            token_counts=[self._counter.count(m.content) for m in messages],
            source="imported",
            created_at=[m.created_at for m in messages],
            metadata=[m.metadata for m in messages],
        )

    @staticmethod
    async def _persona(s: AsyncSession, user_id: int, name: str) -> int:
        existing = await s.scalar(
            select(PersonaRef.id).where(PersonaRef.user_id == user_id, PersonaRef.name == name)
        )
        if existing is not None:
            return int(existing)
        row = PersonaRef(user_id=user_id, name=name)
        s.add(row)
        await s.flush()
        return row.id

    async def info(self, user_id: int, public_id: str) -> ConversationInfo:
        async with self._sessions() as s:
            found = await conversation_infos(s, user_id, public_id=public_id, limit=1, offset=0)
        if not found:
            raise ConversationNotFound(f"No conversation '{public_id}'.")
        return found[0]

    async def conversations(self, user_id: int, *, limit: int, offset: int) -> list[ConversationInfo]:
        async with self._sessions() as s:
            return await conversation_infos(s, user_id, public_id=None, limit=limit, offset=offset)

    async def messages(
        self, user_id: int, public_id: str, *, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Every stored message (all branches) in storage order; `parent_id` shows the branch structure."""
        async with self._sessions() as s:
            row = await self._row(s, user_id, public_id)
            return await stored_messages(
                s, user_id=user_id, conversation_id=row.id, limit=limit, offset=offset
            )

    async def branch(self, user_id: int, public_id: str, *, limit: int) -> list[StoredMessage]:
        """The conversation's current branch (ending at its newest message), oldest first."""
        async with self._sessions() as s:
            row = await self._row(s, user_id, public_id)
            tip = await history.head(s, conversation_id=row.id)
            if tip is None:
                return []
            return await history.path(s, user_id=user_id, anchor_id=tip, limit=limit)

    async def delete(self, user_id: int, public_id: str) -> None:
        """Remove every trace: messages, embeddings, summaries, contexts (cascades), the RAM window, and
        its text where recall quoted it in the prompts recorded for other conversations. Its stores in
        flight land first and its journaled turns are dropped (or they would bring it back); the
        conversation's advisory lock keeps a store that starts meanwhile out until the rows are gone,
        and such a store then finds its conversation deleted and stores nothing."""
        if self._quiesce is not None:
            await self._quiesce(user_id, public_id)
        async with self._sessions.begin() as s:
            await s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(user_id, public_id)})
            row = await self._row(s, user_id, public_id)
            await redact_recalled(s, user_id=user_id, conversation=row)  # its text quoted elsewhere
            await s.delete(row)
        self._window.forget(row.id)

    async def search(
        self, user_id: int, query: str, *, public_id: str | None, scope: Scope, k: int
    ) -> list[Memory]:
        """Recall over a conversation's branch or the user's chats. The query's embedding runs in a thread
        meanwhile: the lookups and the wider scopes' lexical leg do not wait for it (~5 ms of ~18)."""
        embedding = asyncio.ensure_future(self._embed(query))
        try:
            async with self._sessions() as s:
                anchor = None
                if public_id is not None:
                    row = await self._row(s, user_id, public_id)
                    anchor = await history.head(s, conversation_id=row.id)
                elif scope == "branch":
                    scope = "user"
                return await recall(
                    s,
                    RecallQuery(
                        user_id=user_id, text=query, embedding=embedding, scope=scope, anchor_id=anchor, k=k
                    ),
                    self._fusion,
                )
        finally:
            embedding.cancel()  # done by then, unless the lookup failed first

    async def _embed(self, query: str) -> list[float] | None:
        return (await self._embedder.embed([query]))[0] if self._embedder is not None else None

    async def context(self, user_id: int, public_id: str, turn: int | None) -> dict[str, Any]:
        """The prompt assembled for the latest turn, or for turn `turn` (1 = the first)."""
        async with self._sessions() as s:
            row = await self._row(s, user_id, public_id)
            found = await recorded_prompt(s, user_id=user_id, conversation_id=row.id, turn=turn)
        if found is None:
            raise ConversationNotFound(
                f"Conversation '{public_id}' has no turn {turn or ''} on record.".replace("  ", " ")
            )
        return {"conversation_id": public_id, **found}
