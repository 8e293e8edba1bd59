"""Checking an extraction answer: repairs, validation (all or nothing) and grounding; pure functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from memory.extraction import Line, parse, prompt, schema
from memory.facts import Known

AT = datetime(2026, 2, 1, tzinfo=UTC)
LINES = [
    Line(0, 10, "user", "user", "Earlier I said hello.", AT),
    Line(1, 11, "user", "user", "I don't have Rex anymore, sadly. My sister Ana is a vet.", AT),
    Line(2, 12, "assistant", "Mira", "I grew up in Oslo, you know.", AT),
]


def item(**kw: Any) -> dict[str, Any]:
    return {
        "about": "user", "kind": "location", "attribute": "home city", "value": "Oslo",
        "statement": "The user lives in Oslo.", "confidence": 0.8, "message": 1,
    } | kw  # fmt: skip


def answer(*items: dict[str, Any]) -> str:
    return json.dumps({"facts": list(items)})


def test_parse_repairs_subject_spelling_percent_confidence_and_cited_number() -> None:
    text = (
        "Here:\n```json\n"
        + answer(
            item(
                about="Mira",
                attribute="home town",
                value="Oslo",
                statement="Mira grew up in Oslo.",
                confidence="90%",
                message="[2]",
            ),
        )
        + "\n```"
    )
    [fact] = parse(text, LINES, "Mira")
    assert (fact.subject, fact.confidence, fact.sources, fact.at) == ("character", 0.9, (12,), AT)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (item(message=0), "message"),  # context lines cannot be cited
        (item(message=7), "7 is not a numbered message"),
        (item(message=2), "must cite one of the user's messages"),
        (item(about="other", name=None, message=1), "needs their name"),
        (item(about="martian"), "about"),
        (item(statement=""), "statement"),
    ],
)
def test_parse_one_invalid_item_invalidates_the_answer(bad: dict[str, Any], problem: str) -> None:
    good = item(
        about="other", name="Ana", kind="work", attribute="job", value="vet", statement="Ana is a vet."
    )
    with pytest.raises(ValueError, match=problem):
        parse(answer(good, bad), LINES, "Mira")


def test_parse_drops_facts_the_cited_message_does_not_support() -> None:
    invented = item(value="Madrid", statement="The user lives in Madrid.")
    real = item(
        about="other", name="Ana", kind="work", attribute="job", value="vet", statement="Ana is a vet."
    )
    assert [f.value for f in parse(answer(invented, real), LINES, "Mira")] == ["vet"]


def test_parse_an_ending_is_grounded_by_the_value_it_ends() -> None:
    ending = item(kind="possession", attribute="pet", value="none", statement="The user no longer has a dog.")
    assert parse(answer(ending), LINES, "Mira") == []  # neither "pet" nor anything known is in the message
    rex = Known(1, "user", None, "pet", "Rex", 0.8, "inference", frozenset({5}), AT)
    [fact] = parse(answer(ending), LINES, "Mira", [rex])
    assert fact.value == "none"


def test_prompt_numbers_only_the_unread_messages_and_lists_what_is_known() -> None:
    rex = Known(1, "user", None, "dog's name", "Rex", 0.8, "inference", frozenset({5}), AT)
    text = prompt(LINES, [rex], "Mira")
    assert (
        '(earlier) user: "Earlier I said hello."' in text
        and '[2] Mira: "I grew up in Oslo, you know."' in text
    )
    assert "- user | dog's name = Rex" in text
    assert schema()["schema"]["required"] == ["facts"]
