"""Knowing the user: do current facts reach the prompt, and stale or duplicate ones not? What does
extraction cost?

Labelled multi-session conversations (seeded): per user, 4 sessions a few days apart in which facts
are stated, repeated, changed (moved, new job), negated (the dog is gone) and told about third
parties (a sister, a friend), among small talk. An *oracle* extractor answers each extraction prompt
with exactly the labelled facts of the numbered messages, so this measures Anima's part: batching,
validation, reconciliation, ranking and the facts share of the prompt, through the real FactWorker
on the real (embedded) Postgres. Reported per batch size, side by side: current facts in the prompt
block within its share (5% of 4k and 8k windows), stale and duplicate facts in it, and extraction
cost in backend tokens per turn (the prompt Anima sends + the oracle's answer, tiktoken-counted).
Run: .venv/bin/python bench/facts.py [--users N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select, text

from memory import fact_store
from memory.archive import Archive, Incoming
from memory.budget import Budget, Shares, TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.fact_models import FactRow
from memory.fact_store import Scope
from memory.fact_worker import Completion, FactConfig, FactWorker
from memory.facts import normal, ranked
from memory.recall import Fusion
from memory.types import SessionKey, Thread
from memory.users import create_key
from memory.window import WorkingMemory
from personas.knowing import facts_text
from proxy.knowledge import Knowledge

NAMES = ["Anna", "Ben", "Chloe", "Dev", "Ema", "Finn", "Gia", "Hugo", "Ines", "Jon"]
CITIES = ["Paris", "Berlin", "Lyon", "Porto", "Oslo", "Turin", "Ghent", "Cork"]
JOBS = ["nurse", "baker", "pilot", "teacher", "plumber", "chemist", "designer", "lawyer"]
DOGS = ["Rex", "Bella", "Milo", "Luna", "Otto"]
FOODS = ["sushi", "ramen", "tacos", "curry", "pizza"]
SMALL = [
    "Lovely weather today, isn't it?",
    "I just had a coffee.",
    "Haha, that's funny.",
    "What do you think about that?",
    "Tell me a story.",
    "I'm a bit tired today.",
    "Anyway, how are you?",
    "Ok, thanks!",
]
Label = dict[str, Any]


def fact(about: str, name: str | None, kind: str, attribute: str, value: str, statement: str) -> Label:
    return {
        "about": about,
        "name": name,
        "kind": kind,
        "attribute": attribute,
        "value": value,
        "statement": statement,
    }


def me(kind: str, attribute: str, value: str, statement: str) -> Label:
    return fact("user", None, kind, attribute, value, statement)


def script(rng: random.Random) -> list[list[tuple[str, list[Label]]]]:
    """Four sessions of (user message, its labelled facts)."""
    name, city, city2 = rng.choice(NAMES), *rng.sample(CITIES, 2)
    job, job2, sister_job, sister_job2 = rng.sample(JOBS, 4)
    dog, food, sister, friend = rng.choice(DOGS), rng.choice(FOODS), rng.choice(NAMES), rng.choice(NAMES)
    sessions = [
        [
            (f"Hi, I'm {name}!", [me("identity", "name", name, f"The user's name is {name}.")]),
            (
                f"I live in {city} and work as a {job}.",
                [
                    me("location", "home city", city, f"The user lives in {city}."),
                    me("work", "job", job, f"The user works as a {job}."),
                ],
            ),
            (
                f"I have a dog named {dog}.",
                [me("possession", "dog's name", dog, f"The user has a dog named {dog}.")],
            ),
        ],
        [
            (
                f"My sister {sister} is a {sister_job}.",
                [
                    fact(
                        "other",
                        sister,
                        "work",
                        "job",
                        sister_job,
                        f"The user's sister {sister} is a {sister_job}.",
                    )
                ],
            ),
            (f"I really love {food}.", [me("preference", "favourite food", food, f"The user loves {food}.")]),
            (
                f"Still in {city}, still a {job}.",
                [
                    me("location", "home city", city, f"The user lives in {city}."),
                    me("work", "job", job, f"The user works as a {job}."),
                ],
            ),
        ],
        [
            (
                f"Big news: I moved to {city2}!",
                [me("location", "home city", city2, f"The user lives in {city2}.")],
            ),
            (
                f"My friend {friend} is visiting next week.",
                [
                    fact(
                        "other",
                        friend,
                        "plan",
                        "visit",
                        "next week",
                        f"The user's friend {friend} visits next week.",
                    )
                ],
            ),
            (
                f"Sadly I don't have {dog} anymore.",
                [me("possession", "dog's name", "none", "The user no longer has a dog.")],
            ),
        ],
        [
            (f"I quit: I'm a {job2} now.", [me("work", "job", job2, f"The user works as a {job2}.")]),
            (
                f"{sister} changed jobs, she's a {sister_job2} now.",
                [
                    fact(
                        "other",
                        sister,
                        "work",
                        "job",
                        sister_job2,
                        f"The user's sister {sister} is a {sister_job2}.",
                    )
                ],
            ),
            (f"As I said, I'm {name}.", [me("identity", "name", name, f"The user's name is {name}.")]),
        ],
    ]
    for session in sessions:  # small talk between the facts
        for _ in range(3):
            session.insert(rng.randrange(len(session) + 1), (rng.choice(SMALL), []))
    return sessions


def truth(sessions: list[list[tuple[str, list[Label]]]]) -> dict[tuple[str, str, str], str]:
    """Each slot's final value."""
    final: dict[tuple[str, str, str], str] = {}
    for session in sessions:
        for _, labels in session:
            for f in labels:
                final[(f["about"], normal(f["name"] or ""), normal(f["attribute"]))] = normal(f["value"])
    return final


