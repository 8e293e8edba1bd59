"""What a persona is: a validated pydantic model, the same for YAML files, the API, cards and learning.

A persona is stored as immutable versions; `Persona` is one version's content. Errors name the field
(`traits.humor: Input should be less than or equal to 1`), so a bad file or request says what to fix.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memory.text import unstorable

BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
STYLE_TRAITS = ("humor", "empathy", "formality", "directness", "enthusiasm")
TRAITS = (*BIG_FIVE, *STYLE_TRAITS)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # usable in `name@route` aliases and URLs
TRAIT_STEP = 0.1  # increase/decrease without an intensity

Intensity = Annotated[float, Field(ge=0.0, le=1.0)]
Source = Literal["file", "api", "card", "learned"]
Action = Literal["increase", "decrease", "set"]


class Traits(BaseModel):
    """Intensities 0-1; 0.5 is neutral (no instruction is rendered for a trait near 0.5)."""

    model_config = ConfigDict(extra="forbid")

    openness: Intensity = 0.5
    conscientiousness: Intensity = 0.5
    extraversion: Intensity = 0.5
    agreeableness: Intensity = 0.5
    neuroticism: Intensity = 0.5
    humor: Intensity = 0.5
    empathy: Intensity = 0.5
    formality: Intensity = 0.5
    directness: Intensity = 0.5
    enthusiasm: Intensity = 0.5


class Example(BaseModel):
    """One exchange of example dialogue: how the persona answers a typical message."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user: str = Field(min_length=1, max_length=4000)
    assistant: str = Field(min_length=1, max_length=4000)


class Stage(BaseModel):
    """One rung of a persona's relationship ladder: reached once every threshold is met (issue 17)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=64, description="e.g. stranger, acquaintance, friend")
    behaviour: str = Field(default="", max_length=1000, description="how the persona acts at this stage")
    min_interactions: int = Field(default=0, ge=0, description="user messages exchanged with this persona")
    min_days: float = Field(default=0, ge=0, description="days since the first interaction")
    min_score: float = Field(default=-1.0, ge=-1, le=1, description="emotional trend of the user's messages")


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=NAME_PATTERN, description="id used in headers, aliases and URLs")
    display_name: str | None = Field(default=None, max_length=200, description="how the persona calls itself")
    description: str = Field(default="", max_length=20000, description="who the persona is")
    style: str = Field(default="", max_length=4000, description="how it speaks")
    greeting: str | None = Field(default=None, max_length=4000)
    examples: list[Example] = Field(default_factory=list, max_length=20)
    traits: Traits = Field(default_factory=Traits)
    extra_traits: dict[str, Intensity] = Field(default_factory=dict, max_length=20)
    interests: list[str] = Field(default_factory=list, max_length=30)
    mood_patterns: str = Field(default="", max_length=2000, description="typical moods (learned profiles)")
    instructions: str = Field(default="", max_length=8000, description="extra rules, rendered verbatim")
    emotion: bool = Field(default=True, description="run the emotion step for this persona's chats")
    relationship: list[Stage] = Field(
        default_factory=list, max_length=12, description="relationship ladder, lowest stage first; none: off"
    )

    @field_validator("relationship")
    @classmethod
    def _distinct_stages(cls, value: list[Stage]) -> list[Stage]:
        names = [s.name.casefold() for s in value]
        if len(set(names)) != len(names):
            raise ValueError("relationship stage names must be distinct")
        return value

    @field_validator("extra_traits")
    @classmethod
    def _extra_trait_names(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            if not re.fullmatch(r"[a-z][a-z0-9_ -]{0,39}", key):
                raise ValueError(f"extra trait name {key!r}: lowercase words, at most 40 characters")
            if key in TRAITS:
                raise ValueError(f"extra trait {key!r} is a core trait: set it under traits")
        return value

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def trait(self, name: str) -> float | None:
        if name in TRAITS:
            return float(getattr(self.traits, name))
        return self.extra_traits.get(name)


class TraitChange(BaseModel):
    """`PATCH /v1/personas/{name}` body: one trait up, down or to a value."""

    model_config = ConfigDict(extra="forbid")

    trait: str = Field(min_length=1, max_length=40)
    action: Action
    intensity: Intensity | None = Field(default=None, description="step (increase/decrease) or value (set)")


def adjusted(persona: Persona, change: TraitChange) -> Persona:
    """A copy with one trait changed, clamped to 0-1; `set` may add a new extra trait."""
    current = persona.trait(change.trait)
    if change.action == "set":
        if change.intensity is None:
            raise PersonaError("intensity is required for action 'set'", field="intensity")
        value = change.intensity
    else:
        if current is None:
            raise PersonaError(f"persona '{persona.name}' has no trait '{change.trait}'", field="trait")
        step = TRAIT_STEP if change.intensity is None else change.intensity
        value = current + step if change.action == "increase" else current - step
    value = round(min(1.0, max(0.0, value)), 3)
    if change.trait in TRAITS:
        return persona.model_copy(update={"traits": persona.traits.model_copy(update={change.trait: value})})
    return validate_persona(
        {**persona.model_dump(), "extra_traits": {**persona.extra_traits, change.trait: value}}
    )


class PersonaError(ValueError):
    """A persona that does not validate; `field` is the dotted path of the first bad field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


def validate_persona(data: object, *, where: str = "") -> Persona:
    """`Persona.model_validate` with one readable error naming the field (and the file, if any)."""
    problem = unstorable(data)
    if problem:
        raise PersonaError(f"{where}: {problem}" if where else problem, field=problem.split(":")[0])
    try:
        return Persona.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "persona"
        prefix = f"{where}: " if where else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PersonaError(f"{prefix}{path}: {first['msg']}{more}", field=path) from exc
