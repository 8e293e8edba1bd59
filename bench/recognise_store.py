"""CPU of recognising and storing a turn of a growing, trimmed chat, in-process, on an embedded Postgres.

The two memory steps of every turn that talk to Postgres the most, without the HTTP, emotion and
embedding work around them: per turn, the CPU of this process and of its Postgres (process tree, from
/proc). To compare two commits side by side, run it alternately from an export of each
(`git archive <commit> | tar -x -C /tmp/old`, then `PYTHONPATH=/tmp/old python bench/recognise_store.py`).
Run: .venv/bin/python bench/recognise_store.py [--turns 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/proc_cpu.py
from proc_cpu import postmaster_pid, tree_cpu_s

from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.service import MemoryConfig, MemoryService
from memory.types import Message, SessionKey, TurnRecord
from memory.users import create_key
from tests.fakes import FakeEmbedder


async def measure(url: str, postgres: int, turns: int, rounds: int) -> list[tuple[float, float]]:
    """(ms of this process, ms of Postgres) per turn, for each round of `turns` turns."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    async with sessions.begin() as s:
        user, _ = await create_key(s, "bench")
    memory = MemoryService(sessions, TokenCounter(), FakeEmbedder(), MemoryConfig(deadline_s=30))
    session, chat = SessionKey(user_id=user), [Message("assistant", "*Mira waves from the gangway.*")]
    results = []
    for r in range(rounds):
        cpu0, pg0 = time.process_time(), tree_cpu_s(postgres)
        for t in range(turns):
            chat.append(Message("user", f"Where did the crates go, round {r} turn {t}?"))
            sent = chat[-24:]  # the client trims its oldest messages
            thread = await memory.recognise(session, sent, earlier_tokens=2000)
            reply = f"Somewhere below deck ({r}-{t}), I would guess, past the engine room."
            await memory.store_turn(
                session, thread, TurnRecord(reply, "complete", "m", [], {}, incoming=tuple(sent))
            )
            chat.append(Message("assistant", reply))
        results.append(
            (1000 * (time.process_time() - cpu0) / turns, 1000 * (tree_cpu_s(postgres) - pg0) / turns)
        )
    await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp))
        url = server.start()
        try:
            upgrade_schema(url)
            postgres = postmaster_pid(Path(tmp) / "postgres")
            for anima, pg in asyncio.run(measure(url, postgres, args.turns, args.rounds)):
                print(f"per turn: this process {anima:.2f} ms CPU, Postgres {pg:.2f} ms CPU")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
