"""What the persona steps cost on the request path, per request, in microseconds (CPU, one thread).

The end-to-end overhead bench (`bench/overhead.py --persona aria`) is too noisy on a shared 2-core
machine to resolve a fraction of a millisecond; this times the steps themselves on the same
SillyTavern-shaped request: choosing the persona (a cached lookup), merging it with the client's
1,500-token system prompt, recognising that prompt as a card, and picking a big card's chunks.

    python bench/personas.py
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import build_request  # noqa: E402
from memory.budget import TokenCounter  # noqa: E402
from memory.types import Message  # noqa: E402
from personas.client_card import (  # noqa: E402
    Chunk,
    ClientCard,
    IndexedCard,
    embedding_matrix,
    leading_system,
    pick_chunks,
    recognise_card,
    split_card,
)
from personas.render import render  # noqa: E402
from personas.store import PersonaStore  # noqa: E402
from proxy.turn import with_persona  # noqa: E402

TARGET_US = 500.0  # the persona steps together should stay well under a millisecond


def timed(fn: Callable[[], Any], n: int = 2000) -> float:
    """Median microseconds per call over 5 batches."""
    fn()
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - start) / n * 1e6)
    return sorted(batches)[2]


def main() -> int:
    body, system_tokens = build_request()
    messages = tuple(Message(m["role"], m["content"]) for m in body["messages"])
    store = PersonaStore(None, examples=True, cache_ttl_s=3600)
    asyncio.run(store.reload())
    loop = asyncio.new_event_loop()
    aria = loop.run_until_complete(store.get(None, "aria"))
    assert aria is not None
    counter = TokenCounter()
    card_text = "\n\n".join(
        f"Lore {i}: the harbour of town {i} has {i % 7} lighthouses and a market at dawn." for i in range(300)
    )
    card = ClientCard("card-bob", "Bob", (Message("system", card_text),), "x")
    rng = random.Random(7)
    chunks = [
        Chunk(c.position, c.content, c.token_count, [rng.random() for _ in range(384)])
        for c in split_card(card, counter)
    ]
    query = [rng.random() for _ in range(384)]
    indexed = IndexedCard(card, 1, 1, tuple(chunks), counter.count(card_text), embedding_matrix(chunks))

    def fresh() -> tuple[Message, ...]:  # a new request: new string objects, hashed anew
        return tuple(Message(m.role, (m.content + " ")[:-1]) for m in messages)

    rows = {
        "choose (cached lookup)": timed(lambda: loop.run_until_complete(store.get(None, "aria")), 500),
        "render (once per version)": timed(lambda: render(aria.persona), 200),
        f"merge with a {system_tokens}-token client system prompt": timed(
            lambda: with_persona(messages, aria), 500
        ),
        "recognise the client's card": timed(
            lambda: recognise_card(leading_system(fresh()), None, None), 500
        ),
        f"pick chunks of a {counter.count(card_text)}-token card ({len(chunks)} chunks)": timed(
            lambda: pick_chunks(indexed.chunks, indexed.scores(query), 400), 200
        ),
    }
    per_request = sum(v for k, v in rows.items() if not k.startswith("render") and not k.startswith("pick"))
    width = max(len(k) for k in rows)
    for name, us in rows.items():
        print(f"{name:<{width}}  {us:9.1f} µs")
    print(
        f"\nPer request with a persona and a card that fits: {per_request:.1f} µs (target <= {TARGET_US:g})"
    )
    print(json.dumps({"us": rows, "per_request_us": per_request, "pass": per_request <= TARGET_US}))
    return 0 if per_request <= TARGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
