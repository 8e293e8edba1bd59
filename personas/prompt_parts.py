"""The parts a prompt is assembled from: the client's messages split where the layout needs them
(leading system, history, newest, trailing system) and what memory offers. Apart from personas/prompt.py,
which decides what of these parts fits the budget and in what order they go."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from memory.types import CHAT_ROLES, Memory, Message, StoredMessage, Summary, Thread


@dataclass(frozen=True, slots=True)
class PromptParts:
    system: Sequence[Message]  # leading system messages (the persona merged with the client's)
    body: Sequence[Message]  # the client's messages from its first chat message to the newest, verbatim
    newest: Message | None  # the client's last chat message: always fits (None: no chat message)
    trailing: Sequence[Message]  # system messages after the last chat message (post-history)
    body_ids: Sequence[int | None] = ()  # the stored copy of each body message, if any
    earlier: Sequence[StoredMessage | Message] = ()  # stored history older than the body, oldest first
    memories: Sequence[Memory] = ()
    summaries: Sequence[Summary] = ()
    volatile: Sequence[str] = field(default=())  # extra per-turn context (emotion)
    thread: Thread | None = None  # where the request sits in memory (cut accounting)
    facts: Sequence[str] = field(default=())  # issue 17: what the persona knows (stable; after the system)


def parts_for(
    messages: Sequence[Message],
    thread: Thread | None = None,
    *,
    earlier: Sequence[StoredMessage | Message] | None = None,
    memories: Sequence[Memory] = (),
    summaries: Sequence[Summary] = (),
    volatile: Sequence[str] = (),
) -> PromptParts:
    """Split the client's messages (leading system, body, newest, trailing) and add what memory offers.
    `earlier` defaults to the thread's stored history older than the client's first message."""
    chat_at = [i for i, m in enumerate(messages) if m.role in CHAT_ROLES]
    lead = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    last = chat_at[-1] if chat_at else -1
    body = list(messages[lead:last]) if last >= 0 else []
    matched = list(thread.matched) if thread is not None else []
    ids: list[int | None] = []
    for message in body:
        ids.append(matched.pop(0) if message.role in CHAT_ROLES and matched else None)
    return PromptParts(
        system=messages[:lead],
        body=body,
        newest=messages[last] if last >= 0 else None,
        trailing=messages[last + 1 :] if last >= 0 else messages[lead:],
        body_ids=ids,
        earlier=earlier if earlier is not None else (thread.earlier if thread is not None else ()),
        memories=memories,
        summaries=summaries,
        volatile=volatile,
        thread=thread,
    )
