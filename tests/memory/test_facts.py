"""Reconciliation and ranking of facts: pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from memory.facts import (
    Candidate,
    Current,
    Ignore,
    Known,
    Open,
    Strengthen,
    normal,
    ranked,
    reconcile,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def said(
    attribute: str, value: str, *, sources: tuple[int, ...] = (1,), at: int = 0, **kw: object
) -> Candidate:
    fields: dict[str, object] = {
        "subject": "user",
        "subject_name": None,
        "kind": "location",
        "statement": f"The user's {attribute} is {value}.",
        "confidence": 0.6,
        "origin": "inference",
    } | kw
    return Candidate(attribute=attribute, value=value, sources=sources, at=T0 + timedelta(hours=at), **fields)  # type: ignore[arg-type]


def known(
    id_: int, attribute: str, value: str, *, sources: frozenset[int] = frozenset({1}), **kw: object
) -> Known:
    fields: dict[str, object] = {
        "subject": "user",
        "subject_name": None,
        "confidence": 0.6,
        "origin": "inference",
        "valid_from": T0,
    } | kw
    return Known(id=id_, attribute=attribute, value=value, sources=sources, **fields)  # type: ignore[arg-type]


def test_reconcile_new_fact_opens() -> None:
    [action] = reconcile([], [said("home city", "Paris")])
    assert isinstance(action, Open) and action.supersedes is None and action.ref < 0


def test_reconcile_repeat_strengthens_one_row_with_more_sources() -> None:
    [action] = reconcile([known(7, "home city", "Paris")], [said("Home_City", "paris.", sources=(2,))])
    assert action == Strengthen(7, 0.84, (2,), "inference")


def test_reconcile_same_message_twice_changes_nothing() -> None:
    [action] = reconcile([known(7, "home city", "Paris")], [said("home city", "Paris", sources=(1,))])
    assert isinstance(action, Ignore)


def test_reconcile_change_supersedes_the_old_version() -> None:
    [action] = reconcile([known(7, "home city", "Paris")], [said("home city", "Berlin", sources=(3,), at=5)])
    assert isinstance(action, Open) and action.supersedes == 7


def test_reconcile_change_within_one_batch_keeps_both_versions() -> None:
    first, second = reconcile(
        [], [said("home city", "Paris"), said("home city", "Berlin", sources=(2,), at=1)]
    )
    assert isinstance(first, Open) and isinstance(second, Open) and second.supersedes == first.ref


def test_reconcile_negation_closes_the_fact() -> None:
    [action] = reconcile([known(4, "dog", "Rex")], [said("dog", "none", sources=(9,), at=3)])
    assert isinstance(action, Open) and action.supersedes == 4


def test_reconcile_inference_does_not_override_a_later_correction() -> None:
    corrected = known(
        5, "name", "Anna", origin="correction", confidence=1.0, valid_from=T0 + timedelta(hours=2)
    )
    [action] = reconcile([corrected], [said("name", "Anne", sources=(3,), at=1)])
    assert isinstance(action, Ignore)


def test_reconcile_inference_said_after_a_correction_changes_it() -> None:
    corrected = known(5, "home city", "Rome", origin="correction", confidence=1.0)
    [action] = reconcile([corrected], [said("home city", "Oslo", sources=(3,), at=4)])
    assert isinstance(action, Open) and action.supersedes == 5


def test_reconcile_correction_overrides_an_inference_and_upgrades_a_repeat() -> None:
    changed = reconcile(
        [known(5, "name", "Anne")], [said("name", "Anna", sources=(), origin="correction", at=24)]
    )
    assert isinstance(changed[0], Open) and changed[0].supersedes == 5
    upgraded = reconcile([known(5, "name", "Anna")], [said("name", "Anna", sources=(), origin="correction")])
    assert upgraded == [Strengthen(5, 1.0, (), "correction")]


def test_reconcile_third_parties_have_their_own_slots() -> None:
    actions = reconcile(
        [known(1, "job", "nurse", subject="other", subject_name="Anna")],
        [said("job", "teacher", subject="other", subject_name="Ben"), said("job", "pilot")],
    )
    assert [a.supersedes for a in actions if isinstance(a, Open)] == [None, None]


def test_normal_ignores_case_punctuation_and_articles() -> None:
    assert normal("  The Golden-Retriever!! ") == normal("golden-retriever")


def fact(id_: int, statement: str, *, kind: str = "other", confidence: float = 0.6, **kw: object) -> Current:
    fields: dict[str, object] = {
        "subject": "user",
        "subject_name": None,
        "sources": 1,
        "persona_id": None,
        "conversation_id": None,
    } | kw
    return Current(id=id_, kind=kind, statement=statement, confidence=confidence, **fields)  # type: ignore[arg-type]


def test_ranked_puts_important_first_and_states_each_once() -> None:
    facts = [
        fact(1, "The user likes tea.", kind="preference"),
        fact(2, "The user is called Anna.", kind="identity", confidence=0.9),
        fact(3, "the user likes tea", kind="preference"),
        fact(4, "The user mentioned rain.", kind="other"),
    ]
    assert [f.id for f in ranked(facts, persona_id=None, conversation_id=None)] == [2, 1, 4]


def test_ranked_prefers_facts_of_this_conversation_and_is_stable() -> None:
    facts = [
        fact(1, "A", conversation_id=9),
        fact(2, "B", conversation_id=8),
        fact(3, "C", conversation_id=9),
    ]
    assert [f.id for f in ranked(facts, persona_id=None, conversation_id=9)] == [1, 3, 2]
    assert [f.id for f in ranked(facts[::-1], persona_id=None, conversation_id=9)] == [1, 3, 2]
