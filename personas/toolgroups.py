"""Tool calls and their results under the budget: kept or cut together, a huge result cut by tokens.

An assistant message that calls tools and the `tool` messages answering it are one unit: a backend
rejects a tool result whose call is missing, and OpenAI rejects a call without its results. A `tool`
message belongs with the message before it, so history only ever starts at a message that is not a
tool result. A tool result that does not fit is shortened by tokens, with a marker saying how much was
kept, rather than dropped: the model sees that it called the tool and the start of what came back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from memory.budget import MESSAGE_OVERHEAD, TokenCounter
from memory.types import Message, StoredMessage

CUT_MARKER = "…[tool result cut: {kept} of {total} tokens]"
MIN_RESULT = 16  # tokens a cut result keeps at least: less tells the model nothing
SLACK = 2  # re-encoding a cut head with its marker can merge or split a token at the seam


def starts(messages: Sequence[Message | StoredMessage], *, first: bool = False) -> list[bool]:
    """Where kept history may begin: at each message that is not a tool result (its call would be left
    out). `first`: the client's own messages may begin where the client began them."""
    allowed = [m.role != "tool" for m in messages]
    if first and allowed:
        allowed[0] = True
    return allowed


def oldest_within(costs: Sequence[int], budget: int, allowed: Sequence[bool]) -> int:
    """The oldest index history can start at when the newest are kept first within `budget`, at an
    allowed start only (a whole group fits or none of it does)."""
    total, index, start = 0, len(costs), len(costs)
    while index > 0 and total + costs[index - 1] <= budget:
        index -= 1
        total += costs[index]
        if allowed[index]:
            start = index
    return start


def previous_start(allowed: Sequence[bool], start: int) -> int | None:
    """The start of the group just older than `start` (None: nothing older can start a group)."""
    return next((i for i in range(start - 1, -1, -1) if allowed[i]), None)


def with_newest(body: Sequence[Message], newest: Message | None) -> int:
    """How many of the body's last messages belong with the newest message: a newest tool result
    brings the results before it and the call they answer (they are the newest turn, never cut)."""
    if newest is None or newest.role != "tool":
        return 0
    index = len(body)
    while index > 0 and body[index - 1].role == "tool":
        index -= 1
    if index > 0 and body[index - 1].tool_calls:
        index -= 1
    return len(body) - index


def message_cost(message: Message | StoredMessage, counter: TokenCounter) -> int:
    """Tokens a message takes in a prompt, counted now: its text, its tool calls and its framing."""
    return counter.of(message.content, message.tool_calls) + MESSAGE_OVERHEAD


def cut_results(group: Sequence[Message], room: int, counter: TokenCounter) -> list[Message] | None:
    """`group` within `room` tokens, its longest tool results cut to one common length (as long as
    fits), each with a marker; unchanged if it fits; None if even results of MIN_RESULT tokens don't."""
    if sum(message_cost(m, counter) for m in group) <= room:
        return list(group)
    sizes = [counter.count(m.content) if m.role == "tool" else -1 for m in group]
    rest = sum(message_cost(m, counter) - max(size, 0) for m, size in zip(group, sizes, strict=True))
    if not any(size > MIN_RESULT for size in sizes):
        return None

    def need(cap: int) -> int:
        return rest + sum(
            size if size <= cap else cap + counter.count(_marker(cap, size)) + SLACK
            for size in sizes
            if size >= 0
        )

    low, high = MIN_RESULT, max(sizes)  # need(low) fits, need(high) does not
    if need(low) > room:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if need(middle) <= room else (low, middle)
    return [_cut(m, low, size, counter) if size > low else m for m, size in zip(group, sizes, strict=True)]


def _cut(message: Message, cap: int, size: int, counter: TokenCounter) -> Message:
    return replace(message, content=counter.head(message.content, cap) + _marker(cap, size))


def _marker(kept: int, total: int) -> str:
    return CUT_MARKER.format(kept=kept, total=total)
