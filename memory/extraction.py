"""Fact extraction: the prompt, the JSON schema, and checking an answer into candidates.

An answer is used whole or not at all: any item that does not validate (unknown subject, a cited
message outside the batch, a user fact cited from the assistant's words...) makes the answer invalid,
and `structured.ask` sends the error back for another try. Items that validate but are not grounded
(none of their words appear in the message they cite: a small model's invention) are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memory.facts import KINDS, Candidate, Known, normal, slot
from memory.structured import first_error, is_number, number, parse_object, unit

NOTHING = {"none", "no", "yes", "true", "false", "nothing", "nobody", "never", "not anymore"}
_WORD = re.compile(r"\w+")
_SUBJECT_WORDS = {"user": "user", "me": "user", "i": "user", "the user": "user", "assistant": "character"}


@dataclass(frozen=True, slots=True)
class Line:
    """One message shown to the extractor; `number` is what the model cites (0: context only)."""

    number: int
    message_id: int
    role: str
    speaker: str
    content: str
    created_at: datetime


class Item(BaseModel):
    """One fact as the model states it."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    about: str = Field(pattern="^(user|character|other)$")
    name: str | None = Field(default=None, max_length=100)
    kind: str
    attribute: str = Field(min_length=1, max_length=80)
    value: str = Field(min_length=1, max_length=200)
    statement: str = Field(min_length=3, max_length=300)
    confidence: float = Field(ge=0, le=1)
    message: int = Field(ge=1)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        value = value.strip().lower()
        return value if value in KINDS else "other"


class Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    facts: list[Item] = Field(max_length=40)


def schema() -> dict[str, Any]:
    """The JSON schema sent as `response_format` (backends with grammars then produce the shape)."""
    item = {
        "type": "object",
        "properties": {
            "about": {"type": "string", "enum": ["user", "character", "other"]},
            "name": {"type": ["string", "null"]},
            "kind": {"type": "string", "enum": list(KINDS)},
            "attribute": {"type": "string"},
            "value": {"type": "string"},
            "statement": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "message": {"type": "integer", "minimum": 1},
        },
        "required": ["about", "kind", "attribute", "value", "statement", "confidence", "message"],
    }
    return {
        "name": "facts",
        "schema": {
            "type": "object",
            "properties": {"facts": {"type": "array", "items": item}},
            "required": ["facts"],
        },
    }


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def prompt(lines: Sequence[Line], known: Sequence[Known], character: str) -> str:
    facts = "\n".join(
        f"- {k.subject}{f' ({k.subject_name})' if k.subject_name else ''} | {k.attribute} = {k.value}"
        for k in known
    )
    chat = "\n".join(
        f"{f'[{n.number}]' if n.number else '(earlier)'} {n.speaker}: {_quoted(n.content)}" for n in lines
    )
    return (
        f"Read this conversation between a user and {character} and list the facts it establishes that"
        " stay true beyond it: names, people in the user's life, work, places, plans, health, preferences,"
        " important events.\n\n"
        "Facts already known (reuse their attribute names when a fact repeats or changes):\n"
        f"{facts or '- none'}\n\n"
        f"Conversation (lines marked (earlier) are context; cite only numbered ones):\n{chat}\n\n"
        'Answer with one JSON object {"facts": [...]}; each fact has "about" ("user", "character" for'
        f' {character}, or "other" for another person, with their "name"), "kind" (one of:'
        f' {", ".join(KINDS)}), "attribute" (what the value is about, one value at a time: "name", "home'
        ' city", "job", "dog\'s name", "opinion of sushi"), "value" (a few words), "statement" (one'
        ' sentence in the third person, e.g. "The user lives in Berlin."), "confidence" (0 to 1) and'
        ' "message" (the number of the message that says it). When something stops being true, give its'
        ' attribute with the value "none". Leave out small talk, greetings and anything hypothetical.'
        ' With nothing to keep, answer {"facts": []}. Answer with the JSON object only.'
    )


def parse(text: str, lines: Sequence[Line], character: str, known: Sequence[Known] = ()) -> list[Candidate]:
    """The model's answer as grounded candidates; ValueError (sent back to the model) if it is invalid.
    `known` (the current facts) grounds an ending: "I don't have Rex anymore" names the old value."""
    data = parse_object(text)
    items = data.get("facts")
    if isinstance(items, list):
        data["facts"] = [_repaired(i, character) if isinstance(i, dict) else i for i in items]
    try:
        answer = Answer.model_validate(data)
    except ValidationError as exc:
        raise ValueError(first_error(exc)) from exc
    by_number = {line.number: line for line in lines if line.number}
    out = []
    for i, item in enumerate(answer.facts):
        line = by_number.get(item.message)
        if line is None:
            raise ValueError(f"facts.{i}.message: {item.message} is not a numbered message")
        _check_speaker(i, item, line)
        before = [k.value for k in known if slot(k.subject, k.subject_name, k.attribute) == _slot(item)]
        if grounded(item, line.content, before):
            out.append(_candidate(item, line))
    return out


def _repaired(item: dict[str, Any], character: str) -> dict[str, Any]:
    """Safe repairs: subject spellings, a character named by name, percent/0-10 confidences, "[3]"."""
    item = dict(item)
    about = str(item.get("about", item.get("subject", ""))).strip().lower()
    if about == character.strip().lower():
        about = "character"
    item["about"] = _SUBJECT_WORDS.get(about, about)
    confidence = number(item.get("confidence", 0.7))
    item["confidence"] = unit(float(confidence)) if is_number(confidence) else confidence
    message = item.get("message")
    if isinstance(message, str) and re.fullmatch(r"\s*\[?\d+\]?\s*", message):
        item["message"] = int(message.strip(" []"))
    elif isinstance(message, list) and message:
        item["message"] = message[0]
    return item


def _check_speaker(i: int, item: Item, line: Line) -> None:
    if item.about == "user" and line.role != "user":
        raise ValueError(f"facts.{i}: a fact about the user must cite one of the user's messages")
    if item.about == "character" and line.role != "assistant":
        raise ValueError(f"facts.{i}: a fact about the character must cite one of the character's messages")
    if item.about == "other" and not (item.name or "").strip():
        raise ValueError(f"facts.{i}.name: a fact about another person needs their name")


def words(text: str) -> set[str]:
    return {w[:5] for w in _WORD.findall(normal(text)) if len(w) >= 3 or w.isdigit()}


def _slot(item: Item) -> tuple[str, str, str]:
    return slot(item.about, item.name, item.attribute)


def grounded(item: Item, message: str, before: Sequence[str] = ()) -> bool:
    """Some of the fact's own words appear in the message it cites (a value like "none" is checked
    through its attribute or the value it ends): what a model invented is not stored."""
    said = words(message)
    value = normal(item.value)
    if value in NOTHING or not words(value):
        return bool(said & (words(item.attribute) | {w for old in before for w in words(old)}))
    return bool(words(value) & said)


def _candidate(item: Item, line: Line) -> Candidate:
    subject = item.about
    return Candidate(
        subject=subject,  # type: ignore[arg-type]
        subject_name=(item.name or None) if subject == "other" else None,
        kind=item.kind,
        attribute=item.attribute,
        value=item.value,
        statement=item.statement,
        confidence=min(item.confidence, 0.99),
        origin="inference",
        sources=(line.message_id,),
        at=line.created_at,
    )
