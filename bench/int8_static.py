"""Static int8 quantisation of the recall embedder: quality against fp32 and latency, side by side.

Static (calibrated) scales, unlike dynamic quantisation's per-batch ones, keep a text's vector
independent of its batch-mates. Calibration reads 256 GoEmotions *train* lines (Reddit comments, the
register of chat); quality is measured on 400 *dev* lines: cosine to the fp32 vector (min, mean), how
many of each line's 10 nearest neighbours stay the same, and the largest change of a vector batched
vs alone. Variants: every weight MatMul quantised, and the same without the feed-forward output
MatMuls (whose post-GELU inputs carry BERT's outlier activations). One-query latency is measured
interleaved with fp32 (p50/p95 and the ratio). Each int8 graph's path is printed: run
`bench/recall_quality.py --graph PATH` for its recall quality.
Run: .venv/bin/python bench/int8_static.py --data ../shared/data/goemotions [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from memory.embedder import OnnxMiniLMEmbedder, _encode_batch, _load_tokenizer, cached_graph

QUERIES = [
    "What is my sister called?",
    "Did I mention my peanut allergy?",
    "When is the meeting with the landlord?",
    "how was my exam",
    "What did we say about the trip to Lisbon last spring?",
]
FFN_OUT = [f"/encoder/layer.{i}/output/dense/MatMul" for i in range(6)]
VARIANTS: dict[str, list[str]] = {"int8 all weight MatMuls": [], "int8 without FFN output": FFN_OUT}
WIDTH = 96  # calibration batches padded alike (the calibrator stacks them)


def lines(path: Path, n: int, seed: int) -> list[str]:
    texts = [line.split("\t")[0] for line in path.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def quantize(fp32: Path, target: Path, calibration: list[str], exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tokenizer = _load_tokenizer(truncate_at=WIDTH)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), 16))

        def get_next(self) -> dict[str, Any] | None:
            start = next(self.batches, None)
            if start is None:
                return None
            ids, mask = _encode_batch(tokenizer, calibration[start : start + 16])
            pad = ((0, 0), (0, WIDTH - ids.shape[1]))
            return {"input_ids": np.pad(ids, pad), "attention_mask": np.pad(mask, pad)}

    pre = target.with_name("pre-" + fp32.name)
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(pre),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude,
        extra_options={"MatMulConstBOnly": True},
    )


def quality(
    reference: np.ndarray, embedder: OnnxMiniLMEmbedder, dev: list[str]
) -> tuple[float, float, float, float]:
    got = np.array(embedder._embed(dev))
    cos = (got * reference).sum(axis=1)
    alone = np.array([embedder._embed([t])[0] for t in dev[:50]])

    def neighbours(v: np.ndarray) -> np.ndarray:
        sim = v @ v.T
        np.fill_diagonal(sim, -1.0)
        return np.argsort(-sim, axis=1)[:, :10]

    same = [len(set(a) & set(b)) / 10 for a, b in zip(neighbours(reference), neighbours(got), strict=True)]
    return float(cos.min()), float(cos.mean()), float(np.mean(same)), float(np.abs(alone - got[:50]).max())


def latency(embedders: dict[str, OnnxMiniLMEmbedder], runs: int) -> dict[str, tuple[float, float]]:
    samples: dict[str, list[float]] = {name: [] for name in embedders}
    for i in range(runs):
        for name, embedder in embedders.items():
            started = time.perf_counter()
            embedder._embed([QUERIES[i % len(QUERIES)]])
            samples[name].append(1000 * (time.perf_counter() - started))
    return {n: (statistics.median(s), statistics.quantiles(s, n=20)[18]) for n, s in samples.items()}


def main(data: Path, out: Path) -> None:
    fp32_file = cached_graph()
    calibration, dev = lines(data / "train.tsv", 256, 1), lines(data / "dev.tsv", 400, 2)
    embedders = {"fp32": OnnxMiniLMEmbedder.from_file(fp32_file)}
    for name, exclude in VARIANTS.items():
        target = out / f"minilm-{'-'.join(name.split())}.onnx"
        if not target.exists():
            started = time.perf_counter()
            quantize(fp32_file, target, calibration, exclude)
            print(f"{name}: quantised in {time.perf_counter() - started:.0f} s -> {target}")
        embedders[name] = OnnxMiniLMEmbedder.from_file(target)
    reference = np.array(embedders["fp32"]._embed(dev))
    print(f"\n{'':<26}{'cos min':>8}{'cos mean':>9}{'same top-10':>12}{'batch moves':>12}")
    for name, embedder in list(embedders.items())[1:]:
        low, mean, same, moved = quality(reference, embedder, dev)
        print(f"{name:<26}{low:8.4f}{mean:9.4f}{same:12.3f}{moved:12.1e}")
    times = latency(embedders, 300)
    print(f"\none query, 1 thread, interleaved {'p50 ms':>8}{'p95 ms':>8}{'p50 ratio':>11}")
    for name, (p50, p95) in times.items():
        print(f"{name:<34}{p50:8.2f}{p95:8.2f}{p50 / times['fp32'][0]:10.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="GoEmotions folder (train.tsv, dev.tsv)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "anima-int8")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    main(args.data, args.out)
