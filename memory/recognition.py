"""Recognising a request: which stored conversation and branch it continues, what is new, and what kind
of turn it is — decided here, once, and passed on in a `Thread` (memory/threads.py holds the pure rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import history
from memory.db import autocommit
from memory.threads import (
    Match,
    Shape,
    align,
    choose,
    classify,
    content_hash,
    named_by_prefix,
    new_public_id,
    same_or_trimmed,
)
from memory.types import Message, SessionKey, StoredMessage, Thread
from memory.window import WorkingMemory

DEEPEST = 100_000  # a bound on branch walks; the token cap is what really limits them


@dataclass(frozen=True, slots=True)
class Located:
    conversation_id: int  # 0: a new conversation
    public_id: str
    anchor_id: int | None
    match: Match | None = None
    revisions: tuple[tuple[int, Message], ...] = ()

    @property
    def matched(self) -> int:
        return self.match.length if self.match else 0


class Recognizer:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], window: WorkingMemory) -> None:
        self.sessions, self.window = sessions, window
        self.reads = autocommit(sessions)  # recognition only reads: no BEGIN and ROLLBACK round trips

    async def recognise(
        self, session: SessionKey, messages: Sequence[Message], *, earlier_tokens: int, replay: bool = False
    ) -> Thread:
        """`earlier_tokens`: how much stored history older than the client's first message may reach the
        prompt (what a trimmed or thin client did not send)."""
        shape = classify(messages)
        chat = shape.history
        async with self.reads() as s:
            located = await self._locate(s, session, chat, replay)
            located = await self._trimmed_tip(s, session, located, chat)
            path = await self._path(s, session, located)
            earlier, first = await self._earlier(s, session, located, earlier_tokens, path)
        return _thread(shape, located, path, earlier, first)

    async def _locate(
        self, s: AsyncSession, session: SessionKey, chat: Sequence[Message], replay: bool = False
    ) -> Located:
        hashes = [content_hash(m) for m in chat]
        roles = [m.role for m in chat]
        if session.conversation is not None:
            return await self._named(s, session, chat, replay)
        if not hashes:
            return Located(0, new_public_id(), None)
        found = await history.candidates(
            s, user_id=session.user_id, end_user=session.end_user, hashes=hashes, conversation_id=None
        )
        matches = align(hashes, roles, found)
        stored = {c.id: c for c in found}  # every anchor is a candidate: its row says the rest
        preferred: set[int] = set()
        if matches and session.character:  # a chat recorded with another character (or none) is another chat
            matches = {c: m for c, m in matches.items() if stored[m.anchor_id].character == session.character}
            preferred = set(matches)
        if not matches:
            return Located(0, new_public_id(), None)
        tips = {m.anchor_id for m in matches.values() if not stored[m.anchor_id].has_child}
        grown = {m.anchor_id for m in matches.values() if stored[m.anchor_id].has_grandchild}
        best = choose(matches, tips, grown, preferred)
        if best is None:
            return Located(0, new_public_id(), None)
        public = stored[best.anchor_id].public_id
        return Located(best.conversation_id, public, best.anchor_id, best, _edits(best, chat))

    async def _named(
        self, s: AsyncSession, session: SessionKey, chat: Sequence[Message], replay: bool = False
    ) -> Located:
        """An explicit id restricts alignment to that conversation; a thin client's message goes after
        the conversation's newest one."""
        assert session.conversation is not None
        hashes, roles = [content_hash(m) for m in chat], [m.role for m in chat]
        row = await history.conversation_by_public_id(
            s, user_id=session.user_id, public_id=session.conversation
        )
        if row is None:
            return Located(0, session.conversation, None)
        best = None
        if hashes:
            found = await history.candidates(
                s, user_id=session.user_id, end_user=row.end_user, hashes=hashes, conversation_id=row.id
            )
            best = align(hashes, roles, found).get(row.id)
        thin = "assistant" not in roles and not replay  # a repeated line is not a regenerate
        if best is not None and not thin:
            return Located(row.id, row.public_id, best.anchor_id, best, _edits(best, chat))
        head = await history.head(s, conversation_id=row.id)  # only a thin client needs the newest message
        if best is not None and best.anchor_id == head:
            return Located(row.id, row.public_id, best.anchor_id, best, _edits(best, chat))
        return Located(row.id, row.public_id, head)

    async def _trimmed_tip(
        self, s: AsyncSession, session: SessionKey, located: Located, chat: Sequence[Message]
    ) -> Located:
        """After Stop the client keeps less of the reply than was streamed (and trims it): its copy is the
        stored reply, reconciled to the client's text, never a second one."""
        at = located.matched
        if located.match is None or at >= len(chat) or chat[at].role != "assistant":
            return located
        stored = await history.replies(
            s, user_id=session.user_id, parent_id=located.anchor_id, conversation_id=located.conversation_id
        )
        reply = next((r for r in stored if same_or_trimmed(chat[at].content, r.content)), None)
        if reply is None:
            return located
        match = replace(located.match, anchor_id=reply.id, length=at + 1, ids=(*located.match.ids, reply.id))
        revised = located.revisions
        if content_hash(chat[at]) != content_hash(Message(reply.role, reply.content)):
            revised = (*revised, (reply.id, chat[at]))
        return replace(located, anchor_id=reply.id, match=match, revisions=revised)

    async def _path(
        self, s: AsyncSession, session: SessionKey, located: Located
    ) -> tuple[StoredMessage, ...]:
        """The stored branch's tail ending at the anchor: from the RAM window, else Postgres."""
        if located.anchor_id is None:
            return ()
        path = self.window.get(located.conversation_id, located.anchor_id)
        if path is None:
            rows = await history.path(
                s, user_id=session.user_id, anchor_id=located.anchor_id, limit=self.window.turns
            )
            path = tuple(rows)
            self.window.put(located.conversation_id, path)
        return path

    async def _earlier(
        self,
        s: AsyncSession,
        session: SessionKey,
        located: Located,
        tokens: int,
        path: tuple[StoredMessage, ...],
    ) -> tuple[tuple[StoredMessage, ...], StoredMessage | None]:
        """Stored messages before the client's first chat message (newest within `tokens`), and the
        stored copy of that first message. A client that sent its chat from the first message (the
        branch's tail in `path` starts there) has nothing earlier: no query."""
        if located.anchor_id is None:
            return (), None
        first = located.match.ids[0] if located.match and located.match.ids else None
        if first is not None and path and path[0].id == first and path[0].parent_id is None:
            return (), path[0]
        at = next((i for i, m in enumerate(path) if m.id == first), None) if first is not None else None
        if at is not None:  # the RAM window holds the client's first message: the walk starts there
            above = self.window.above(located.conversation_id) if path and path[0].parent_id else ()
            branch, at = (*above, *path), at + len(above)
            cached, spent, complete = _within(branch, at, tokens)
            if complete:
                return cached, branch[at]
            top = branch[0].parent_id
            assert top is not None  # `_within` is complete at the root
            rows = await history.path(
                s, user_id=session.user_id, anchor_id=top, limit=DEEPEST, max_tokens=tokens - spent
            )
            self.window.keep_above(located.conversation_id, (*rows, *above))  # the next turn needs no walk
            return (*rows, *cached), branch[at]
        start = first if first is not None else located.anchor_id
        rows = await history.path(
            s,
            user_id=session.user_id,
            anchor_id=start,
            limit=DEEPEST,
            max_tokens=tokens,
            skip_first=first is not None,
        )
        if first is not None:  # the client sent this one: the walk only starts from it
            return tuple(rows[:-1]), rows[-1] if rows else None
        return tuple(rows), None