READS = 20
WINDOWS = (1024, 2048, 8192)
LINE = re.compile(r'^\[(\d+)\] user: (".*")$', re.M)


class Oracle:
    """Answers an extraction prompt with the labelled facts of its numbered user messages."""

    def __init__(self, counter: TokenCounter) -> None:
        self.labels: dict[str, list[Label]] = {}
        self.counter, self.tokens = counter, 0

    async def __call__(self, model: str | None, prompt: str, schema: dict[str, Any]) -> Completion:
        facts = [
            label | {"confidence": 0.9, "message": int(n)}
            for n, quoted in LINE.findall(prompt)
            for label in self.labels.get(json.loads(quoted), [])
        ]
        answer = json.dumps({"facts": facts})
        used = Completion(answer, self.counter.count(prompt) + 7, self.counter.count(answer))
        self.tokens += used.prompt_tokens + used.completion_tokens
        return used


async def run(url: str, users: int, batch: int, seed: int) -> dict[str, float]:
    engine = make_engine(url)
    sessions, counter = make_sessionmaker(engine), TokenCounter()
    archive = Archive(sessions, counter, WorkingMemory(turns=8, conversations=8), None, Fusion())
    oracle, rng = Oracle(counter), random.Random(seed)
    worker = FactWorker(sessions, FactConfig(batch_messages=batch))
    people, turns = [], 0
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for u in range(users):
        async with sessions.begin() as s:
            user_id, _ = await create_key(s, f"bench-{batch}-{u}")
        plan = script(rng)
        for day, session in enumerate(plan):
            messages = []
            for i, (said, labels) in enumerate(session):
                oracle.labels.setdefault(said, labels)
                at = start + timedelta(days=3 * day, minutes=2 * i)
                messages += [
                    Incoming("user", said, created_at=at),
                    Incoming("assistant", "I see!", created_at=at),
                ]
                turns += 1
            await archive.create(user_id, messages, persona="bench")
        people.append((user_id, truth(plan)))
    began = time.perf_counter()
    await worker.drain(oracle)
    elapsed = time.perf_counter() - began
    figures = {"tokens_per_turn": oracle.tokens / turns, "calls_per_turn": worker.stats.calls / turns}
    figures["worker_ms_per_turn"] = elapsed * 1000 / turns
    for window in WINDOWS:
        found = [await _block(sessions, counter, uid, final, window, 0.05) for uid, final in people]
        total = sum(len(final) for _, final in people)
        figures[f"current_{window}"] = sum(f[0] for f in found) / total
        figures[f"stale_{window}"] = sum(f[1] for f in found)
        figures[f"duplicates_{window}"] = sum(f[2] for f in found)
        figures[f"read_{window}"] = statistics.median(f[3] for f in found)
    await engine.dispose()
    return figures


async def _block(
    sessions: Any, counter: TokenCounter, user_id: int, final: dict[Any, str], window: int, share: float
) -> tuple[int, int, int, float]:
    """(current facts in the block, stale ones, duplicated slots, read time / a bare round trip)."""
    budget = int(window * share)
    async with sessions() as s:
        found = await fact_store.current(s, Scope(user_id))
    order = ranked(found, persona_id=None, conversation_id=None)
    _, fitted = facts_text([f.statement for f in order], counter, budget)
    knowledge, session = Knowledge(sessions, counter, share=share), SessionKey(user_id)
    thread = Thread(0, "", created=False, kind="turn", anchor_id=None, path=(), new=())
    times, baseline = [], []
    for _ in range(READS):  # the request path's read (query, rank, fit) next to a bare round trip
        began = time.perf_counter()
        await knowledge.blocks(
            knowledge.read(session, thread, None), None, Budget.for_model(window, None, Shares())
        )
        times.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        async with sessions() as s:
            await s.execute(text("SELECT 1"))
        baseline.append((time.perf_counter() - began) * 1000)
    read_ms = statistics.median(times) / statistics.median(baseline)
    async with sessions() as s:
        rows = {r.id: r for r in await s.scalars(select(FactRow).where(FactRow.user_id == user_id))}
    slots = [
        (r.subject, normal(r.subject_name or ""), normal(r.attribute), normal(r.value))
        for r in (rows[f.id] for f in order[:fitted])
    ]
    current = sum(1 for a, n, k, v in slots if final.get((a, n, k)) == v)
    keys = [(a, n, k) for a, n, k, _ in slots]
    return current, len(slots) - current, len(keys) - len(set(keys)), read_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data")
        url = server.start()
        try:
            upgrade_schema(url)
            results = {b: asyncio.run(run(url, args.users, b, args.seed)) for b in (2, 4, 12)}
        finally:
            server.stop()
    print(
        f"{args.users} users x 4 sessions, 21 user turns each; oracle extractor; facts share 5% of the window"
    )
    head = "".join(f"  current@{w // 1024}k  stale  dup" for w in WINDOWS)
    print(f"batch  tokens/turn  calls/turn{head}  read/round-trip")
    for b, f in results.items():
        cells = "".join(
            f"  {f[f'current_{w}']:10.0%}  {f[f'stale_{w}']:5.0f}  {f[f'duplicates_{w}']:3.0f}"
            for w in WINDOWS
        )
        print(
            f"{b:5d}  {f['tokens_per_turn']:11.0f}  {f['calls_per_turn']:10.2f}{cells}"
            f"  {f['read_8192']:14.2f}x"
        )
    base = results[2]["tokens_per_turn"]
    ratios = ", ".join(f"batch {b}: {f['tokens_per_turn'] / base:.2f}x" for b, f in results.items())
    print(f"tokens/turn vs batch 2: {ratios}")


if __name__ == "__main__":
    main()
