"""Learning a persona from someone's messages: the LLM writes a JSON profile, Anima checks it.

Models, small ones especially, wrap JSON in prose or code fences, leave trailing commas, use single
quotes or answer on a 0-100 scale. `parse_profile` repairs those; what it cannot repair (a missing
or wrong field) goes back to the model with the validation error, a bounded number of times.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memory.budget import TokenCounter
from personas.models import TRAITS, Persona, Traits, validate_persona

log = logging.getLogger("anima.personas.learn")

Complete = Callable[[str, dict[str, Any]], Awaitable[str]]  # (prompt, JSON schema) -> model's text


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


class ProfileError(ValueError):
    """No valid profile after every try; `attempts` holds each try's problem."""

    def __init__(self, message: str, attempts: Sequence[str]) -> None:
        super().__init__(message)
        self.attempts = list(attempts)


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


def _json_object(text: str) -> str:
    """The first balanced {...} in `text` (models add prose and code fences around it)."""
    text = re.sub(r"```(?:json)?", "", text)
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the answer")
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    raise ValueError("the JSON object in the answer is not closed")


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    fixed = raw.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)  # trailing commas
    fixed = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))
    if '"' not in fixed:  # Python-style single quotes throughout
        fixed = fixed.replace("'", '"')
    fixed = re.sub(r"([:\[,{]\s*)'([^'\"\\]*)'", r'\1"\2"', fixed)  # single-quoted values among double
    fixed = re.sub(r"([{,]\s*)([A-Za-z_][\w ]*?)\s*:", r'\1"\2":', fixed)  # unquoted keys
    try:
        return json.loads(fixed)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc


def _number(value: Any) -> Any:
    """A number, or a numeric/percent string as one (percent → 0-1); anything else unchanged."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(%?)\s*", value)
        if match:
            return float(match.group(1)) / (100 if match.group(2) else 1)
    return value


def _units(values: dict[Any, Any]) -> dict[str, Any]:
    """One mapping of intensities into 0-1: the largest number tells the scale (0-1, 0-10 or 0-100)."""
    out = {str(k).strip().lower(): _number(v) for k, v in values.items()}
    numbers = [v for v in out.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    top = max(numbers, default=0)
    scale = 100 if top > 10 else 10 if top > 1 else 1
    return {
        k: round(min(1.0, max(0.0, v / scale)), 3)
        if isinstance(v, int | float) and not isinstance(v, bool)
        else v
        for k, v in out.items()
    }


def parse_profile(text: str) -> Profile:
    """The model's answer as a valid Profile, repaired where that is safe; ValueError names the problem."""
    data = _loads(_json_object(text))
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    for key in ("traits", "extra_traits"):
        if isinstance(data.get(key), dict):
            data[key] = _units(data[key])
    if isinstance(data.get("interests"), str):
        data["interests"] = [s.strip() for s in data["interests"].split(",")]
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc


async def learn_profile(complete: Complete, name: str, messages: Sequence[str], *, tries: int = 3) -> Profile:
    """Ask, check, and ask again with the error; at most `tries` model calls."""
    prompt = profile_prompt(name, messages)
    problems: list[str] = []
    ask = prompt
    for attempt in range(1, tries + 1):
        answer = await complete(ask, profile_schema())
        try:
            return parse_profile(answer)
        except ValueError as exc:
            problems.append(str(exc))
            log.info("profile try %d of %d was invalid: %s", attempt, tries, exc)
            ask = (
                f"{prompt}\n\nYour previous answer could not be used: {exc}. Answer again with one JSON"
                " object with all the keys above and nothing else."
            )
    raise ProfileError(f"no valid profile after {tries} tries: {problems[-1]}", problems)


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
