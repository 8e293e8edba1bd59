"""Memory off: the prompt is assembled with an upper bound of the token counts when that fits, and
with the exact counts otherwise, so the client's messages are never cut because of the bound."""

from __future__ import annotations

import pytest

from memory.budget import AtMost, Budget, Shares, TokenCounter
from memory.types import Message, ToolCall
from personas.prompt import assemble_prompt
from personas.prompt_parts import parts_for
from proxy.turn import TurnBuilder
from proxy.turn_records import TurnRequest

TEXTS = ("hello", "café au lait, s'il vous plaît", "🙂🙃 emoji 🤖", "日本語のテキスト", "word " * 500, "")


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def test_the_bound_is_never_below_the_count(counter: TokenCounter) -> None:
    bound = AtMost(counter)
    for text in TEXTS:
        assert bound.count(text) >= counter.count(text)
        assert bound.message(text) >= counter.message(text)
    calls = (ToolCall("call_1", "lookup", '{"q": "日本"}'), ToolCall("call_2", "émoji", "{}"))
    assert bound.of("", calls) >= counter.of("", calls)


def chat(turns: int) -> tuple[Message, ...]:
    lines = [Message("system", "You are Aria, a ship's navigator. " * 20)]
    for i in range(turns):
        lines += [Message("user", f"word {i} " * 40), Message("assistant", f"reply {i} " * 40)]
    return (*lines, Message("user", "and now?"))


async def plain(counter: TokenCounter, messages: tuple[Message, ...], window: int) -> tuple[Message, ...]:
    builder = TurnBuilder(counter, Shares())
    budget = Budget.for_model(window, 100, Shares())
    return (await builder.build(TurnRequest(None, messages, budget, "m"))).prompt.messages


def exact(counter: TokenCounter, messages: tuple[Message, ...], window: int) -> tuple[Message, ...]:
    budget = Budget.for_model(window, 100, Shares())
    return assemble_prompt(parts_for(messages), budget, counter).messages


async def test_a_chat_that_fits_only_by_the_exact_count_is_sent_whole(counter: TokenCounter) -> None:
    messages = chat(12)
    tokens = sum(counter.message(m.content) for m in messages)
    bytes_ = sum(AtMost(counter).message(m.content) for m in messages)
    assert bytes_ > 2 * tokens  # "word 1 word 1 ...": about 2.5 bytes per token
    for window in (bytes_ + 200, tokens + 150):  # fits by the bound; fits only when counted
        assert await plain(counter, messages, window) == messages == exact(counter, messages, window)


async def test_a_chat_over_the_budget_is_cut_as_the_exact_count_cuts_it(counter: TokenCounter) -> None:
    messages = chat(12)
    window = sum(counter.message(m.content) for m in messages) // 2
    sent = await plain(counter, messages, window)
    assert sent == exact(counter, messages, window)
    assert len(sent) < len(messages) and sent[0] == messages[0] and sent[-1] == messages[-1]
