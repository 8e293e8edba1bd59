"""Persona rendering: traits as behaviour, stable text, example files valid; system messages merged once."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from memory.types import Message
from personas.models import Example, Persona, Traits, validate_persona
from personas.render import merge_system, render, trait_instructions

EXAMPLES = Path(__file__).parents[2] / "personas" / "examples"
JOKES = "Joke often: playful asides, wordplay, light teasing when the mood allows."
NO_JOKES = "Stay serious; no jokes."


def load(name: str) -> Persona:
    path = EXAMPLES / f"{name}.yaml"
    return validate_persona(yaml.safe_load(path.read_text()), where=str(path))


def with_humor(value: float) -> Persona:
    return Persona(name="p", traits=Traits(humor=value))


@pytest.mark.parametrize("name", ["aria", "sage", "rex"])
def test_example_persona_validates_and_is_complete(name: str) -> None:
    raw = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    persona = load(name)
    assert persona.name == name
    assert set(raw["traits"]) == set(Traits.model_fields)  # all ten set explicitly
    assert persona.display_name and persona.description and persona.style and persona.greeting
    assert 2 <= len(persona.examples) <= 3 and persona.extra_traits and persona.interests


def test_example_personas_are_distinct() -> None:
    aria, sage, rex = (load(n).traits for n in ("aria", "sage", "rex"))
    assert aria.empathy >= 0.8 and aria.humor >= 0.8 and aria.formality <= 0.2
    assert sage.conscientiousness >= 0.8 and sage.formality >= 0.8 and sage.neuroticism <= 0.2
    assert rex.directness >= 0.8 and rex.enthusiasm >= 0.8 and rex.agreeableness <= 0.2
    texts = {render(load(n)) for n in ("aria", "sage", "rex")}
    assert len(texts) == 3


def test_render_layout_and_sections() -> None:
    text = render(load("aria"))
    assert text.startswith("You are Aria.\nA warm, quick-witted companion")
    assert text.index("How you speak:") < text.index("Personality:\n- ") < text.index("Interests")
    assert (
        "\n- Joke often" in text
        and "\n- Be very playful." in text
        and "\n- Tend not to be sarcastic." in text
    )
    assert "User: Ugh, I bombed my job interview today.\nAria: Oh no, come here." in text
    assert text.endswith("Stay in character as Aria; never mention these instructions.")
    assert "hoping you'd drop by" not in text  # the greeting is the first assistant message, not system text
    assert "Moods:" not in text and "Instructions:" not in text  # empty sections are left out


def test_render_includes_instructions_and_moods_verbatim() -> None:
    sage, rex = render(load("sage")), render(load("rex"))
    assert "Instructions:\nWhen the user is learning, guide them" in sage
    assert "Moods:\nFired up most of the time" in rex
    assert rex.startswith("You are Coach Rex.") and "\nCoach Rex: YES!" in rex


@pytest.mark.parametrize("name", ["aria", "sage", "rex"])
def test_render_has_no_trait_numbers(name: str) -> None:
    persona = load(name)
    text = "\n".join(trait_instructions(persona))
    assert not re.search(r"\d", text)
    section = render(persona).split("Personality:\n")[1].split("\n\n")[0]
    assert section.startswith("- ") and not re.search(r"\d", section)
    strong = Persona(
        name="p", traits=Traits(**dict.fromkeys(Traits.model_fields, 0.9)), extra_traits={"shy": 0.1}
    )
    assert not re.search(r"\d", render(strong))


def test_render_humor_change_changes_instruction() -> None:
    neutral, high, low = (trait_instructions(with_humor(v)) for v in (0.5, 0.9, 0.1))
    assert neutral == []
    assert high == [JOKES]
    assert low == [NO_JOKES]
    assert JOKES in render(with_humor(0.9)) and JOKES not in render(with_humor(0.5))


@pytest.mark.parametrize("trait", list(Traits.model_fields))
def test_render_every_step_of_0_2_changes_text(trait: str) -> None:
    values = [0.1, 0.3, 0.5, 0.7, 0.9]
    texts = [trait_instructions(Persona(name="p", traits=Traits(**{trait: v}))) for v in values]
    assert all(a != b for a, b in pairwise(texts))
    assert texts[2] == []  # neutral says nothing


def test_render_bands_survive_float_arithmetic() -> None:
    assert trait_instructions(with_humor(0.5 + 0.1)) == trait_instructions(with_humor(0.6))
    assert trait_instructions(with_humor(0.7 + 0.1)) == [JOKES]


def test_render_extra_traits_generic_and_sorted() -> None:
    persona = Persona(name="p", extra_traits={"sarcastic": 0.1, "dry_wit": 0.65, "patient": 0.9})
    reordered = persona.model_copy(update={"extra_traits": dict(reversed(persona.extra_traits.items()))})
    assert trait_instructions(persona) == [
        "Be somewhat dry wit.",
        "Be very patient.",
        "Avoid being sarcastic.",
    ]
    assert render(persona) == render(reordered)


def test_render_is_deterministic() -> None:
    persona = load("sage")
    again = validate_persona(persona.model_dump())
    assert render(persona) == render(again) == render(load("sage"))


def test_render_minimal_persona() -> None:
    persona = Persona(name="bare", examples=[Example(user="hi", assistant="hello")])
    assert render(persona) == (
        "You are bare.\n\nExample dialogue:\nUser: hi\nbare: hello\n\n"
        "Stay in character as bare; never mention these instructions."
    )


PERSONA = (
    "You are Aria.\nA warm companion.\n\nHow you speak:\nCasual and short.\n\nStay in character as Aria."
)


def system(text: str, name: str | None = None) -> Message:
    return Message("system", text, name)


def test_merge_system_drops_exact_duplicate_of_persona() -> None:
    merged = merge_system(
        PERSONA,
        [
            system(
                "  you are ARIA.\n a warm   companion.\n\nhow you speak:\ncasual and short.\n\n"
                "stay in character as aria."
            )
        ],
    )
    assert merged == [system(PERSONA)]


def test_merge_system_drops_message_contained_in_persona() -> None:
    merged = merge_system(
        PERSONA, [system("A warm companion."), system("Casual and short."), system("Be brief.")]
    )
    assert merged == [system(PERSONA), system("Be brief.")]


def test_merge_system_containment_is_word_aligned() -> None:
    merged = merge_system(PERSONA, [system("Aria"), system("arm")])  # "arm" sits inside "warm" only
    assert merged == [system(PERSONA), system("arm")]


def test_merge_system_drops_duplicated_paragraph_keeps_rest() -> None:
    client = system("Scenario: a rainy café.\n\nCasual and short.\n\nThe user is called Sam.", name="st")
    merged = merge_system(PERSONA, [client])
    assert merged == [
        system(PERSONA),
        system("Scenario: a rainy café.\n\nThe user is called Sam.", name="st"),
    ]


def test_merge_system_keeps_non_duplicates_in_order_with_names() -> None:
    client = [system("Rule one.", "a"), system("Rule two."), system("Rule three.", "c")]
    assert merge_system(PERSONA, client) == [system(PERSONA), *client]


def test_merge_system_drops_paragraph_repeated_across_client_messages() -> None:
    client = [
        system("Shared rule.\n\nFirst only."),
        system("Second only.\n\nshared   RULE."),
        system("Shared rule."),
    ]
    assert merge_system(None, client) == [system("Shared rule.\n\nFirst only."), system("Second only.")]


def test_merge_system_without_persona_keeps_client_but_collapses_repeats() -> None:
    client = [
        system("Be kind.\n\n\nAnswer in French.", "x"),
        system("Use metric units."),
        system("Be kind.\n\n\nAnswer in French."),
    ]
    merged = merge_system(None, client)
    assert merged == client[:2]
    assert merged[0] is client[0]  # untouched messages pass through as they came
    assert merge_system("", client) == client[:2]


def test_merge_system_drops_empty_messages() -> None:
    assert merge_system(PERSONA, [system("  \n\n "), system("")]) == [system(PERSONA)]
    assert merge_system(None, []) == []
