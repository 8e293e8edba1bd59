"""Import throughput: N messages through the memory API's import path (`Archive.create`, what
`POST /v1/conversations` and `anima import` run), against one INSERT per message (the old store),
side by side on one embedded Postgres.

    .venv/bin/python bench/import_bulk.py [--messages 10000] [--repeat 2]

Prints seconds and messages/s for each and the ratio. Issue 12's target: 10,000 messages in < 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.archive import Archive, Incoming
from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.models import ConversationRow, MessageRow
from memory.recall import Fusion
from memory.threads import content_hash, new_public_id
from memory.types import Message
from memory.users import create_key
from memory.window import WorkingMemory


def chat(n: int) -> list[Incoming]:
    """A realistic roleplay chat: alternating turns of 30-80 words."""
    words = [
        "the",
        "a",
        "river",
        "night",
        "lantern",
        "she",
        "said",
        "softly",
        "and",
        "then",
        "we",
        "walked",
        "along",
        "old",
        "stone",
        "bridge",
    ]
    out = []
    for i in range(n):
        length = 30 + (i * 7) % 50
        text = " ".join(words[(i * 3 + j) % len(words)] for j in range(length)) + f" ({i})"
        out.append(Incoming("user" if i % 2 == 0 else "assistant", text))
    return out


async def per_row(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int, messages: list[Incoming]
) -> None:
    """The old store, for comparison: one INSERT (and flush) per message, in one transaction."""
    async with sessions.begin() as s:
        conversation = ConversationRow(user_id=user, public_id=new_public_id())
        s.add(conversation)
        await s.flush()
        parent, depth, now = None, -1, datetime.now(UTC)
        for m in messages:
            depth += 1
            row = MessageRow(
                conversation_id=conversation.id,
                user_id=user,
                parent_id=parent,
                depth=depth,
                role=m.role,
                name=m.name,
                content=m.content,
                content_hash=content_hash(Message(m.role, m.content)),
                token_count=counter.count(m.content),
                source="imported",
                status="complete",
            )
            row.created_at = now
            s.add(row)
            await s.flush()
            parent = row.id
        await s.execute(
            update(ConversationRow).where(ConversationRow.id == conversation.id).values(updated_at=func.now())
        )


async def measure(url: str, messages: int, repeat: int) -> dict[str, list[float]]:
    engine = make_engine(url, pool_size=2)
    sessions = make_sessionmaker(engine)
    counter = TokenCounter()
    async with sessions.begin() as s:
        user, _ = await create_key(s, "bench")
    archive = Archive(sessions, counter, WorkingMemory(turns=1, conversations=1), None, Fusion())
    data = chat(messages)
    timings: dict[str, list[float]] = {"bulk (Archive.create)": [], "one INSERT per message": []}
    for _ in range(repeat):  # interleaved, so both see the same machine load
        started = time.perf_counter()
        await archive.create(user, data)
        timings["bulk (Archive.create)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await per_row(sessions, counter, user, data)
        timings["one INSERT per message"].append(time.perf_counter() - started)
    async with sessions() as s:
        stored = await s.scalar(select(func.count()).where(MessageRow.user_id == user))
    assert stored == 2 * repeat * messages, stored
    await engine.dispose()
    return timings


def run(messages: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="anima-import-bench-") as folder:
        server = EmbeddedPostgres(Path(folder))
        url = server.start()
        try:
            upgrade_schema(url)
            timings = asyncio.run(measure(url, messages, repeat))
        finally:
            server.stop()
    print(f"import of {messages} messages, median of {repeat} run(s):")
    medians = {name: statistics.median(t) for name, t in timings.items()}
    for name, seconds in medians.items():
        print(f"  {name:<24} {seconds:7.2f} s  {messages / seconds:9.0f} msg/s")
    bulk, old = medians["bulk (Archive.create)"], medians["one INSERT per message"]
    print(
        f"  speed-up {old / bulk:.1f}x; target 10,000 messages < 10 s: "
        f"{'met' if bulk * 10_000 / messages < 10 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    run(args.messages, args.repeat)


if __name__ == "__main__":
    main()
