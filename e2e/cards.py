"""SillyTavern character cards (PNG with a `chara` tEXt chunk holding a V2 card) and group files,
written straight into SillyTavern's data folder before it starts."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Card:
    name: str
    greeting: str
    description: str

    @property
    def avatar(self) -> str:
        return f"{self.name}.png"

    def v2(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "personality": "calm, precise",
            "scenario": f"{{{{user}}}} meets {self.name} in a quiet library.",
            "first_mes": self.greeting,
            "mes_example": "",
        }
        data = fields | {
            "creator_notes": "",
            "system_prompt": "",
            "post_history_instructions": "",
            "alternate_greetings": [],
            "tags": [],
            "creator": "anima-e2e",
            "character_version": "1",
            "extensions": {"talkativeness": "0.5", "fav": False, "world": ""},
        }
        return fields | {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def card_png(card: Card, size: int = 64) -> bytes:
    """A plain grey square carrying the card, as SillyTavern's own exporter writes it."""
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80\x80\x80" * size for _ in range(size))
    chara = base64.b64encode(json.dumps(card.v2()).encode())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", b"chara\x00" + chara)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def write_card(characters: Path, card: Card) -> None:
    characters.mkdir(parents=True, exist_ok=True)
    (characters / card.avatar).write_bytes(card_png(card))


def write_group(groups: Path, group_id: str, name: str, members: list[Card]) -> None:
    """A group whose members all answer each user message, in list order (activation "List")."""
    groups.mkdir(parents=True, exist_ok=True)
    chat_id = f"{name} - e2e"
    group = {
        "id": group_id,
        "name": name,
        "members": [m.avatar for m in members],
        "avatar_url": "",
        "allow_self_responses": False,
        "activation_strategy": 1,
        "generation_mode": 0,
        "disabled_members": [],
        "chat_metadata": {},
        "fav": False,
        "chat_id": chat_id,
        "chats": [chat_id],
        "auto_mode_delay": 5,
        "hideMutedSprites": False,
    }
    (groups / f"{group_id}.json").write_text(json.dumps(group))
