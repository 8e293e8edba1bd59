"""Embedder latency on one thread: one-query p50/p95 and batch-of-32 throughput for ONNX fp32, ONNX int8
and torch (sentence-transformers), then one-query latency again with a busy-loop process on another core.

Also reports the int8 model's quality against fp32, which is why the app runs fp32.
Run: .venv/bin/python bench/embedder.py [--cache-dir DIR] (about 30 s; exports the model if needed).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script: make sure nothing is fetched

import anyio
import numpy as np

from memory.embedder import (
    Embedder,
    OnnxMiniLMEmbedder,
    SentenceTransformerEmbedder,
    onnx_model_file,
)

QUERIES = [
    "What is my sister called?",
    "Did I mention my peanut allergy?",
    "When is the meeting with the landlord?",
    "how was my exam",
    "What did we say about the trip to Lisbon last spring?",
]
TOPICS = ("work", "their garden", "a new job", "music", "the weather", "cooking", "a trip", "their cat")
BATCH = [
    f"Message {i}: the user talked about {topic} and how it made them feel {mood} that day."
    for i, (topic, mood) in enumerate(itertools.product(TOPICS, ("happy", "tired", "anxious", "calm")))
]
QUALITY = [
    *QUERIES,
    *BATCH[:8],
    "Hi",
    "ok",
    "🎉🎉 party time 🥳",
    "今日はいい天気ですね。",
    "Je voudrais un café, s'il vous plaît.",
    "I'm feeling really anxious about my exam tomorrow and can't sleep.",
]


def busy_loop() -> None:
    while True:
        pass


@contextmanager
def other_core_busy() -> Iterator[None]:
    process = multiprocessing.get_context("spawn").Process(target=busy_loop, daemon=True)
    process.start()
    time.sleep(0.5)  # let it start spinning
    try:
        yield
    finally:
        process.terminate()
        process.join()


def percentile(samples: Sequence[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


async def one_query(embedder: Embedder, runs: int) -> tuple[float, float]:
    for query in QUERIES * 2:  # warm-up
        await embedder.embed([query])
    samples = []
    for i in range(runs):
        started = time.perf_counter()
        await embedder.embed([QUERIES[i % len(QUERIES)]])
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), percentile(samples, 95)


async def throughput(embedder: Embedder, seconds: float) -> float:
    await embedder.embed(BATCH)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += len(await embedder.embed(BATCH))
    return done / (time.perf_counter() - started)


def quantize(fp32: Path) -> Path:
    """The best int8 variant found: per-channel weights, weight MatMuls only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = fp32.with_name(fp32.stem + "-int8.onnx")
    if not int8.exists():
        logging.getLogger().setLevel(
            logging.ERROR
        )  # it suggests a pre-processing step that changed nothing here
        quantize_dynamic(
            fp32,
            int8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
    return int8


async def int8_quality(fp32: Embedder, int8: Embedder) -> tuple[float, float, float]:
    """Cosine to fp32 (min, mean) and how far a text's vector moves when batched with longer ones."""
    reference = np.asarray(await fp32.embed(QUALITY))
    got = np.asarray(await int8.embed(QUALITY))
    cos = (reference * got).sum(axis=1)
    alone = np.asarray([(await int8.embed([text]))[0] for text in QUALITY])
    return float(cos.min()), float(cos.mean()), float(np.abs(alone - got).max())


async def main(cache_dir: Path) -> None:
    model_file = onnx_model_file(cache_dir)
    cached = model_file.exists()
    started = time.perf_counter()
    fp32 = await anyio.to_thread.run_sync(OnnxMiniLMEmbedder.load, cache_dir)
    how = "cached file" if cached else "first start: export"
    print(f"OnnxMiniLMEmbedder.load: {time.perf_counter() - started:.2f} s ({how})")
    started = time.perf_counter()
    int8_file = await anyio.to_thread.run_sync(quantize, model_file)
    print(f"int8 quantization: {time.perf_counter() - started:.2f} s")
    int8 = await anyio.to_thread.run_sync(OnnxMiniLMEmbedder.from_file, int8_file)
    torch = await anyio.to_thread.run_sync(SentenceTransformerEmbedder.load)
    embedders: dict[str, Embedder] = {"onnx fp32": fp32, "onnx int8": int8, "torch": torch}

    low, mean, moved = await int8_quality(fp32, int8)
    print(f"int8 vs fp32 cosine: min {low:.4f}, mean {mean:.4f}; batched vs alone max |diff| {moved:.4f}")

    print("\none query, 1 thread (ms)        p50      p95")
    idle: dict[str, tuple[float, float]] = {}
    for name, embedder in embedders.items():
        idle[name] = await one_query(embedder, 60 if name == "torch" else 200)
        print(f"  {name:<28}{idle[name][0]:7.2f}  {idle[name][1]:7.2f}")

    print(f"\nbatch of {len(BATCH)}, 1 thread (texts/s)")
    rates = {name: await throughput(embedder, 2.0) for name, embedder in embedders.items()}
    for name, rate in rates.items():
        print(f"  {name:<28}{rate:7.0f}")

    print("\none query, other core busy (ms)  p50      p95")
    busy: dict[str, tuple[float, float]] = {}
    with other_core_busy():
        for name, embedder in embedders.items():
            busy[name] = await one_query(embedder, 60 if name == "torch" else 200)
            print(f"  {name:<28}{busy[name][0]:7.2f}  {busy[name][1]:7.2f}")

    base = idle["onnx fp32"]
    print("\nrelative to onnx fp32           p50      p95   texts/s")
    for name in embedders:
        p50, p95 = idle[name][0] / base[0], idle[name][1] / base[1]
        print(f"  {name:<28}{p50:6.2f}x {p95:6.2f}x {rates[name] / rates['onnx fp32']:6.2f}x")
    for name in embedders:
        print(f"  busy/idle p95 {name:<14}{busy[name][1] / idle[name][1]:6.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="model cache to use (default: a fresh temporary one)")
    args = parser.parse_args()
    if args.cache_dir is not None:
        anyio.run(main, args.cache_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            anyio.run(main, Path(tmp))
