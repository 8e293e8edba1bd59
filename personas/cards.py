"""SillyTavern character cards (JSON V1/V2/V3, or embedded in a PNG) read into a `Persona`.

Cards in the wild are large and loosely typed, so reading is lenient (over-long fields are cut, odd
types ignored) and every failure is one `CardError` saying what is wrong with the file.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import json
import re
import struct
import unicodedata
import zlib
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from typing import Any

from personas.models import Example, Persona, PersonaError, validate_persona

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("ccv3", "chara")  # preference order: V3 cards also carry a V2 copy under `chara`
MAX_EXAMPLES = 20
_V1_ALIASES = {  # old TavernAI/Pygmalion field names
    "name": "char_name",
    "description": "char_persona",
    "scenario": "world_scenario",
    "first_mes": "char_greeting",
    "mes_example": "example_dialogue",
}
_CHAR = re.compile(r"\{\{\s*char\s*\}\}|<BOT>", re.IGNORECASE)
_USER = re.compile(r"\{\{\s*user\s*\}\}|<USER>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)  # "the default system prompt" in ST
_START = re.compile(r"<START>", re.IGNORECASE)


class CardError(ValueError):
    """A file that is not a readable character card."""


def read_card(data: bytes, filename: str | None = None) -> Persona:
    """The persona described by a card file (PNG with an embedded card, or card JSON)."""
    card = _png_card(data) if data.startswith(PNG_SIGNATURE) else _json_object(data, "card file")
    return card_persona(card, filename=filename)


def card_persona(card: Mapping[str, Any], *, filename: str | None = None) -> Persona:
    """Map a decoded card (any spec version) onto a persona; fields are cut to the model's limits."""
    fields = _card_fields(card)
    title = _text(fields, "name")
    if not title:
        raise CardError("card has no name")
    display_name = _fit(title, "display_name")
    macros = functools.partial(_macros, char_name=display_name)
    labelled = {"": "description", "Personality: ": "personality", "Scenario: ": "scenario"}
    parts = {label: macros(_text(fields, key)) for label, key in labelled.items()}
    description = "\n\n".join(f"{label}{text}" for label, text in parts.items() if text)
    instructions = "\n\n".join(
        text
        for key in ("system_prompt", "post_history_instructions")
        if (text := macros(_ORIGINAL.sub("", _text(fields, key))))
    )
    data = {
        "name": persona_slug(title, filename),
        "display_name": display_name,
        "description": _fit(description, "description"),
        "greeting": _fit(macros(_text(fields, "first_mes")), "greeting") or None,
        "examples": parse_examples(_text(fields, "mes_example"), char_name=display_name),
        "instructions": _fit(instructions, "instructions"),
    }
    try:
        return validate_persona(data, where=filename or "card")
    except PersonaError as exc:
        raise CardError(str(exc)) from exc


def slug(text: str) -> str:
    """A persona id from a name ("Bob the Builder" -> "bob-the-builder"); empty if nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:64].rstrip("-")


def persona_slug(name: str, filename: str | None = None) -> str:
    """A persona id from a card name, else the file stem, else "character"."""
    for candidate in (name, PurePath(filename).stem if filename else ""):
        if found := slug(candidate):
            return found
    return "character"


def parse_examples(text: str, *, char_name: str = "") -> list[Example]:
    """Example exchanges from `mes_example`: `<START>` blocks of `{{user}}:`/`{{char}}:` lines, paired."""
    names = {"{{user}}": "user", "<user>": "user", "user": "user", "you": "user", "{{char}}": "char"}
    names |= {"<bot>": "char", char_name.casefold(): "char"} if char_name else {"<bot>": "char"}
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    speaker = re.compile(rf"^\s*({alternatives})\s*:(.*)$", re.IGNORECASE)
    examples: list[Example] = []
    for block in _START.split(text):
        for (who, said), (next_who, reply) in itertools.pairwise(_turns(block, speaker, names)):
            user, assistant = _macros(said, char_name), _macros(reply, char_name)
            if who == "user" and next_who == "char" and user and assistant and len(examples) < MAX_EXAMPLES:
                examples.append(
                    Example(user=_fit(user, "user", Example), assistant=_fit(assistant, "assistant", Example))
                )
    return examples


def card_png(card: Mapping[str, Any], image: bytes | None = None, *, keyword: str = "chara") -> bytes:
    """A PNG carrying `card` as base64 JSON in a tEXt chunk, the way SillyTavern exports cards.

    `image` (a PNG) keeps its pixels and loses any earlier chunk with the same keyword; without it the
    picture is one transparent pixel.
    """
    payload = base64.b64encode(json.dumps(card, ensure_ascii=False).encode()).decode("ascii")
    text_chunk = _chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + payload.encode("ascii"))
    if image is None:
        header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
        pixels = zlib.compress(b"\x00" + b"\x00\x00\x00\x00")  # filter byte + one pixel
        return (
            PNG_SIGNATURE
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", pixels)
            + text_chunk
            + _chunk(b"IEND", b"")
        )
    if not image.startswith(PNG_SIGNATURE):
        raise CardError("image is not a PNG")
    kept = [
        _chunk(kind, body)
        for kind, body in _chunks(image)
        if kind != b"IEND" and _keyword(kind, body) != keyword
    ]
    return PNG_SIGNATURE + b"".join(kept) + text_chunk + _chunk(b"IEND", b"")


def _card_fields(card: Mapping[str, Any]) -> Mapping[str, Any]:
    data = card.get("data")
    if str(card.get("spec", "")).startswith("chara_card_") or isinstance(data, Mapping):
        if not isinstance(data, Mapping):
            raise CardError(f"{card.get('spec')} card has no 'data' object")
        return {**{k: v for k, v in card.items() if k != "data"}, **data}  # V2 fields win over V1 copies
    return card


def _macros(text: str, char_name: str) -> str:
    """SillyTavern's `{{char}}`/`{{user}}` (and legacy `<BOT>`/`<USER>`) spelled out."""
    return _USER.sub("the user", _CHAR.sub(lambda _: char_name, text)).strip()


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if value is None or value == "":
        value = fields.get(_V1_ALIASES.get(key, ""))
    return str(value).strip() if isinstance(value, str | int | float) else ""


