"""The scenarios: what a user does in SillyTavern, one named flow each. A flow returns SillyTavern's
chat as shown at the end, once per chat it used (in the order the chats were made)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2e.browser import Tavern
from e2e.cards import Card
from tests.servers.openai_stub import StubState

Chat = list[dict[str, Any]]


@dataclass
class Ctx:
    card: Card
    members: list[Card]
    group_id: str | None
    backend: StubState


@dataclass(frozen=True)
class Flow:
    name: str
    what: str
    run: Callable[[Tavern, Ctx], list[Chat]]
    conversations: int = 1  # how many Anima conversations the flow must create
    group: bool = False


def line(ctx: Ctx, i: int) -> str:
    return f"Message {i} for {ctx.card.name}: what do you think of chapter {i}?"


def turns(t: Tavern, ctx: Ctx, n: int, first: int = 1, replies: int = 1) -> None:
    for i in range(first, first + n):
        t.send(line(ctx, i), replies)


def plain(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 3)
    return [t.chat()]


def swipe_regenerate(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 2)
    t.swipe()
    t.swipe()
    t.regenerate()
    turns(t, ctx, 1, first=3)
    return [t.chat()]


def continue_default(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 2)
    t.continue_()
    turns(t, ctx, 1, first=3)
    return [t.chat()]


def continue_prefill(t: Tavern, ctx: Ctx) -> list[Chat]:
    t.set_continue_prefill(True)
    return continue_default(t, ctx)


def stop(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 1)
    ctx.backend.words, ctx.backend.delay_s = 400, 0.05
    try:
        t.send_and_stop(line(ctx, 2), stop_after_chars=24)
    finally:
        ctx.backend.words, ctx.backend.delay_s = 4, 0.0
    turns(t, ctx, 1, first=3)
    return [t.chat()]


def impersonate(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 1)
    written = t.impersonate()
    t.send(written or line(ctx, 2))
    turns(t, ctx, 1, first=3)
    return [t.chat()]


def edit_earlier(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 3)
    t.edit(2, "An edited first reply: the library closes at nine.")
    turns(t, ctx, 1, first=4)
    return [t.chat()]


def edit_greeting(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 2)
    t.edit(0, f"*{ctx.card.name} waves.* An edited greeting, traveller.")
    turns(t, ctx, 1, first=3)
    return [t.chat()]


def delete_continue(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 2)
    t.delete_last()
    t.continue_()
    turns(t, ctx, 1, first=3)
    return [t.chat()]


def trimmed(t: Tavern, ctx: Ctx) -> list[Chat]:
    t.set_context(700)
    turns(t, ctx, 30)
    return [t.chat()]


def long_chat(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 40)
    return [t.chat()]


def names_switch(t: Tavern, ctx: Ctx) -> list[Chat]:
    t.set_names("completion")
    turns(t, ctx, 2)
    t.set_names("default")
    turns(t, ctx, 1, first=3)
    t.set_names("content")
    turns(t, ctx, 1, first=4)
    t.set_names("completion")
    turns(t, ctx, 1, first=5)
    return [t.chat()]


def group(t: Tavern, ctx: Ctx) -> list[Chat]:
    assert ctx.group_id is not None
    t.open_group(ctx.group_id, len(ctx.members))
    turns(t, ctx, 3, replies=len(ctx.members))
    return [t.chat()]


def same_opening(t: Tavern, ctx: Ctx) -> list[Chat]:
    t.send("Hi!")
    turns(t, ctx, 1, first=2)
    first = t.chat()
    t.new_chat()
    t.send("Hi!")
    t.send(f"A different second line for {ctx.card.name}.")
    return [first, t.chat()]


def same_opening_headers(t: Tavern, ctx: Ctx) -> list[Chat]:
    t.set_headers('X-ST-Char: "{{char}}"\nX-ST-User: "{{user}}"')
    return same_opening(t, ctx)


def quiet(t: Tavern, ctx: Ctx) -> list[Chat]:
    turns(t, ctx, 2)
    t.quiet("Summarise the chat so far in one line.")
    turns(t, ctx, 1, first=3)
    return [t.chat()]


FLOWS: list[Flow] = [
    Flow("plain", "three plain turns", plain),
    Flow("swipe-regenerate", "2 turns, swipe right twice, regenerate, 1 turn", swipe_regenerate),
    Flow("continue", "continue_prefill off (default): 2 turns, Continue, 1 turn", continue_default),
    Flow("continue-prefill", "continue_prefill on: 2 turns, Continue, 1 turn", continue_prefill),
    Flow("stop", "1 turn, Stop mid-stream, 1 turn", stop),
    Flow("impersonate", "1 turn, Impersonate, send what it wrote, 1 turn", impersonate),
    Flow("edit-earlier", "3 turns, edit the first reply, 1 turn", edit_earlier),
    Flow("edit-greeting", "2 turns, edit the greeting, 1 turn", edit_greeting),
    Flow("delete-continue", "2 turns, delete the last reply, Continue, 1 turn", delete_continue),
    Flow("trim-30", "30 turns with a 700-token SillyTavern context (ST trims)", trimmed),
    Flow("long-40", "40 turns, everything fits: all of it must reach the backend", long_chat),
    Flow("names-switch", "names: Completion Object, then Default, Message Content, Completion", names_switch),
    Flow("group", "group of two (activation: list), 3 user turns, 2 replies each", group, group=True),
    Flow("same-opening", "chat 'Hi!', then a new chat with the same greeting and 'Hi!'", same_opening, 2),
    Flow(
        "same-opening-headers",
        "same-opening with X-ST-Char/X-ST-User headers ({{char}}, {{user}} macros)",
        same_opening_headers,
        2,
    ),
    Flow("quiet", "2 turns, a quiet generation (generateQuietPrompt), 1 turn", quiet),
]