def _within(
    path: tuple[StoredMessage, ...], at: int, tokens: int
) -> tuple[tuple[StoredMessage, ...], int, bool]:
    """The newest messages of `path` (a branch's tail, oldest first) before `path[at]` within `tokens`,
    as the earlier-history walk counts them (each its tokens + 4, newest first, stopping at the first
    that does not fit); the tokens they take; and whether that is the whole answer (one did not fit,
    or the tail starts at the branch's root), else the walk goes on above the tail with what is left."""
    spent, start = 0, at
    while start and spent + path[start - 1].token_count + 4 <= tokens:
        spent, start = spent + path[start - 1].token_count + 4, start - 1
    return path[start:at], spent, start > 0 or path[0].parent_id is None


def _edits(match: Match, chat: Sequence[Message]) -> tuple[tuple[int, Message], ...]:
    """The stored messages the client edited (their text wins; roles never change)."""
    return tuple((match.ids[p], chat[p]) for p in match.edited)


def _thread(
    shape: Shape,
    located: Located,
    path: tuple[StoredMessage, ...],
    earlier: tuple[StoredMessage, ...],
    first: StoredMessage | None,
) -> Thread:
    chat = shape.history
    matched = located.matched
    new, kind, prefill = chat[matched:], shape.kind, ""
    if kind == "continue" and new and not shape.nudged:  # a trailing assistant message not stored yet:
        kind, prefill, new = "prefill", new[-1].content, new[:-1]  # stored with the reply as one message
    elif kind == "continue":  # the reply grows the last chat message: the client's text of it, then the reply
        prefill = chat[-1].content
    elif kind == "turn" and not new and chat and chat[-1].role == "user":
        kind = "regenerate"  # the whole request is stored already: a swipe
    if shape.speaker is not None:  # a group chat: each reply says who spoke
        new = tuple(named_by_prefix(m) for m in new)
    return Thread(
        conversation_id=located.conversation_id,
        public_id=located.public_id,
        created=located.conversation_id == 0,
        kind=kind,
        anchor_id=located.anchor_id,
        path=path,
        new=tuple(new),
        prefill=prefill,
        earlier=earlier,
        matched=located.match.ids if located.match else (),
        revisions=located.revisions,
        speaker=shape.speaker,
        first=first,
    )
