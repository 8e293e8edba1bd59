"""What the embedding worker pays to encode stored messages, and what might make it cheaper without moving
a single stored vector (issue 15): every variant is measured side by side in one run, on one thread.

1. Graphs (the shipped export against onnxruntime's offline transformer optimizer, session options):
   moved to bench/encoder_graphs.py.
2. Threads: one 160-token reply every 50 ms (the worker between turns) with 1 and 2 intra-op threads
   (spinning on and off), each in its own process: CPU per reply including the idle gap, and wall time.
3. Batching a mixed backlog (SillyTavern lines and replies, as an import or 8 clients leave it): sorted
   by characters and cut every 32 texts (before), runs of similar token length (now), one at a time.
4. One reply as the worker encodes it per turn: tokenizer, session and list conversion apart.

CPU is time.thread_time() of the encoding thread (process time for the thread variants).
Run: .venv/bin/python bench/worker_encode.py [--reps N] (about 2 minutes; `anima models build` must have
built the shipped graph).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script: make sure nothing is fetched

import numpy as np
import onnxruntime

from memory import embedder
from memory.embedder import OnnxMiniLMEmbedder, _encode_batch, _load_tokenizer, cached_graph

CHAT = json.loads(Path(__file__).with_name("sillytavern_chat.json").read_text())
TOKENIZER = _load_tokenizer(truncate_at=256)


def text_of(tokens: int, source: str = "") -> str:
    """A role-play text of about `tokens` tokens with [CLS] and [SEP] (words of the chat's reply)."""
    words = (f"{source} " + CHAT["bot_turn"].format(n=7) + " ") * 4
    ids = TOKENIZER.encode(words).ids[1 : tokens - 1]
    return str(TOKENIZER.decode(ids))


def session(path: Path, threads: int = 1, spin: bool = True) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feed(texts: list[str]) -> dict[str, np.ndarray]:
    ids, mask = _encode_batch(TOKENIZER, texts)
    return {"input_ids": ids, "attention_mask": mask}


def cpu_ms(run: Callable[[], Any]) -> float:
    started = time.thread_time()
    run()
    return (time.thread_time() - started) * 1000


# --- 2. threads -----------------------------------------------------------------------------------


def reply_every_50ms(threads: int, spin: bool, reps: int) -> tuple[float, float]:
    """In a process of its own (so another session's spinning threads are not counted)."""
    s = session(cached_graph(), threads, spin)
    inputs = feed([CHAT["bot_turn"].format(n=3)])
    for _ in range(3):
        s.run(None, inputs)
    cpu, wall = [], []
    for _ in range(reps):
        c, w = time.process_time(), time.perf_counter()
        s.run(None, inputs)
        wall.append((time.perf_counter() - w) * 1000)
        time.sleep(0.05)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(cpu), statistics.median(wall)


def threads(reps: int) -> None:
    variants = [(1, True), (2, True), (2, False)]
    results: dict[tuple[int, bool], list[tuple[float, float]]] = {v: [] for v in variants}
    spawn = multiprocessing.get_context("spawn")
    for rep in range(3):  # alternate the variants, three processes each
        for v in variants if rep % 2 == 0 else variants[::-1]:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                results[v].append(pool.submit(reply_every_50ms, *v, reps).result())
    print("\n2. a 160-token reply every 50 ms: CPU per reply (incl. the gap) and wall, ratio to 1 thread")
    base = statistics.median(r[0] for r in results[(1, True)])
    base_wall = statistics.median(r[1] for r in results[(1, True)])
    for (n, spin), got in results.items():
        cpu, wall = statistics.median(r[0] for r in got), statistics.median(r[1] for r in got)
        label = f"{n} thread(s), spinning {'on' if spin else 'off'}"
        print(
            f"  {label:<30} CPU {cpu:7.2f} ms {cpu / base:5.2f}x"
            f"   wall {wall:7.2f} ms {wall / base_wall:5.2f}x"
        )


# --- 3. batching ----------------------------------------------------------------------------------


def backlogs() -> dict[str, list[str]]:
    """16 replies of ~160 tokens (the worker's backlog at 8 clients: user lines come with their vector),
    and 64 stored messages, user lines and replies alternating: as the bench chat leaves them (every
    reply ~160 tokens), and as a real role-play import does (lines of 3-60 tokens, replies of 40-256)."""
    quips = ["ok", "*nods*", "Hi!", "What now?", "Fine. Lead the way.", "*grins* You first."]
    uniform = []
    for i in range(32):
        line = CHAT["user_turn"].format(n=i) if i % 2 else quips[i % len(quips)]
        uniform += [line, CHAT["bot_turn"].format(n=i)]
    rng = random.Random(15)
    varied = []
    for i in range(32):
        varied += [text_of(rng.randint(3, 60), CHAT["user_turn"].format(n=i)), text_of(rng.randint(40, 256))]
    replies = [CHAT["bot_turn"].format(n=i) for i in range(16)]  # 8 clients: replies only (lines are known)
    return {"16 replies (8 clients' backlog)": replies, "bench chat": uniform, "varied lengths": varied}


def sorted_cut_every_32(model: OnnxMiniLMEmbedder, texts: list[str]) -> list[tuple[int, int]]:
    """The encoder before: sorted by characters, cut every 32 texts, each batch padded to its longest."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    shapes = []
    for start in range(0, len(order), 32):
        inputs = feed([texts[i] for i in order[start : start + 32]])
        model._session.run(None, inputs)
        shapes.append(inputs["input_ids"].shape)
    return shapes


def batching(model: OnnxMiniLMEmbedder, reps: int) -> None:
    for label, texts in backlogs().items():
        _batching(model, label, texts, reps)


def _batching(model: OnnxMiniLMEmbedder, label: str, texts: list[str], reps: int) -> None:
    lengths = [len(TOKENIZER.encode(t).ids) for t in texts]
    real = sum(lengths)
    strategies: dict[str, Callable[[], Any]] = {
        "sorted, cut every 32 (before)": lambda: sorted_cut_every_32(model, texts),
        "runs of similar length (now)": lambda: model._embed(texts),
        "one at a time": lambda: [model._embed([t]) for t in texts],
    }
    samples: dict[str, list[float]] = {name: [] for name in strategies}
    for rep in range(reps):
        for name in strategies if rep % 2 else list(strategies)[::-1]:
            samples[name].append(cpu_ms(strategies[name]))
    runs = embedder.runs(lengths, 32)
    cells = {
        "sorted, cut every 32 (before)": sum(r * w for r, w in sorted_cut_every_32(model, texts)),
        "runs of similar length (now)": sum(len(run) * max(lengths[i] for i in run) for run in runs),
        "one at a time": real,
    }
    alone = np.asarray([model._embed([t])[0] for t in texts])
    moved = float(np.abs(np.asarray(model._embed(texts)) - alone).max())
    print(f"\n3. a backlog of {len(texts)} messages, {label} ({real} tokens; {len(runs)} runs now)")
    before, now = (statistics.median(samples[k]) / len(texts) for k in list(strategies)[:2])
    print(f"  per message before / now: {before:.2f} / {now:.2f} ms")
    base = statistics.median(samples["sorted, cut every 32 (before)"])
    for name, got in samples.items():
        ms = statistics.median(got)
        print(
            f"  {name:<32} {ms:8.1f} ms  {ms / real * 1000:6.1f} us/token  cells {cells[name]:5d}"
            f" (+{cells[name] / real - 1:4.0%})  {ms / base:5.2f}x"
        )
    print(f"  runs vs one at a time: max |diff| {moved:.1e}")


# --- 4. one reply ---------------------------------------------------------------------------------


def one_reply(model: OnnxMiniLMEmbedder, reps: int) -> None:
    reply = CHAT["bot_turn"].format(n=11)
    inputs = feed([reply])
    out = model._session.run(None, inputs)[0]
    parts: dict[str, Callable[[], Any]] = {
        "tokenize": lambda: TOKENIZER.encode(reply),
        "session.run": lambda: model._session.run(None, inputs),
        "tolist": lambda: out.tolist(),
        "whole _embed": lambda: model._embed([reply]),
    }
    samples: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(reps):
        for name, part in parts.items():
            samples[name].append(cpu_ms(part))
    n = inputs["input_ids"].shape[1]
    print(f"\n4. one reply as the worker encodes it per turn ({n} tokens), CPU ms")
    whole = statistics.median(samples["whole _embed"])
    for name, got in samples.items():
        print(f"  {name:<14} {statistics.median(got):8.3f}  {statistics.median(got) / whole:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="interleaved repetitions per variant (30)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    shipped = cached_graph()
    model = OnnxMiniLMEmbedder.from_file(shipped)
    threads(args.reps)
    batching(model, max(args.reps // 3, 5))
    one_reply(model, args.reps)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
