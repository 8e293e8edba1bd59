"""Relationship stages and the facts block: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memory.budget import TokenCounter
from personas.knowing import FACTS_PREAMBLE, current_stage, facts_text, stage_of
from personas.models import PersonaError, Stage, validate_persona

LADDER = [
    Stage(name="stranger"),
    Stage(name="acquaintance", min_interactions=5),
    Stage(name="friend", min_interactions=20, min_days=3, min_score=0.2, behaviour="Be warm."),
]
NOW = datetime(2026, 5, 1, tzinfo=UTC)


def test_stage_of_needs_every_threshold_and_falls_back_with_the_trend() -> None:
    assert stage_of(LADDER, interactions=0, days=0, score=0).name == "stranger"  # type: ignore[union-attr]
    assert stage_of(LADDER, interactions=30, days=1, score=0.9).name == "acquaintance"  # type: ignore[union-attr]
    assert stage_of(LADDER, interactions=30, days=5, score=0.5).name == "friend"  # type: ignore[union-attr]
    assert stage_of(LADDER, interactions=30, days=5, score=-0.3).name == "acquaintance"  # type: ignore[union-attr]
    assert stage_of([], interactions=30, days=5, score=1) is None


def test_current_stage_pinned_by_the_user_and_off_without_a_ladder() -> None:
    persona = validate_persona({"name": "mira", "relationship": [s.model_dump() for s in LADDER]})
    first = NOW - timedelta(days=10)
    pinned = current_stage(persona, pinned="Friend", interactions=0, first_at=first, now=NOW, score=0)
    assert pinned is not None and pinned.name == "friend"
    auto = current_stage(persona, pinned=None, interactions=25, first_at=first, now=NOW, score=0.3)
    assert auto is not None and auto.name == "friend"
    plain = validate_persona({"name": "plain"})
    assert current_stage(plain, pinned=None, interactions=99, first_at=first, now=NOW, score=1) is None


def test_persona_ladder_stage_names_are_distinct() -> None:
    with pytest.raises(PersonaError, match="distinct"):
        validate_persona({"name": "x", "relationship": [{"name": "a"}, {"name": "A"}]})


def test_facts_text_keeps_whole_statements_within_the_share() -> None:
    counter = TokenCounter()
    statements = [f"The user has fact number {i}." for i in range(50)]
    text, fitted = facts_text(statements, counter, 120)
    assert text is not None and text.startswith(FACTS_PREAMBLE) and 0 < fitted < 50
    assert counter.message(text) <= 120 and text.endswith(f'"The user has fact number {fitted - 1}."')
    assert facts_text(statements, counter, 10) == (None, 0)
