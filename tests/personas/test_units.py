"""Pure persona logic: card recognition and chunk picking, profile JSON repair, the store's folder rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory.budget import TokenCounter
from memory.types import Message
from personas.client_card import (
    Chunk,
    IndexedCard,
    embedding_matrix,
    pick_chunks,
    recognise_card,
    split_card,
)
from personas.folder import read_persona_file
from personas.learn import learn_profile, parse_profile, profile_schema, sample
from personas.models import TRAITS, PersonaError, TraitChange, adjusted, validate_persona
from personas.store import PersonaStore

TRAITS_JSON = ", ".join(f'"{t}": 0.5' for t in TRAITS)
VALID = f'{{"summary": "s", "traits": {{{TRAITS_JSON}}}, "communication_style": "c", "interests": []}}'


def test_recognising_a_card() -> None:
    system = [Message("system", "You are a helpful assistant.")]
    assert recognise_card(system, None) is None  # an instruction, not a card
    assert recognise_card(system, "Bob") is not None  # the client named its character
    st = [
        Message("system", "Write Bob's next reply in a fictional chat."),
        Message("system", "[Example Chat]"),
    ]
    card = recognise_card(st, None)
    assert card is not None and card.title == "Bob" and card.name == "card-bob"
    assert recognise_card(st, None, speaker="Robert").title == "Robert"  # type: ignore[union-attr]
    long = recognise_card([Message("system", "x" * 700)], None)
    assert long is not None and long.title == "character"
    other = recognise_card([Message("system", "y" * 700)], None)
    # issue 11 item 7: untitled cards were all "card-character" and overwrote each other's versions
    assert other is not None and long.name != other.name and "character" not in long.name
    with_world_info = recognise_card(
        [Message("system", "x" * 700), Message("system", "[World: it rains]")], None
    )
    assert with_world_info is not None and with_world_info.name == long.name  # world info comes and goes
    assert recognise_card([], "Bob") is None
    same = recognise_card(st, None)
    assert same is not None and same.hash == card.hash  # the same text, the same version


def test_chunks_keep_the_opening_and_the_most_similar_within_budget() -> None:
    counter = TokenCounter()
    card = recognise_card([Message("system", "\n\n".join(f"Paragraph {i}. " * 30 for i in range(6)))], "Bob")
    assert card is not None
    pieces = split_card(card, counter, max_tokens=120)
    assert len(pieces) == 6 and all(p.token_count <= 120 for p in pieces)
    chunks = [
        Chunk(p.position, p.content, p.token_count, [1.0 if j == p.position else 0.0 for j in range(6)])
        for p in pieces
    ]
    indexed = IndexedCard(card, 1, 1, tuple(chunks), 0, embedding_matrix(chunks))
    query = [0, 0, 0, 0, 1.0, 0.2]
    budget = chunks[0].token_count + chunks[4].token_count + chunks[5].token_count + 3
    picked = pick_chunks(chunks, indexed.scores(query), budget)
    assert [c.position for c in picked] == [0, 4, 5]  # in card order, chunk 4 before chunk 5
    assert [c.position for c in pick_chunks(chunks, None, budget)] == [0, 1, 2]  # no query: the start


def test_profile_repairs() -> None:
    fenced = f"Sure! Here it is:\n```json\n{VALID[:-1]}, \"mood_patterns\": 'calm',}}\n```\nHope it helps."
    assert parse_profile(fenced).mood_patterns == "calm"
    python = VALID.replace('"', "'").replace("[]", "['tea', 'maps']")
    assert parse_profile(python).interests == ["tea", "maps"]
    unquoted = VALID.replace('"summary"', "summary")
    assert parse_profile(unquoted).summary == "s"
    ten = VALID.replace('"humor": 0.5', '"humor": 8').replace('"empathy": 0.5', '"empathy": 2')
    assert parse_profile(ten).traits.humor == 0.8 and parse_profile(ten).traits.openness == 0.05
    percent = VALID.replace('"humor": 0.5', '"humor": "85%"')
    assert parse_profile(percent).traits.humor == 0.85
    with pytest.raises(ValueError, match=r"traits\.humor: Field required"):
        parse_profile(VALID.replace('"humor": 0.5, ', ""))
    with pytest.raises(ValueError, match="no JSON object"):
        parse_profile("I'd rather not.")
    assert profile_schema()["schema"]["properties"]["traits"]["required"] == list(TRAITS)


async def test_learning_stops_after_the_bounded_tries() -> None:
    calls: list[str] = []

    async def broken(prompt: str, schema: dict[str, object]) -> str:
        calls.append(prompt)
        return "{not json"

    with pytest.raises(ValueError, match="no valid profile after 2 tries"):
        await learn_profile(broken, "X", ["hi"], tries=2)
    assert len(calls) == 2 and "could not be used" in calls[1]


def test_sampling_spreads_over_the_whole_history() -> None:
    counter = TokenCounter()
    messages = [f"message number {i} about things" for i in range(1000)]
    chosen = sample(messages, counter, 300)
    assert 10 < len(chosen) < 60 and chosen[0] == messages[0]
    assert int(chosen[-1].split()[2]) > 900  # reaches the end, not just the first 300 tokens


def test_trait_changes_clamp_and_validation_names_the_field() -> None:
    persona = validate_persona({"name": "n", "traits": {"humor": 0.95}})
    assert adjusted(persona, TraitChange(trait="humor", action="increase")).traits.humor == 1.0
    assert (
        adjusted(persona, TraitChange(trait="humor", action="decrease", intensity=0.5)).traits.humor == 0.45
    )
    with pytest.raises(PersonaError) as bad:
        validate_persona({"name": "n", "extra_traits": {"Humor!": 0.5}})
    assert bad.value.field == "extra_traits"
    with pytest.raises(PersonaError) as core:
        validate_persona({"name": "n", "extra_traits": {"humor": 0.5}})
    assert "core trait" in core.value.message


async def test_folder_rules(tmp_path: Path) -> None:
    (tmp_path / "aria.yaml").write_text("description: My own Aria.\n")  # overrides the shipped example
    (tmp_path / "odd.yaml").write_text("name: other\n")
    (tmp_path / "list.yaml").write_text("- not a mapping\n")
    store = PersonaStore(tmp_path, examples=True)
    report = await store.reload()
    assert store.shared["aria"].persona.description == "My own Aria." and "sage" in report.loaded
    assert report.errors["odd.yaml"] == "odd.yaml: name: 'other' must match the file name"
    assert "mapping" in report.errors["list.yaml"]
    with pytest.raises(PersonaError):
        read_persona_file(tmp_path / "odd.yaml")
    again = await store.reload()
    assert again.changed == ()  # nothing changed: no new versions
