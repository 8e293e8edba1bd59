"""Recorded SillyTavern 1.19.0 flows (tests/fixtures/sillytavern/flows, captured by `make e2e`) and a
replay of one against Anima, with the stub answering each request with the reply SillyTavern got.

A flow is `<flow>.jsonl` (every request SillyTavern sent, in order: method, path, headers, body,
status, reply, completed) and `<flow>.display.json` (SillyTavern's chat(s) as shown at the end)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.servers.openai_stub import StubState

FOLDER = Path(__file__).parent / "fixtures" / "sillytavern" / "flows"
KEPT = ("content-type",)  # the caller's client carries its own key


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | None
    reply: str | None  # what Anima answered, as far as SillyTavern read it
    completed: bool  # False: SillyTavern hung up first (Stop)

    @property
    def is_chat(self) -> bool:
        return self.method == "POST" and self.path.endswith("/chat/completions")


def names() -> list[str]:
    return sorted(p.name.removesuffix(".jsonl") for p in FOLDER.glob("*.jsonl"))


def requests(flow: str) -> list[Recorded]:
    lines = (FOLDER / f"{flow}.jsonl").read_text().splitlines()
    return [Recorded(**json.loads(line)) for line in lines if line.strip()]


def display(flow: str) -> dict[str, Any]:
    """`chats`: SillyTavern's chat array(s) at the end of the flow, one per chat it made (name, is_user,
    is_system, mes, swipe_texts); `seen`: the chat after every action of the flow."""
    shown: dict[str, Any] = json.loads((FOLDER / f"{flow}.display.json").read_text())
    return shown


async def replay(
    client: httpx.AsyncClient, stub: StubState, flow: str, model: str
) -> list[tuple[float, Recorded]]:
    """Send the flow's chat requests to Anima (at `client`'s base URL) in order, with `model`; the
    stub's `numbered` model (route `model` to it) answers each with the recorded reply (scripted by
    the request's last message, so Anima's own summary calls cannot take it). A request
    SillyTavern stopped is read only as far as SillyTavern read it, then dropped, while the stub
    still has words to send. Returns each chat request with the time it was sent."""
    sent = []
    for rec in requests(flow):
        if not rec.is_chat:
            continue
        sent.append((time.time(), rec))
        body = dict(rec.body, model=model)
        headers = {k: v for k, v in rec.headers.items() if k in KEPT or k.startswith("x-st-")}
        reply = rec.reply or ""
        key = str(rec.body["messages"][-1].get("content"))
        stub.script.setdefault(key, []).append(reply if rec.completed else reply + " more" * 400)
        stub.delay_s = 0.0 if rec.completed else 0.05
        try:
            await _send(client, body, headers, None if rec.completed else len(reply))
        finally:
            stub.script.clear()
            stub.delay_s = 0.0
    return sent


async def _send(client: httpx.AsyncClient, body: Any, headers: dict[str, str], stop_at: int | None) -> None:
    if not body.get("stream"):
        (await client.post("/v1/chat/completions", json=body, headers=headers)).raise_for_status()
        return
    read = ""
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                read += choices[0].get("delta", {}).get("content") or ""
            if stop_at is not None and len(read) >= stop_at:
                return  # leaving the block closes the connection, as SillyTavern's Stop does
