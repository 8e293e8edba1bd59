"""Working memory: the newest messages of each conversation's current branch, in RAM.

A cache of the database, never the only copy: an entry is used only when it ends exactly at the
anchor that recognition found in Postgres, so a conversation served by two workers stays correct
(the other worker's writes move the anchor and the stale entry is simply reloaded).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from memory.types import StoredMessage


class WorkingMemory:
    def __init__(self, *, turns: int, conversations: int) -> None:
        self.turns = turns
        self._capacity = conversations
        self._entries: OrderedDict[int, tuple[StoredMessage, ...]] = OrderedDict()
        # the branch right above an entry's tail (up to `turns` more messages): a trimmed chat's earlier
        # history, which recognition offers every turn, without walking Postgres for it each time
        self._above: dict[int, tuple[StoredMessage, ...]] = {}

    def get(self, conversation_id: int, anchor_id: int | None) -> tuple[StoredMessage, ...] | None:
        """The cached branch ending at `anchor_id`, or None if absent or stale."""
        entry = self._entries.get(conversation_id)
        if entry is None or not entry or entry[-1].id != anchor_id:
            return None
        self._entries.move_to_end(conversation_id)
        return entry

    def latest(self, conversation_id: int) -> tuple[StoredMessage, ...]:
        """The cached branch whatever its anchor (answering without the database)."""
        return self._entries.get(conversation_id, ())

    def put(
        self, conversation_id: int, messages: Sequence[StoredMessage], above: Sequence[StoredMessage] = ()
    ) -> None:
        """The branch's tail (`messages`, its newest `turns` kept), and what lies right above it, if known
        (`above`, with what the tail leaves out)."""
        tail = tuple(messages[-self.turns :])
        self._entries[conversation_id] = tail
        self._entries.move_to_end(conversation_id)
        self._above.pop(conversation_id, None)
        self.keep_above(conversation_id, (*above, *messages[: -self.turns]))
        while len(self._entries) > self._capacity:
            self._above.pop(self._entries.popitem(last=False)[0], None)

    def above(self, conversation_id: int) -> tuple[StoredMessage, ...]:
        """The branch right above the cached tail (oldest first), as far as it is known here."""
        return self._above.get(conversation_id, ())

    def keep_above(self, conversation_id: int, messages: Sequence[StoredMessage]) -> None:
        """Keep `messages` (oldest first) as the branch right above the tail, if they end there."""
        tail = self._entries.get(conversation_id)
        if tail and messages and messages[-1].id == tail[0].parent_id:
            self._above[conversation_id] = tuple(messages[-self.turns :])

    def extend(self, conversation_id: int, anchor_id: int | None, added: Sequence[StoredMessage]) -> None:
        """Append a stored turn if the entry still ends at the turn's anchor; otherwise drop it."""
        entry = self._entries.get(conversation_id)
        if anchor_id is None:  # a new conversation: the turn is its whole branch
            self.put(conversation_id, added)
        elif entry and entry[-1].id == anchor_id:
            self.put(conversation_id, (*entry, *added), self.above(conversation_id))
        else:
            self.forget(conversation_id)

    def forget(self, conversation_id: int) -> None:
        self._entries.pop(conversation_id, None)
        self._above.pop(conversation_id, None)

    def __len__(self) -> int:
        return len(self._entries)
