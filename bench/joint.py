"""One encoder pass per message: the newest user message's emotion + recall vector, separate vs joint.

Side by side in one run, interleaved message by message (so machine noise hits every variant alike):
- separate, one after the other: the embedder graph, then the emotion graph (the CPU the two cost);
- separate, two threads: as the request path ran them before (wall time on a machine with a free core);
- joint: the shared-trunk graph (emotion/joint.py), one run for both.
Prints p50/p95 wall ms and CPU ms per message, and each variant's ratio to separate.
Run: .venv/bin/python bench/joint.py [--rounds N] (uses the shared model cache; `anima models build`).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotion import joint
from emotion.chat import views
from emotion.detector import MiniLMEmotionDetector
from emotion.joint import JointEncoder
from emotion.labels import prepare_text
from memory import model_cache
from memory.embedder import OnnxMiniLMEmbedder, cached_graph

MESSAGES = [
    "I can't believe you forgot my birthday again.",
    "What did we say about the trip to Lisbon last spring?",
    "*sighs and looks out of the window* I guess it doesn't matter anymore.",
    "yesss we won the match 🙌🎉",
    "Oh great, another Monday. Just what I needed.",
    "My sister Amelia moved to Lisbon and she loves the trams there, but I miss her a lot.",
    "Who are you? Tell me your name.",
    "I'm so scared about the exam tomorrow, I can't sleep at all and my heart is racing.",
    "ok",
    "Can you remind me what my dog's name was? I told you last week when we talked about the park.",
]


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) milliseconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return 1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu)


def main(rounds: int) -> None:
    embedder = OnnxMiniLMEmbedder.from_file(cached_graph())
    detector = MiniLMEmotionDetector.load(with_joint=False)
    encoder = JointEncoder.from_file(model_cache.ensure(joint.graph_name(), joint.build_graph, "joint"))
    both = detector.with_joint(encoder)
    pool = ThreadPoolExecutor(2)

    def threads(text: str) -> None:
        vector = pool.submit(embedder._embed, [text])
        emotion = pool.submit(detector.detect_sync, [text])
        vector.result(), emotion.result()

    variants: dict[str, Callable[[str], object]] = {
        "separate, one after the other": lambda t: (embedder._embed([t]), detector.detect_sync([t])),
        "separate, two threads": threads,
        "joint (shared trunk)": lambda t: both.detect_and_embed_sync([t], [t]),
    }
    for run in variants.values():  # warm-up
        for text in MESSAGES:
            run(text)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, run in variants.items():
            samples[name].append(timed(functools.partial(run, MESSAGES[i % len(MESSAGES)])))
    pool.shutdown()
    print(f"one message, emotion + recall vector, {rounds} messages per variant (interleaved)")
    print(f"  {'':<32}{'wall p50':>9}{'p95':>8}{'cpu p50':>9}{'ratio wall p50':>16}{'cpu p50':>9}")
    base = samples["separate, one after the other"]
    base_wall = statistics.median(w for w, _ in base)
    base_cpu = statistics.median(c for _, c in base)
    for name, got in samples.items():
        wall, cpu = [w for w, _ in got], [c for _, c in got]
        p50, cpu50 = statistics.median(wall), statistics.median(cpu)
        print(
            f"  {name:<32}{p50:9.2f}{percentile(wall, 95):8.2f}{cpu50:9.2f}"
            f"{p50 / base_wall:15.2f}x{cpu50 / base_cpu:8.2f}x"
        )
    once = sum(
        encoder.feed([prepare_text(views(t).main) or "."], [t])["input_ids"].shape[0] == 1 for t in MESSAGES
    )
    print(f"  messages whose trunk ran once: {once} of {len(MESSAGES)} (others: emoji, actions spelled out)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    main(parser.parse_args().rounds)
