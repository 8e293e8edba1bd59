"""Journal drain after an outage: N conversations' journaled turns stored one conversation at a time
(the old drain) and side by side (`drain_concurrency`, half of Anima's default pool of 10), on one
embedded Postgres, interleaved so both see the same machine load.

    .venv/bin/python bench/journal_drain.py [--conversations 50] [--turns 4] [--repeat 2]

Prints seconds and turns/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memory.budget import TokenCounter  # noqa: E402
from memory.db import make_engine, make_sessionmaker, upgrade_schema  # noqa: E402
from memory.embedded_pg import EmbeddedPostgres  # noqa: E402
from memory.journal import JournalEntry, TurnJournal  # noqa: E402
from memory.service import MemoryConfig, MemoryService  # noqa: E402
from memory.types import Message, SessionKey, TurnRecord  # noqa: E402
from memory.users import create_key  # noqa: E402

POOL = 10  # Anima's default ANIMA_MEMORY__DB_POOL_SIZE


def journal_of(folder: Path, user: int, conversations: int, turns: int) -> TurnJournal:
    """What an outage leaves: each conversation's turns as its client sent them, in order."""
    journal = TurnJournal(folder / f"turns-{user}.jsonl")
    for c in range(conversations):
        session, sent = SessionKey(user_id=user, conversation=f"drain-{c}"), list[Message]()
        for t in range(turns):
            sent.append(Message("user", f"conversation {c}, turn {t}: tell me about the river at night"))
            reply = f"The river at night, turn {t}, is quiet and dark."
            turn = TurnRecord(reply, "complete", "m", [], {}, incoming=tuple(sent))
            journal.append(JournalEntry(session, turn))
            sent.append(Message("assistant", reply))
    return journal


async def measure(
    url: str, folder: Path, conversations: int, turns: int, repeat: int
) -> dict[int, list[float]]:
    engine = make_engine(url, pool_size=POOL)
    sessions, counter = make_sessionmaker(engine), TokenCounter()
    timings: dict[int, list[float]] = {1: [], POOL // 2: []}
    for _ in range(repeat):
        for concurrency in timings:
            async with sessions.begin() as s:
                user, _ = await create_key(s, "bench")
            journal = journal_of(folder, user, conversations, turns)
            config = MemoryConfig(drain_concurrency=concurrency)
            memory = MemoryService(sessions, counter, None, config, journal=journal)
            started = time.perf_counter()
            stored = await memory.drain_journal()
            timings[concurrency].append(time.perf_counter() - started)
            assert stored == conversations * turns and not len(journal), (stored, len(journal))
    await engine.dispose()
    return timings


def run(conversations: int, turns: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="anima-drain-bench-") as folder:
        server = EmbeddedPostgres(Path(folder) / "pg")
        url = server.start()
        try:
            upgrade_schema(url)
            timings = asyncio.run(measure(url, Path(folder), conversations, turns, repeat))
        finally:
            server.stop()
    total = conversations * turns
    print(f"journal drain of {total} turns ({conversations} conversations x {turns}), median of {repeat}:")
    medians = {n: statistics.median(t) for n, t in timings.items()}
    for n, seconds in medians.items():
        print(f"  {n} conversation(s) at once {seconds:7.2f} s  {total / seconds:7.1f} turns/s")
    print(f"  speed-up {medians[1] / medians[POOL // 2]:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    run(args.conversations, args.turns, args.repeat)


if __name__ == "__main__":
    main()
