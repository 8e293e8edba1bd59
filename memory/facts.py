"""What a fact is and how a new one meets the known ones (pure functions, no I/O).

A fact fills a *slot*: (subject, the third party's name, attribute), e.g. (user, -, "home city") or
(other, "Anna", "job"). Meeting the current facts, a candidate either repeats one (same slot, same
value: one row, more sources, more confidence), changes one (same slot, new value: the old version is
closed and kept, the new one opens), or is new. A user's correction wins over an inference: an
inference never replaces a correction unless it was said after the correction was made.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

Subject = Literal["user", "character", "other"]
Origin = Literal["inference", "correction"]
SUBJECTS: tuple[Subject, ...] = ("user", "character", "other")
KINDS = (
    "identity", "relationship", "health", "work", "location", "plan", "preference", "event", "possession",
    "other",
)  # fmt: skip
KIND_WEIGHT = {
    "identity": 1.0, "relationship": 0.9, "health": 0.9, "work": 0.8, "location": 0.8, "plan": 0.8,
    "preference": 0.6, "event": 0.6, "possession": 0.6, "other": 0.4,
}  # fmt: skip
SUBJECT_WEIGHT = {"user": 1.0, "other": 0.8, "character": 0.7}
MAX_INFERRED_CONFIDENCE = 0.99


@dataclass(frozen=True, slots=True)
class Candidate:
    """A fact as extraction (or the user, through the API) states it, before reconciliation."""

    subject: Subject
    subject_name: str | None
    kind: str
    attribute: str
    value: str
    statement: str
    confidence: float
    origin: Origin
    sources: tuple[int, ...]  # supporting message ids (none for facts stated through the API)
    at: datetime  # when it became true: the newest source message's time, or when the user said so


@dataclass(frozen=True, slots=True)
class Known:
    """A current (open) fact, as reconciliation needs it."""

    id: int
    subject: str
    subject_name: str | None
    attribute: str
    value: str
    confidence: float
    origin: str
    sources: frozenset[int]
    valid_from: datetime


@dataclass(frozen=True, slots=True)
class Strengthen:
    fact_id: int
    confidence: float
    add_sources: tuple[int, ...]
    origin: Origin


@dataclass(frozen=True, slots=True)
class Open:
    """A new fact; `supersedes` (if any) is closed at `candidate.at` and points to the new one."""

    ref: int  # negative: stands for the new row's id until it is inserted
    candidate: Candidate
    supersedes: int | None


@dataclass(frozen=True, slots=True)
class Ignore:
    candidate: Candidate
    reason: str
    fact_id: int | None = None  # the known fact it repeats, if any


Action = Strengthen | Open | Ignore


def normal(text: str) -> str:
    """Comparable form: case, accents' composition, punctuation, articles and spacing do not matter."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("_", " ")
    text = re.sub(r"[^\w\s'-]", " ", text)
    text = re.sub(r"^(the|a|an|my|his|her|their)\s+", "", " ".join(text.split()))
    return text.strip(" '-")


def slot(subject: str, subject_name: str | None, attribute: str) -> tuple[str, str, str]:
    return subject, normal(subject_name or "") if subject == "other" else "", normal(attribute)


def same_value(a: str, b: str) -> bool:
    return normal(a) == normal(b)


def merged_confidence(a: float, b: float) -> float:
    """Two independent supports: noisy-or (0.6 and 0.6 make 0.84), below certainty for inferences."""
    return round(min(MAX_INFERRED_CONFIDENCE, 1 - (1 - a) * (1 - b)), 3)


def reconcile(current: Sequence[Known], candidates: Sequence[Candidate]) -> list[Action]:
    """The actions that bring `current` up to date with `candidates`, applied in order (each sees the
    effect of the ones before it: "I live in Paris… I moved to Berlin" in one batch keeps both)."""
    state = {k.id: k for k in current}
    actions: list[Action] = []
    for candidate in candidates:
        action = _meet(list(state.values()), candidate, -len(actions) - 1)
        actions.append(action)
        if isinstance(action, Strengthen):
            old = state[action.fact_id]
            state[old.id] = replace(
                old,
                confidence=action.confidence,
                origin=action.origin,
                sources=old.sources | set(action.add_sources),
            )
        elif isinstance(action, Open):
            if action.supersedes is not None:
                del state[action.supersedes]
            state[action.ref] = _known(action.ref, candidate)
    return actions


def _meet(current: list[Known], c: Candidate, ref: int) -> Action:
    key = slot(c.subject, c.subject_name, c.attribute)
    in_slot = sorted((k for k in current if slot(k.subject, k.subject_name, k.attribute) == key), key=_age)
    same = next((k for k in in_slot if same_value(k.value, c.value)), None)
    if same is not None:
        return _repeat(same, c)
    if not in_slot:
        return Open(ref, c, None)
    latest = in_slot[-1]
    if latest.origin == "correction" and c.origin == "inference" and c.at <= latest.valid_from:
        return Ignore(c, "the user corrected this slot after it was said")
    return Open(ref, c, latest.id)


def _age(k: Known) -> tuple[datetime, int]:
    return k.valid_from, abs(k.id)


def _repeat(known: Known, c: Candidate) -> Action:
    new_sources = tuple(s for s in c.sources if s not in known.sources)
    upgrade = c.origin == "correction" and known.origin != "correction"
    if not new_sources and not upgrade:
        return Ignore(c, "already known from the same messages", known.id)
    if upgrade:
        return Strengthen(known.id, 1.0, new_sources, "correction")
    confidence = 1.0 if known.origin == "correction" else merged_confidence(known.confidence, c.confidence)
    return Strengthen(
        known.id, confidence, new_sources, "correction" if known.origin == "correction" else "inference"
    )


def _known(ref: int, c: Candidate) -> Known:
    return Known(
        ref,
        c.subject,
        c.subject_name,
        c.attribute,
        c.value,
        c.confidence,
        c.origin,
        frozenset(c.sources),
        c.at,
    )


@dataclass(frozen=True, slots=True)
class Current:
    """A current fact as the prompt ranks it."""

    id: int
    subject: str
    subject_name: str | None
    kind: str
    statement: str
    confidence: float
    sources: int
    persona_id: int | None
    conversation_id: int | None


def importance(fact: Current, *, persona_id: int | None, conversation_id: int | None) -> float:
    """How much a fact deserves a place in the prompt: its kind and subject, how sure and how often
    it was said, and whether it was learned in this conversation or with this persona. Nothing
    per-message: the ranking stays the same from turn to turn, so the prompt prefix stays cacheable."""
    score = KIND_WEIGHT.get(fact.kind, 0.4) * SUBJECT_WEIGHT.get(fact.subject, 0.7) * fact.confidence
    score *= 1 + 0.25 * math.log1p(fact.sources)
    if conversation_id is not None and fact.conversation_id == conversation_id:
        score *= 1.2
    elif persona_id is not None and fact.persona_id == persona_id:
        score *= 1.1
    return score


def ranked(facts: Sequence[Current], *, persona_id: int | None, conversation_id: int | None) -> list[Current]:
    """Most important first, each statement once (ties: the older fact first, for a stable order)."""
    seen: set[str] = set()
    out = []
    order = sorted(
        facts,
        key=lambda f: (-importance(f, persona_id=persona_id, conversation_id=conversation_id), f.id),
    )
    for fact in order:
        key = normal(fact.statement)
        if key and key not in seen:
            seen.add(key)
            out.append(fact)
    return out
