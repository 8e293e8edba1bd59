"""Does recall find what was said long ago? Synthetic long conversations with planted facts.

12 conversations of 300 turns of varied small talk; 8 facts planted in each at early user turns and
12 near-miss distractors later (same topics and words, about other people). At the end each fact is
probed twice: with a paraphrase that shares few words with it, and with a probe naming a distinctive
word. Everything goes through the real code: messages stored with `memory.chain.append`, embedded
by the real `EmbeddingWorker` with the ONNX MiniLM, recalled with `memory.recall` in branch scope,
excluding the last 24 messages as the request path does. Prints Recall@1/@5/@10 of the planted
message for dense only, lexical only and several fusions, and how often the evidence reaches an
assembled prompt at 4k and 8k context.
Run: .venv/bin/python bench/memory_quality.py [--conversations N] [--turns N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory import chain, history
from memory.budget import Budget, Shares, TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.embedder import OnnxMiniLMEmbedder, chunk_text
from memory.recall import Fusion, RecallQuery, recall
from memory.types import Message, StoredMessage, Thread
from memory.users import create_key
from memory.workers import EmbeddingWorker
from personas.prompt import assemble_prompt
from personas.prompt_parts import parts_for

FACTS = [  # (fact, paraphrase probe, probe naming one distinctive word of the fact)
    ("My sister Maya moved to Porto last spring.", "Where does my sibling live now?", "How is Maya doing?"),
    (
        "I'm allergic to peanuts, so I always check labels.",
        "Is there any food I must avoid?",
        "Peanuts again?",
    ),
    ("My dog Rex is a three-year-old beagle.", "What kind of pet do I have?", "Remember Rex?"),
    ("I work night shifts as a nurse at the city hospital.", "What is my job?", "Shifts this week?"),
    ("My favourite band is Radiohead, I saw them twice.", "Which musicians do I love?", "Radiohead tickets?"),
    ("I'm training for the Berlin marathon in September.", "What race am I preparing for?", "Berlin soon?"),
    (
        "My grandmother taught me to bake sourdough bread.",
        "Who showed me how to make bread?",
        "Sourdough tips?",
    ),
    ("I drive an old green Volvo estate.", "What car do I own?", "Is the Volvo fixed?"),
    ("I studied marine biology at university in Plymouth.", "What was my degree in?", "Back in Plymouth?"),
    ("My daughter Lina just started kindergarten.", "How old is my child, roughly?", "How is Lina?"),
    (
        "I'm afraid of flying since a bad turbulence in 2019.",
        "Why do I avoid planes?",
        "That turbulence story?",
    ),
    (
        "I play the cello in a community orchestra on Thursdays.",
        "What instrument do I play?",
        "Orchestra tonight?",
    ),
]
DISTRACTORS = [  # near misses: same topics and words, about someone else
    "My colleague's sister moved to Lisbon last year.",
    "The neighbours have a beagle too, a noisy one.",
    "My friend is allergic to cats, not food.",
    "My cousin works day shifts at a bakery.",
    "Someone at work loves Coldplay, I don't get it.",
    "A friend ran the Paris marathon once.",
    "My aunt bakes rye bread every Sunday.",
    "My brother drives a red Volvo, a new one.",
    "My roommate studied chemistry in Leeds.",
    "Lina from the office just got a puppy.",
    "My dad loves flying small planes.",
    "A cellist played at my friend's wedding.",
]
TOPICS = ["the weather", "a TV series", "lunch", "the traffic", "a podcast", "the weekend", "coffee", "news"]
SMALL_TALK = [
    "Did you hear anything new about {t}?",
    "I keep thinking about {t} today.",
    "Honestly {t} was fine, nothing special.",
    "What do you think of {t}?",
    "Let's talk about {t} for a bit.",
]
REPLIES = [
    "That sounds nice.",
    "Tell me more about {t}.",
    "Interesting, {t} is always a good topic.",
    "I see.",
]
FUSIONS = {
    "dense only": Fusion(vector_weight=1, text_weight=0),
    "lexical only": Fusion(vector_weight=0, text_weight=1),
    "fused 1:1 k=60": Fusion(1, 1, 60),
    "fused 2:1 k=60": Fusion(2, 1, 60),
    "fused 1:2 k=60": Fusion(1, 2, 60),
    "fused 3:1 k=60": Fusion(3, 1, 60),
    "fused 1:1 k=20": Fusion(1, 1, 20),
    "fused 2:1 k=20": Fusion(2, 1, 20),
}


def conversation(rng: random.Random, turns: int) -> tuple[list[Message], dict[int, int]]:
    """Messages, and {fact index: message position} for the facts planted in it."""
    facts = rng.sample(range(len(FACTS)), 8)
    slots = sorted(rng.sample(range(2, turns // 3), len(facts)))
    planted, messages = {}, []
    noise = set(rng.sample(range(turns // 3, turns - 30), len(DISTRACTORS)))
    for turn in range(turns):
        topic = rng.choice(TOPICS)
        if turn in noise:
            messages.append(Message("user", DISTRACTORS[len(noise & set(range(turn)))]))
        elif slots and turn == slots[0]:
            slots.pop(0)
            fact = facts.pop()
            planted[fact] = len(messages)
            messages.append(Message("user", FACTS[fact][0]))
        else:
            messages.append(Message("user", rng.choice(SMALL_TALK).format(t=topic)))
        messages.append(Message("assistant", rng.choice(REPLIES).format(t=topic)))
    return messages, planted


async def score(
    sessions: Any,
    embedder: OnnxMiniLMEmbedder,
    counter: TokenCounter,
    user: int,
    fusion: Fusion,
    stored: list[Any],
    fact_id: int,
    probe: str,
) -> tuple[bool, bool, bool, bool, bool]:
    """(ranked first, in top 5, in top 10, in the 4k prompt, in the 8k prompt) for one probe."""
    vector = (await embedder.embed([probe]))[0]
    async with sessions() as s:
        query = RecallQuery(
            user_id=user,
            text=probe,
            embedding=vector,
            scope="branch",
            anchor_id=stored[-1].id,
            exclude=[m.id for m in stored[-24:]],
            k=10,
        )
        hits = await recall(s, query, fusion)
    ranked = [h.message_id for h in hits]
    thread = Thread(0, "q", False, "turn", stored[-1].id, tuple(stored[-24:]), (Message("user", probe),))
    parts = parts_for([Message("user", probe)], thread, memories=tuple(hits))
    fits = [
        fact_id in assemble_prompt(parts, Budget.for_model(window, 512, Shares()), counter).memory_ids
        for window in (4096, 8192)
    ]
    return fact_id in ranked[:1], fact_id in ranked[:5], fact_id in ranked[:10], fits[0], fits[1]


async def run(url: str, models: Path, n_conversations: int, turns: int) -> None:
    engine = make_engine(url, pool_size=2)
    sessions = make_sessionmaker(engine)
    embedder = await asyncio.to_thread(OnnxMiniLMEmbedder.load, models)
    counter = TokenCounter()
    rng = random.Random(7)
    async with sessions.begin() as s:
        user, _ = await create_key(s, "quality")
    probes: list[tuple[list[StoredMessage], int, str, str]] = []  # (chat, fact id, paraphrase, word probe)
    started = time.perf_counter()
    for c in range(n_conversations):
        messages, planted = conversation(rng, turns)
        async with sessions.begin() as s:
            row = await history.create_conversation(s, user_id=user, public_id=f"q{c}")
            stored = await chain.append(
                s,
                user_id=user,
                conversation_id=row.id,
                parent_id=None,
                messages=messages,
                token_counts=[counter.count(m.content) for m in messages],
            )
        probes += [(stored, stored[pos].id, FACTS[fact][1], FACTS[fact][2]) for fact, pos in planted.items()]
    worker = EmbeddingWorker(sessions, embedder, chunker=chunk_text, batch=64)
    await worker.drain()
    print(
        f"{n_conversations} conversations x {2 * turns} messages stored and embedded in "
        f"{time.perf_counter() - started:.0f} s; {len(probes)} probes"
    )
    kinds = {
        "paraphrase probes": [p[2] for p in probes],
        "probes naming a distinctive word": [p[3] for p in probes],
    }
    for kind, texts in kinds.items():
        print(f"\n{kind}:")
        print(f"{'ranking':<16} {'@1':>5} {'@5':>5} {'@10':>5} {'in 4k prompt':>13} {'in 8k prompt':>13}")
        for name, fusion in FUSIONS.items():
            scores = [
                await score(sessions, embedder, counter, user, fusion, p[0], p[1], text)
                for p, text in zip(probes, texts, strict=True)
            ]
            n = len(scores)
            r = [sum(s[i] for s in scores) / n for i in range(5)]
            print(f"{name:<16} {r[0]:>5.0%} {r[1]:>5.0%} {r[2]:>5.0%} {r[3]:>13.0%} {r[4]:>13.0%}")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=300, help="user turns per conversation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data")
        url = server.start()
        try:
            upgrade_schema(url)
            asyncio.run(run(url, Path(tmp) / "models", args.conversations, args.turns))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
