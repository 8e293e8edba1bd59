"""Recognising a conversation from the messages a client sends, and what in them is new.

Conversations are trees: each stored message points at the previous message of its branch. A
request's non-system messages are a path through one tree (possibly missing its oldest part, when
the client trims its window); we align them against stored messages by content hash:

- the request's messages, from the first, are matched down a stored path as far as they go; what
  follows the match is new and is stored under its last matched message (the anchor). So a resent
  history stores nothing, a regenerate gets a sibling reply, and an edit forks a branch;
- a match counts only if it contains one of the user's own messages, or ends at a branch tip: two
  chats that open with the same greeting stay two conversations;
- system messages are ignored (world info comes and goes, group chats swap character cards).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from memory.types import Message, TurnKind

CHAT_ROLES = ("user", "assistant", "tool")  # tool results are part of the conversation


def content_hash(message: Message) -> str:
    key = f"{message.role}\x1f{message.name or ''}\x1f{message.content.strip()}"
    if message.tool_calls or message.tool_call_id:  # a call-only message has no text to tell it apart
        calls = "\x1e".join(f"{c.id}\x1d{c.name}\x1d{c.arguments}" for c in message.tool_calls)
        key += f"\x1f{calls}\x1f{message.tool_call_id or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def new_public_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored message whose hash occurs in the request."""

    id: int
    conversation_id: int
    parent_id: int | None
    content_hash: str
    role: str


@dataclass(frozen=True, slots=True)
class Match:
    conversation_id: int
    anchor_id: int
    length: int  # how many of the request's chat messages, from the first, are stored
    has_user: bool  # the matched run contains a user message


@dataclass(frozen=True, slots=True)
class Shape:
    """What kind of generation a request asks for, and which of its messages are chat history."""

    kind: TurnKind
    history: tuple[Message, ...]  # chat messages to align and store
    prefill: str = ""  # a trailing assistant message the reply continues


def shape_of(messages: Sequence[Message]) -> Shape:
    """Classify a request by its tail (see ../docs/architecture.md, "Recognising conversations").

    - last message assistant: continue (if it is stored) or reply prefill: the reply extends it;
    - last message system after an assistant turn: a quiet prompt or impersonation, not a chat turn;
    - otherwise a normal turn (SillyTavern's trailing post-history system message included).
    """
    chat = tuple(m for m in messages if m.role in CHAT_ROLES)
    if messages[-1].role == "assistant":
        return Shape(kind="continue", history=chat)
    if not chat or (messages[-1].role == "system" and chat[-1].role == "assistant"):
        return Shape(kind="quiet", history=chat)
    return Shape(kind="turn", history=chat)


def align(hashes: Sequence[str], candidates: Sequence[Candidate]) -> dict[int, Match]:
    """The longest stored run matching `hashes` from the first, per conversation.

    Dynamic programming over request positions: a candidate at position j extends a run if its
    parent matched position j-1. Duplicate texts within a chat are handled by position.
    """
    by_hash: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_hash.setdefault(candidate.content_hash, []).append(candidate)
    best: dict[int, Match] = {}
    previous: dict[int, tuple[int, bool]] = {}
    for position, digest in enumerate(hashes):
        current: dict[int, tuple[int, bool]] = {}
        for c in by_hash.get(digest, ()):
            if position == 0:
                current[c.id] = (1, c.role == "user")
            elif c.parent_id in previous:
                length, has_user = previous[c.parent_id]
                current[c.id] = (length + 1, has_user or c.role == "user")
        for c in by_hash.get(digest, ()):
            if c.id in current:
                length, has_user = current[c.id]
                known = best.get(c.conversation_id)
                if (
                    known is None
                    or length > known.length
                    or (length == known.length and c.id > known.anchor_id)
                ):
                    best[c.conversation_id] = Match(c.conversation_id, c.id, length, has_user)
        if not current:
            break
        previous = current
    return best


def choose(matches: dict[int, Match], tips: set[int], preferred: set[int]) -> Match | None:
    """The conversation a request belongs to, if any.

    `tips` are anchors with no children; `preferred` conversations match the client's character header.
    """
    accepted = [m for m in matches.values() if m.has_user or m.anchor_id in tips]
    if not accepted:
        return None
    return max(accepted, key=lambda m: (m.length, m.conversation_id in preferred, m.anchor_id))
