"""Recognising a conversation from the messages a client sends: what kind of turn it is, and what is new.

Conversations are trees: each stored message points at the previous message of its branch. A
request's non-system messages are a path through one tree (possibly missing its oldest part, when
the client trims its window); we align them against stored messages by content hash:

- the request's messages, from the first, are matched down a stored path as far as they go; what
  follows the match is new and is stored under its last matched message (the anchor). So a resent
  history stores nothing, a regenerate gets a sibling reply, and an edit of the last message forks;
- an edit of a message the chat goes on past (the greeting, an earlier line) is a revision of that
  stored message, not a new branch: the run continues through it (one substitution, same role);
- identity ignores presentation: the `name` field, a leading "Name: " prefix and all whitespace are
  left out of the hash, so SillyTavern's name settings and group-chat prefixes never duplicate a turn;
- a match counts only if it holds one of the user's own messages or ends at a branch tip, and a
  request that is only a chat's opening does not join a chat that went on: a new chat that opens like
  an old one is a new conversation;
- system messages are ignored (world info comes and goes, group chats swap character cards), except a
  trailing instruction, whose text says what kind of generation this is (`classify`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from memory.types import CHAT_ROLES, Message, TurnKind

# SillyTavern's default utility prompts (continue nudge, impersonation, group nudge) and its quiet
# extension prompts: a trailing system message is classified by what it asks, not by its position.
_CONTINUE = re.compile(r"continue your last message", re.IGNORECASE)
_IMPERSONATE = re.compile(r"from the point of view of|write .{0,40}next reply as \{\{user\}\}", re.IGNORECASE)
_GROUP = re.compile(r"^\s*\[?\s*write the next reply only as (?P<name>[^\]\n]{1,80}?)\s*\.?\s*\]?\s*$", re.I)
_QUIET = re.compile(r"^\s*\[?\s*(pause your roleplay|ignore previous instructions)", re.IGNORECASE)
# a speaker's name: letters, spaces, dots, apostrophes, hyphens ("Turn 3:" or "12:30" are not names)
_NAME_PREFIX = re.compile(r"^\s*[^\W\d_](?:[^\W\d_]|[ .'-]){0,39}:\s+(?=\S)")
_SPACE = re.compile(r"\s+")


def canonical(text: str) -> str:
    """A message's identity: no leading "Name: " prefix, no whitespace at all (ST may add a space
    when it continues a reply, trims after Stop, and prefixes names in group chats)."""
    return _SPACE.sub("", _NAME_PREFIX.sub("", text, count=1))


def named_by_prefix(message: Message) -> Message:
    """In a group chat SillyTavern sends each reply as "Name: text" without a `name`: the speaker is the
    prefix (stored as the message's name; the text is kept as the client sent it)."""
    if message.role != "assistant" or message.name:
        return message
    found = _NAME_PREFIX.match(message.content)
    if found is None:
        return message
    return dataclasses.replace(message, name=found.group(0).strip().rstrip(":").strip())


def content_hash(message: Message) -> str:
    if not (message.tool_calls or message.tool_call_id):
        return _text_hash(message.role, message.content)
    calls = "\x1e".join(f"{c.id}\x1d{c.name}\x1d{c.arguments}" for c in message.tool_calls)
    key = f"{message.role}\x1f{canonical(message.content)}\x1f{calls}\x1f{message.tool_call_id or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def _text_hash(role: str, content: str) -> str:
    """Clients resend the whole chat every turn: each message is hashed once (LRU by text)."""
    return hashlib.sha256(f"{role}\x1f{canonical(content)}".encode()).hexdigest()[:32]


def same_or_trimmed(client: str, stored: str) -> bool:
    """The client's copy of a stored reply: the same text, or the part it kept after Stop."""
    mine, theirs = canonical(client), canonical(stored)
    return bool(mine) and theirs.startswith(mine)


def new_public_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Shape:
    """What kind of generation a request asks for, decided once from its tail (see `classify`)."""

    kind: TurnKind  # before alignment: turn | continue | impersonate | quiet
    history: tuple[Message, ...]  # chat messages, to align and store
    speaker: str | None = None  # who the reply speaks as (a group chat's member)
    nudged: bool = False  # a continue asked by a trailing instruction (not a trailing assistant message)


def classify(messages: Sequence[Message]) -> Shape:
    """The request's kind, from what its tail asks:

    - last message assistant: a continue (or, if that message is not stored, a reply prefill);
    - a trailing system instruction: SillyTavern's continue nudge (a continue of the last chat message,
      the user's included: SillyTavern appends to it), its impersonation prompt
      (the model writes the user's line: nothing stored), a group nudge (a turn spoken by that member),
      a quiet extension prompt, or any other instruction after an assistant message (quiet);
    - otherwise a normal turn (post-history instructions after the user's message included).
    """
    chat = tuple(m for m in messages if m.role in CHAT_ROLES)
    if not chat:
        return Shape("quiet", chat)
    if messages[-1].role == "assistant":
        return Shape("continue", chat)
    trailing = [m.content for m in messages[_last_chat(messages) + 1 :] if m.role == "system"]
    for instruction in trailing:
        if _IMPERSONATE.search(instruction):
            return Shape("impersonate", chat)
        if _QUIET.search(instruction):
            return Shape("quiet", chat)
    for instruction in trailing:
        if _CONTINUE.search(instruction):
            return Shape("continue", chat, nudged=True)
    for instruction in trailing:
        group = _GROUP.match(instruction)
        if group:
            return Shape("turn", chat, speaker=group["name"].strip())
    if chat[-1].role == "assistant" and trailing:
        return Shape("quiet", chat)
    return Shape("turn", chat)


def _last_chat(messages: Sequence[Message]) -> int:
    return max(i for i, m in enumerate(messages) if m.role in CHAT_ROLES)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored message whose hash occurs in the request, with its parent (for edits)."""

    id: int
    conversation_id: int
    parent_id: int | None
    content_hash: str
    role: str
    parent_role: str | None = None
    grandparent_id: int | None = None
    # read in the same statement, so recognition needs no second round trip to choose among matches:
    has_child: bool = False  # a tip has none
    has_grandchild: bool = False  # the chat went on past the next reply
    public_id: str = ""  # the conversation's
    character: str | None = None  # the character the conversation was recorded with


@dataclass(frozen=True, slots=True)
class Match:
    conversation_id: int
    anchor_id: int
    length: int  # how many of the request's chat messages, from the first, are stored
    has_user: bool  # the matched run contains a user message
    ids: tuple[int, ...] = ()  # the stored message at each matched position
    edited: tuple[int, ...] = ()  # positions whose stored message the client has edited


@dataclass(frozen=True, slots=True)
class _Step:
    length: int
    has_user: bool
    back: int | None  # the stored message at the previous position
    edited: bool = False  # the previous position's stored message (`back`) was edited by the client
    before: int | None = None  # with an edit: the stored message two positions back
    edits: int = 0  # edited messages in the run so far


def align(hashes: Sequence[str], roles: Sequence[str], candidates: Sequence[Candidate]) -> dict[int, Match]:
    """The longest stored run matching the request from its first message, per conversation.

    Dynamic programming over request positions: a candidate at position j extends a run if its parent
    matched position j-1, or (one edited message) if its parent has position j-1's role and its
    grandparent matched j-2. Duplicate texts within a chat are handled by position. Of two runs as long,
    the one with fewer edits wins, then the newest: a chat that forked right after a reply whose text
    repeats (a stub's, a greeting) must stay on its exact branch, not be read as an edit of the other
    branch's user message (which then got rewritten into a copy of this one)."""
    by_hash: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_hash.setdefault(candidate.content_hash, []).append(candidate)
    steps: list[dict[int, _Step]] = []
    best: dict[int, tuple[int, int, int]] = {}  # conversation -> (position, -edits, id) of its best run end
    for position, digest in enumerate(hashes):
        current = {c.id: s for c in by_hash.get(digest, ()) if (s := _step(c, position, roles, steps))}
        if not current and (not steps or not steps[-1]) and position > 0:
            break  # two positions in a row unmatched: the run is over
        steps.append(current)  # one unmatched position may be an edit, bridged by the next one
        for c in by_hash.get(digest, ()):
            if c.id in current:
                rank = (position, -current[c.id].edits, c.id)
                if rank > best.get(c.conversation_id, (-1, 0, 0)):
                    best[c.conversation_id] = rank
    return {conv: _trace(conv, (end[0], end[2]), steps) for conv, end in best.items()}


def _step(c: Candidate, j: int, roles: Sequence[str], steps: list[dict[int, _Step]]) -> _Step | None:
    user = c.role == "user"
    if j == 0:
        return _Step(1, user, None)
    previous = steps[j - 1]
    if c.parent_id in previous:
        before = previous[c.parent_id]
        return _Step(before.length + 1, before.has_user or user, c.parent_id, edits=before.edits)
    if c.parent_id is None or c.parent_role != roles[j - 1]:
        return None
    edited_user = c.parent_role == "user"
    if j == 1:  # the request's first message is an edit of this candidate's parent
        return _Step(2, user or edited_user, c.parent_id, edited=True, edits=1)
    if c.grandparent_id in steps[j - 2]:
        start = steps[j - 2][c.grandparent_id]
        has_user = start.has_user or user or edited_user
        edits = start.edits + 1
        return _Step(
            start.length + 2, has_user, c.parent_id, edited=True, before=c.grandparent_id, edits=edits
        )
    return None


def _trace(conversation: int, end: tuple[int, int], steps: list[dict[int, _Step]]) -> Match:
    """Walk the back-pointers from the run's end to its start: the stored id at each position."""
    position, current = end
    last = steps[position][current]
    ids: list[int] = []
    edited: list[int] = []
    while True:
        step = steps[position][current]
        ids.append(current)
        if step.edited:
            assert step.back is not None
            ids.append(step.back)
            edited.append(position - 1)
            if step.before is None:
                break
            position, current = position - 2, step.before
        elif step.back is None:
            break
        else:
            position, current = position - 1, step.back
    ids.reverse()
    return Match(conversation, end[1], last.length, last.has_user, tuple(ids), tuple(sorted(edited)))


def choose(matches: dict[int, Match], tips: set[int], grown: set[int], preferred: set[int]) -> Match | None:
    """The conversation a request belongs to, if any.

    `tips`: anchors with no children; `grown`: anchors whose chat went on past the next reply (a
    request that is only the opening of such a chat starts a new conversation); `preferred`:
    conversations recorded with the client's character."""
    accepted = [
        m
        for m in matches.values()
        if (m.has_user or m.anchor_id in tips) and not (m.length <= OPENING and m.anchor_id in grown)
    ]
    if not accepted:
        return None
    return max(accepted, key=lambda m: (m.length, m.conversation_id in preferred, m.anchor_id))


OPENING = 2  # greeting + first user line: all a new chat that opens like an old one has in common
