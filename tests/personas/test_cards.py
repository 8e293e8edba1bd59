"""SillyTavern cards: V1/V2/V3 JSON and PNG (tEXt/zTXt/iTXt), mapping onto a persona, limits, errors."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from personas.cards import PNG_SIGNATURE, CardError, card_png, parse_examples, persona_slug, read_card

MES_EXAMPLE = """<START>
{{user}}: Can we fix it?
{{char}}: Yes we can!
Grab the hammer, {{user}}.
<START>
{{char}}: *hums while working*
{{user}}: What are you building?
Bob the Builder: A house for {{char}}'s friends.
<START>
User: Hi
"""


def v2_card(**data: Any) -> dict[str, Any]:
    fields = {
        "name": "Bob the Builder",
        "description": "{{char}} is a builder who helps {{user}}.",
        "personality": "cheerful, practical",
        "scenario": "",
        "first_mes": "Hi {{user}}, I'm {{char}}!",
        "mes_example": MES_EXAMPLE,
        "creator_notes": "not part of the persona",
        "system_prompt": "{{original}}\nStay in character as {{char}}.",
        "post_history_instructions": "Keep replies short.",
        "alternate_greetings": ["Hello!"],
        "tags": ["builder"],
        "creator": "someone",
        "character_version": "1.0",
        "extensions": {},
    }
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": fields | data}


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(*chunks: bytes) -> bytes:
    """A PNG of `card_png`'s 1x1 pixel whose text chunks are replaced by `chunks`."""
    plain = card_png({"name": "x"})
    ihdr_idat = plain[8 : plain.index(b"tEXt") - 4]
    return PNG_SIGNATURE + ihdr_idat + b"".join(chunks) + chunk(b"IEND", b"")


def b64(card: dict[str, Any]) -> bytes:
    return base64.b64encode(json.dumps(card).encode())


def test_read_card_v2_json_maps_every_field() -> None:
    persona = read_card(json.dumps(v2_card()).encode(), "bob.json")
    assert persona.name == "bob-the-builder"
    assert persona.display_name == "Bob the Builder"
    assert persona.description == (
        "Bob the Builder is a builder who helps the user.\n\nPersonality: cheerful, practical"
    )
    assert persona.greeting == "Hi the user, I'm Bob the Builder!"
    assert persona.instructions == "Stay in character as Bob the Builder.\n\nKeep replies short."
    assert [(e.user, e.assistant) for e in persona.examples] == [
        ("Can we fix it?", "Yes we can!\nGrab the hammer, the user."),
        ("What are you building?", "A house for Bob the Builder's friends."),
    ]
    assert persona.traits.humor == 0.5 and persona.style == ""


def test_read_card_v1_flat_json_with_bom() -> None:
    card = {
        "name": "Zoë Ålund",
        "description": "A sailor.",
        "personality": "",
        "scenario": "At sea with {{user}}.",
        "first_mes": "",
        "mes_example": "",
        "creatorcomment": "v1",
    }
    persona = read_card(b"\xef\xbb\xbf" + json.dumps(card).encode())
    assert persona.name == "zoe-alund"
    assert persona.display_name == "Zoë Ålund"
    assert persona.description == "A sailor.\n\nScenario: At sea with the user."
    assert persona.greeting is None and persona.examples == [] and persona.instructions == ""


def test_read_card_legacy_tavern_field_names() -> None:
    card = {"char_name": "Ada", "char_persona": "<BOT> likes <USER>.", "char_greeting": "Hello."}
    persona = read_card(json.dumps(card).encode())
    assert (persona.name, persona.description, persona.greeting) == ("ada", "Ada likes the user.", "Hello.")


def test_read_card_v3_json() -> None:
    card = {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {"name": "Nova", "description": "A starship AI.", "group_only_greetings": [], "assets": []},
    }
    persona = read_card(json.dumps(card).encode())
    assert (persona.name, persona.display_name, persona.description) == ("nova", "Nova", "A starship AI.")


def test_card_png_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bob.png"
    path.write_bytes(card_png(v2_card()))
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data.endswith(chunk(b"IEND", b""))
    persona = read_card(data, path.name)
    assert persona == read_card(json.dumps(v2_card()).encode())


def test_card_png_replaces_the_card_of_an_existing_image() -> None:
    first = card_png(v2_card(name="Old"))
    second = card_png(v2_card(name="New"), first)
    assert second.count(b"tEXtchara") == 1 and second.count(b"IDAT") == 1
    assert read_card(second).display_name == "New"
    with pytest.raises(CardError, match="image is not a PNG"):
        card_png(v2_card(), b"GIF89a")