def _fit(text: str, field: str, model: type[Persona] | type[Example] = Persona) -> str:
    """`text` cut to the field's `max_length` (cards in the wild exceed the model's limits)."""
    limit = next((m.max_length for m in model.model_fields[field].metadata if hasattr(m, "max_length")), None)
    text = text.strip()
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"


def _turns(block: str, speaker: re.Pattern[str], names: Mapping[str, str]) -> list[tuple[str, str]]:
    """(speaker, text) turns of one example block; continuation lines join the previous turn."""
    turns: list[tuple[str, str]] = []
    for line in block.splitlines():
        match = speaker.match(line)
        if match:
            who, said = names[match[1].casefold()], match[2].strip()
            if turns and turns[-1][0] == who:  # two lines in a row from one speaker are one message
                turns[-1] = (who, f"{turns[-1][1]}\n{said}".strip())
            else:
                turns.append((who, said))
        elif turns and line.strip():
            turns[-1] = (turns[-1][0], f"{turns[-1][1]}\n{line.strip()}".strip())
    return turns


def _png_card(data: bytes) -> dict[str, Any]:
    found = {_keyword(kind, body): (kind, body) for kind, body in _chunks(data)}
    keyword = next((k for k in CARD_KEYWORDS if k in found), None)
    if keyword is None:
        raise CardError("PNG has no character card (no 'chara' or 'ccv3' text chunk)")
    try:
        raw = base64.b64decode("".join(_chunk_text(*found[keyword]).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CardError(f"PNG '{keyword}' chunk is not valid base64: {exc}") from exc
    return _json_object(raw, f"PNG '{keyword}' chunk")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise CardError(f"{what} is neither a PNG nor UTF-8 JSON") from exc
    except json.JSONDecodeError as exc:
        raise CardError(f"{what} is neither a PNG nor valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CardError(f"{what} must hold a JSON object, not {type(value).__name__}")
    return value


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each PNG chunk up to IEND; CRCs are not checked, truncation is an error."""
    if not data.startswith(PNG_SIGNATURE):
        raise CardError("not a PNG file")
    offset = len(PNG_SIGNATURE)
    while offset < len(data):
        if offset + 8 > len(data):
            raise CardError("PNG is truncated (incomplete chunk header)")
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 8 + length + 4
        if end > len(data):
            raise CardError(f"PNG is truncated ({kind.decode('latin-1')!r} chunk cut short)")
        yield kind, data[offset + 8 : offset + 8 + length]
        if kind == b"IEND":
            return
        offset = end


def _keyword(kind: bytes, body: bytes) -> str:
    """The keyword of a tEXt/zTXt/iTXt chunk, "" for other chunks."""
    if kind not in (b"tEXt", b"zTXt", b"iTXt") or b"\0" not in body:
        return ""
    return body.split(b"\0", 1)[0].decode("latin-1")


def _chunk_text(kind: bytes, body: bytes) -> str:
    """The text of a tEXt/zTXt/iTXt chunk (PNG spec 11.3.4), decompressed and decoded."""
    rest = body.split(b"\0", 1)[1]
    try:
        if kind == b"tEXt":
            return rest.decode("latin-1")
        if kind == b"zTXt":
            return zlib.decompress(rest[1:]).decode("latin-1")  # after the compression method byte
        compressed, rest = rest[:1] == b"\x01", rest[2:]  # compression flag and method
        _language, _translated, text = rest.split(b"\0", 2)
        return (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise CardError(f"PNG {kind.decode()} chunk {_keyword(kind, body)!r} is corrupt: {exc}") from exc


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
