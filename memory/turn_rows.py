"""The rows a stored turn writes in the message tree: the client's edits applied, its new messages
appended as one chain (with the reply as its last link when the reply is a plain next message), and
otherwise the reply by its kind (a continue grows the message it continues; a broken-off reply meets
the shorter copy the client may have stored first). Apart from memory/store.py, which decides *whether*
and *when* a turn is stored (lock, once per turn id, journal), because this is *what* it becomes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from memory import chain, history
from memory.budget import TokenCounter
from memory.threads import same_or_trimmed
from memory.types import Message, SessionKey, StoredMessage, Thread, TurnRecord


def continued(text: str, more: str) -> str:
    """A continued message: SillyTavern puts a space between the text and its continuation unless
    one of them already has whitespace there."""
    if not text or not more or text[-1].isspace() or more[0].isspace():
        return text + more
    return f"{text} {more}"


def chained_reply(thread: Thread, turn: TurnRecord) -> Message | None:
    """The reply, when it is stored as the next link of the new messages' chain: a complete reply to a
    turn, swipe or prefill. A continue grows a stored message instead, and a broken-off reply may meet
    the copy the client kept (`reply` handles both)."""
    if thread.kind == "continue" or not thread.stores_reply or turn.status == "partial":
        return None
    if not (turn.reply.strip() or turn.reply_tool_calls):
        return None
    content = thread.prefill + turn.reply
    return Message("assistant", content, thread.speaker, tool_calls=turn.reply_tool_calls)


async def messages(
    s: AsyncSession,
    counter: TokenCounter,
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
            tokens=counter.of(message.content, message.tool_calls),
        )
    known_depth = thread.path[-1].depth if thread.path and thread.path[-1].id == thread.anchor_id else None
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
        token_counts=[counter.of(m.content, m.tool_calls) for m in messages],
        reuse=True,
        client_copies=len(thread.new),  # not the reply: a generated reply is never a client's copy
        extras=extras,
        metadata=metadata,
        persona_id=turn.persona_id,  # recall's persona scope follows the conversation's persona
    )


async def reply(
    s: AsyncSession,
    counter: TokenCounter,
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
        await _grow(s, counter, session.user_id, added[-1].id if added else thread.anchor_id, thread, turn)
        return []
    content = thread.prefill + turn.reply
    parent = added[-1].id if added else thread.anchor_id
    depth = added[-1].depth if added else None
    if turn.status == "partial":  # the client's shorter copy may have been stored first (Stop, then
        kept = await kept_copy(s, session, conversation_id, parent, content)  # a fast next turn)
        if kept is not None:
            return [kept]
    return await chain.append(
        s,
        user_id=session.user_id,
        conversation_id=conversation_id,
        parent_id=parent,
        parent_depth=depth if depth is not None else (-1 if parent is None else None),
        messages=[Message("assistant", content, thread.speaker, tool_calls=turn.reply_tool_calls)],
        token_counts=[counter.of(content, turn.reply_tool_calls)],
        status=turn.status,
        metadata=[{"persona": turn.persona}] if turn.persona else None,
        reuse=True,
    )


async def _grow(
    s: AsyncSession, counter: TokenCounter, user_id: int, target: int | None, thread: Thread, turn: TurnRecord
) -> None:
    """A continue: the message it continues becomes the client's text of it and the reply."""
    if target is None:
        return
    content = continued(thread.prefill, turn.reply)
    message = Message("assistant", content)
    tokens = counter.count(content)
    await history.revise(s, user_id=user_id, message_id=target, message=message, tokens=tokens, keep=False)


async def kept_copy(
    s: AsyncSession, session: SessionKey, conversation_id: int, parent: int | None, content: str
) -> StoredMessage | None:
    """A stored reply that is the part of this broken-off one the client kept."""
    stored = await history.replies(
        s, user_id=session.user_id, parent_id=parent, conversation_id=conversation_id
    )
    return next((r for r in stored if same_or_trimmed(r.content, content)), None)