def test_read_card_prefers_ccv3_over_chara() -> None:
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": "Version Three"}}
    both = card_png(v3, card_png(v2_card(name="Version Two")), keyword="ccv3")
    assert b"tEXtchara" in both and b"tEXtccv3" in both
    assert read_card(both).name == "version-three"


def test_read_card_from_ztxt_and_itxt_chunks() -> None:
    card = v2_card(name="Compressed")
    ztxt = chunk(b"zTXt", b"chara\0\0" + zlib.compress(b64(card)))
    assert read_card(png_with(ztxt)).display_name == "Compressed"
    itxt = chunk(b"iTXt", b"chara\0\1\0en\0\0" + zlib.compress(b64(v2_card(name="Intl"))))
    assert read_card(png_with(itxt)).display_name == "Intl"
    plain_itxt = chunk(b"iTXt", b"ccv3\0\0\0\0\0" + b64(v2_card(name="Plain")))
    assert read_card(png_with(plain_itxt)).display_name == "Plain"


def test_parse_examples_pairs_turns_and_caps_at_twenty() -> None:
    text = "<START>\n" + "\n".join(f"{{{{user}}}}: q{i}\n{{{{char}}}}: a{i}" for i in range(25))
    examples = parse_examples(text, char_name="Bob")
    assert len(examples) == 20
    assert (examples[0].user, examples[0].assistant, examples[19].assistant) == ("q0", "a0", "a19")
    assert (
        parse_examples("<START>\n{{char}}: alone\n<START>\nYou: hi\nbob: hey", char_name="Bob")[0].user
        == "hi"
    )


def test_persona_slug() -> None:
    assert persona_slug("Bob the Builder") == "bob-the-builder"
    assert persona_slug("  Dr. Émile  O'Hara!! ") == "dr-emile-o-hara"
    assert persona_slug("東京", "cards/Tokyo Night.png") == "tokyo-night"
    assert persona_slug("東京") == "character"
    assert persona_slug("x" * 100) == "x" * 64


def test_read_card_truncates_long_fields() -> None:
    card = v2_card(
        name="N" * 300,
        description="d" * 30000,
        first_mes="g" * 5000,
        mes_example="<START>\n{{user}}: " + "u" * 5000 + "\n{{char}}: ok",
        system_prompt="s" * 9000,
    )
    persona = read_card(json.dumps(card).encode())
    assert len(persona.display_name or "") == 200 and len(persona.name) == 64
    assert len(persona.description) == 20000 and persona.description.endswith("…")
    assert len(persona.greeting or "") == 4000
    assert len(persona.examples[0].user) == 4000 and persona.examples[0].assistant == "ok"
    assert len(persona.instructions) == 8000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a\x01\x00", "neither a PNG nor valid JSON"),
        (b"\xff\xfe\x00\x81", "neither a PNG nor UTF-8 JSON"),
        (b"[1, 2]", "must hold a JSON object, not list"),
        (b'{"description": "no name"}', "card has no name"),
        (b'{"name": "   "}', "card has no name"),
        (b'{"spec": "chara_card_v2", "data": "oops"}', "has no 'data' object"),
        (png_with(chunk(b"tEXt", b"Comment\0hello")), "PNG has no character card"),
        (png_with(chunk(b"tEXt", b"chara\0!!not base64!!")), "not valid base64"),
        (png_with(chunk(b"tEXt", b"chara\0" + base64.b64encode(b"[]"))), "must hold a JSON object"),
        (png_with(chunk(b"tEXt", b"chara\0" + base64.b64encode(b"\xff{"))), "neither a PNG nor UTF-8 JSON"),
        (png_with(chunk(b"zTXt", b"chara\0\0not zlib")), "zTXt chunk 'chara' is corrupt"),
        (card_png({"name": "cut"})[:-6], "PNG is truncated"),
        (card_png({"name": "cut"})[:40], "PNG is truncated"),
        (PNG_SIGNATURE + b"\x00\x00", "PNG is truncated"),
    ],
)
def test_read_card_errors(data: bytes, message: str) -> None:
    with pytest.raises(CardError, match=message):
        read_card(data, "bad.png")


def test_read_card_ignores_crc_errors() -> None:
    good = card_png(v2_card())
    start = good.index(b"tEXt")
    length = struct.unpack(">I", good[start - 4 : start])[0]
    crc_at = start + 4 + length
    broken = good[:crc_at] + b"\0\0\0\0" + good[crc_at + 4 :]
    assert broken != good and read_card(broken).name == "bob-the-builder"
