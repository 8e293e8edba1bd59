"""Learning a persona from someone's messages: the LLM writes a JSON profile, Anima checks it.

The repair, validation and bounded retries are memory/structured.py's (shared with fact extraction);
this module owns the profile's prompt, schema and the profile → persona step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memory.budget import TokenCounter
from memory.structured import Complete, StructuredError, ask, first_error, parse_object, units
from personas.models import TRAITS, Persona, Traits, validate_persona


class ProfileTraits(BaseModel):
    model_config = ConfigDict(extra="ignore")

    openness: float
    conscientiousness: float
    extraversion: float
    agreeableness: float
    neuroticism: float
    humor: float
    empathy: float
    formality: float
    directness: float
    enthusiasm: float


class Profile(BaseModel):
    """What the model is asked for; numbers are repaired into 0-1 before this validates them."""

    model_config = ConfigDict(extra="ignore")

    summary: str = Field(min_length=1, max_length=4000)
    traits: ProfileTraits
    extra_traits: dict[str, float] = Field(default_factory=dict)
    communication_style: str = Field(min_length=1, max_length=4000)
    interests: list[str] = Field(default_factory=list)
    mood_patterns: str = Field(default="", max_length=2000)

    @field_validator("interests")
    @classmethod
    def _short_interests(cls, value: list[str]) -> list[str]:
        return [v.strip()[:100] for v in value if isinstance(v, str) and v.strip()][:30]


class ProfileError(StructuredError):
    """No valid profile after every try; `attempts` holds each try's problem."""


def profile_schema() -> dict[str, Any]:
    """The JSON schema sent as `response_format` (backends with grammars then produce the shape)."""
    number = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "name": "persona_profile",
        "schema": {
            "type": "object",
            "properties": {
                "summary": {"type": "string"},
                "traits": {
                    "type": "object",
                    "properties": {t: number for t in TRAITS},
                    "required": list(TRAITS),
                },
                "extra_traits": {"type": "object", "additionalProperties": number},
                "communication_style": {"type": "string"},
                "interests": {"type": "array", "items": {"type": "string"}},
                "mood_patterns": {"type": "string"},
            },
            "required": ["summary", "traits", "communication_style", "interests", "mood_patterns"],
        },
    }


def sample(messages: Sequence[str], counter: TokenCounter, max_tokens: int) -> list[str]:
    """An even spread of messages across the whole history within `max_tokens` (not just the start)."""
    texts = [m.strip() for m in messages if m.strip()]
    if not texts:
        return []
    total = sum(counter.count(t) + 2 for t in texts)
    step = max(1.0, total / max_tokens)
    chosen, spent, i = [], 0, 0.0
    while int(i) < len(texts):
        text = texts[int(i)][:1000]
        cost = counter.count(text) + 2
        if spent + cost > max_tokens:
            break
        chosen.append(text)
        spent += cost
        i += step
    return chosen


def profile_prompt(name: str, messages: Sequence[str]) -> str:
    lines = "\n".join(f"- {json.dumps(m, ensure_ascii=False)}" for m in messages)
    traits = ", ".join(TRAITS)
    return (
        f"Below are messages written by {name}. Study how they write and what they care about.\n\n"
        f"{lines}\n\n"
        "Describe this person's personality and communication style as a JSON object with exactly these"
        ' keys: "summary" (2-3 sentences about who they seem to be), "traits" (an object with a number'
        f' from 0 to 1 for each of: {traits}; 0.5 means average), "extra_traits" (an object of up to 5 more'
        ' traits you notice, lowercase names, numbers from 0 to 1), "communication_style" (how they write:'
        ' length, tone, punctuation, emoji, vocabulary), "interests" (a list of short topics) and'
        ' "mood_patterns" (their typical moods and what shifts them). Answer with the JSON object only.'
    )


def parse_profile(text: str) -> Profile:
    """The model's answer as a valid Profile, repaired where that is safe; ValueError names the problem."""
    data = parse_object(text)
    for key in ("traits", "extra_traits"):
        if isinstance(data.get(key), dict):
            data[key] = units(data[key])
    if isinstance(data.get("interests"), str):
        data["interests"] = [s.strip() for s in data["interests"].split(",")]
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(first_error(exc)) from exc


async def learn_profile(complete: Complete, name: str, messages: Sequence[str], *, tries: int = 3) -> Profile:
    """Ask, check, and ask again with the error; at most `tries` model calls."""
    try:
        return await ask(
            complete,
            profile_prompt(name, messages),
            profile_schema(),
            parse_profile,
            tries=tries,
            what="profile",
        )
    except StructuredError as exc:
        raise ProfileError(str(exc), exc.attempts) from exc


def profile_persona(name: str, profile: Profile, base: Persona | None = None) -> Persona:
    """A persona from a profile; an existing persona keeps its name, greeting and examples."""
    extras = {}
    for key, value in profile.extra_traits.items():
        clean = re.sub(r"[^a-z0-9_ -]", "", key.lower()).strip()[:40]
        if clean and clean[0].isalpha() and clean not in TRAITS and isinstance(value, float):
            extras[clean] = value
    data = (base.model_dump() if base else {"name": name}) | {
        "description": profile.summary,
        "style": profile.communication_style,
        "traits": Traits(**profile.traits.model_dump()).model_dump(),
        "extra_traits": dict(list(extras.items())[:20]),
        "interests": profile.interests,
        "mood_patterns": profile.mood_patterns,
    }
    return validate_persona(data)
