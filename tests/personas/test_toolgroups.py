"""Tool calls under the budget: calls and schemas are counted, a call and its results are kept or cut
together (the client's history and memory's earlier history alike), and a tool result too big to fit
is cut by tokens with a marker instead of being dropped."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from memory.budget import MESSAGE_OVERHEAD, Budget, BudgetExceeded, Shares, TokenCounter
from memory.types import Message, StoredMessage, ToolCall
from personas.prompt import assemble_prompt, cost
from personas.prompt_parts import PromptParts
from personas.toolgroups import cut_results

NOW = datetime(2026, 12, 2, tzinfo=UTC)
WORDS = " ".join(f"w{i}" for i in range(4000))  # ~8000 tokens of tool output


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def call(cid: str, arguments: str = '{"city": "Paris"}') -> ToolCall:
    return ToolCall(cid, "get_weather", arguments)


def asked(*ids: str, arguments: str = '{"city": "Paris"}') -> Message:
    return Message("assistant", "", tool_calls=tuple(call(i, arguments) for i in ids))


def result(cid: str, text: str = "21 C") -> Message:
    return Message("tool", text, tool_call_id=cid)


def paired(messages: Sequence[Message]) -> bool:
    """Every tool result follows its call (only results between them), every call is answered."""
    open_calls: set[str] = set()
    for message in messages:
        if message.role == "tool":
            if message.tool_call_id not in open_calls:
                return False
            open_calls.discard(message.tool_call_id)
            continue
        if open_calls:
            return False  # something came between a call and its results
        open_calls = {c.id for c in message.tool_calls}
    return not open_calls


def parts(body: list[Message], newest: Message, **extra: object) -> PromptParts:
    return PromptParts(system=[], body=body, newest=newest, trailing=[], **extra)  # type: ignore[arg-type]


def size(messages: Sequence[Message], counter: TokenCounter) -> int:
    return sum(cost(m, counter) for m in messages)


def test_tool_calls_and_tool_schemas_take_budget(counter: TokenCounter) -> None:
    big = json.dumps({"text": WORDS[:6000]})  # ~1500 tokens of arguments
    assert cost(asked("a", arguments=big), counter) > 1000  # a call-only message is not free
    stored = StoredMessage(1, "assistant", "", None, 0, NOW, tool_calls=(call("a", big),))
    assert cost(stored, counter) > 1000  # a row counted before calls were: recounted
    history = [Message("user", "write it"), asked("a", arguments=big), result("a", "done")]
    budget = Budget.for_model(2048, 200, Shares())
    prompt = assemble_prompt(parts(history, Message("user", "thanks")), budget, counter)
    assert size(prompt.messages, counter) <= budget.prompt
    tooled = Budget.for_model(4096, 200, Shares(), tools=2500)
    assert tooled.prompt == 4096 - 200 - 2500
    prompt = assemble_prompt(parts(history, Message("user", "thanks")), tooled, counter)
    assert [m.role for m in prompt.messages] == ["user"]  # the schemas leave no room for the call
    with pytest.raises(BudgetExceeded, match="tool definitions"):
        assemble_prompt(
            parts([], Message("user", "hi")),
            Budget.for_model(1024, 200, Shares(), tools=900),
            counter,
        )


def test_a_call_and_its_results_are_kept_or_cut_together(counter: TokenCounter) -> None:
    history = [
        Message("user", "weather in Paris and Rome? " * 40),
        asked("a", "b"),
        result("a", "21 C " * 30),
        result("b", "25 C " * 30),
        Message("assistant", "Warm in both."),
    ]
    need = size(history[2:], counter)
    for window in range(need - 40, need + 120, 4):  # every cut point around the group
        budget = Budget(window=window + 8, reply=0, shares=Shares(history=1.0, recall=0.0))
        prompt = assemble_prompt(parts(history, Message("user", "and Oslo?")), budget, counter)
        assert paired(prompt.messages), window
        assert prompt.messages[-1] == Message("user", "and Oslo?")


def test_memorys_earlier_history_keeps_groups_whole(counter: TokenCounter) -> None:
    rows = [
        result("z", "orphan: its call was beyond the stored history's cap"),
        Message("user", "weather?"),
        asked("a", "b"),
        result("a", "21 C " * 30),
        result("b", "25 C " * 30),
    ]
    earlier = [
        StoredMessage(
            i + 1,
            m.role,
            m.content,
            None,
            counter.count(m.content),
            NOW,
            parent_id=i or None,
            depth=i,
            tool_calls=m.tool_calls,
            tool_call_id=m.tool_call_id,
        )
        for i, m in enumerate(rows)
    ]
    newest = Message("user", "and Oslo?")
    for window in range(60, 300, 6):
        budget = Budget(window=window, reply=0, shares=Shares(history=1.0, recall=0.0))
        prompt = assemble_prompt(parts([], newest, earlier=earlier), budget, counter)
        assert paired(prompt.messages), window
    roomy = assemble_prompt(
        parts([], newest, earlier=earlier), Budget.for_model(8192, 100, Shares()), counter
    )
    assert [m.role for m in roomy.messages] == ["user", "assistant", "tool", "tool", "user"]  # no orphan


def test_the_newest_turns_huge_tool_result_is_cut_by_tokens(counter: TokenCounter) -> None:
    system = Message("system", "You are a helpful assistant.")
    body = [Message("user", "summarise the logs"), asked("a", "b"), result("a", WORDS)]
    newest = result("b", "small log")
    budget = Budget.for_model(2048, 200, Shares())
    request = PromptParts([system], body, newest, [], volatile=["The user sounds curious."])
    prompt = assemble_prompt(request, budget, counter)
    assert size(prompt.messages, counter) <= budget.prompt
    assert paired(prompt.messages)  # the emotion block is not put between the call and its results
    tools = [m for m in prompt.messages if m.role == "tool"]
    assert [m.tool_call_id for m in tools] == ["a", "b"]
    assert tools[0].content.startswith("w0 w1 w2")
    assert tools[0].content.endswith(f"of {counter.count(WORDS)} tokens]")
    assert tools[1] == newest
    huge_newest = PromptParts([system], [*body[:2], result("a", "x")], result("b", WORDS), [])
    prompt = assemble_prompt(huge_newest, budget, counter)
    assert "[tool result cut:" in prompt.messages[-1].content and paired(prompt.messages)


def test_a_huge_result_at_the_cut_is_shortened_not_dropped(counter: TokenCounter) -> None:
    history = [
        Message("user", "read the file"),
        asked("a"),
        result("a", WORDS),
        Message("assistant", "It is a list of words."),
        Message("user", "how many?"),
        Message("assistant", "Four thousand."),
    ]
    budget = Budget(window=1200, reply=0, shares=Shares(history=1.0, recall=0.0))
    prompt = assemble_prompt(parts(history, Message("user", "thanks")), budget, counter)
    assert paired(prompt.messages) and size(prompt.messages, counter) <= budget.prompt
    assert [m.role for m in prompt.messages] == [
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    cut = prompt.messages[1].content
    assert cut.startswith("w0 w1") and "[tool result cut:" in cut and prompt.client_cut == 1


def test_cut_results_fits_the_room_exactly_enough(counter: TokenCounter) -> None:
    group = [asked("a", "b"), result("a", WORDS), result("b", WORDS[:400])]
    for room in (200, 500, 1000, 3000):
        cut = cut_results(group, room, counter)
        assert cut is not None and size(cut, counter) <= room
        assert size(cut, counter) > room - 40  # nearly all of the room is used
    assert cut_results(group, 20, counter) is None  # not even a stub of each result fits
    assert cut_results(group, 10**6, counter) == group
    assert cost(result("a", ""), counter) == MESSAGE_OVERHEAD
