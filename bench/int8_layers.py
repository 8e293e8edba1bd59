"""Which of the recall embedder's MatMuls can run in int8, and in which scheme (issue 15; docs/benchmarks.md
"int8 per layer"): quality against fp32 and CPU per call, side by side in one run, one thread.

Quality over ~1,100 distinct texts: GoEmotions *dev* lines (never test), bench/data's chat lines, turns and
questions of bench/long_chats.py (the recall set's generator), role-play lines and replies of 3-256 tokens.
Per set the min / mean cosine to the fp32 vector; over the union, the share of each text's 10 nearest
neighbours that stay the same; and how far a vector moves between alone and in runs by length (as the
embedding worker batches: a vector must not depend on its batch-mates). Vectors come through
`OnnxMiniLMEmbedder._embed`, the worker's own path.
CPU: `time.thread_time()` per call, median, one text of 12 / 40 / 158 tokens, every variant of a table
alternating call by call with fp32 and a second fp32 session (the run's noise floor); ratio to fp32.

1. schemes, every weight MatMul: static QDQ / QOperator, per channel / per tensor; dynamic; blockwise
   (MatMulNBits) int8 and int4;
2. sensitivity: static QDQ per channel (or dynamic), one group at a time (each layer's QKV, attention
   output, FFN in, FFN out) and one layer at a time;
3. greedy: groups added cheapest-damage-per-FLOP first, kept while the mix passes the bar (mean cos
   >= 0.995, min >= 0.97, >= 95% same top-10): the mix, its share of the FLOPs, its CPU ratio.
   `--scheme dynamic` runs 2 and 3 with dynamic int8, its quality measured with every text alone;
4. `--phases confirm`: the candidates the other phases built, side by side again.
Graphs are written to --out: `bench/recall_quality.py --graph PATH` measures one's recall quality.
Run: .venv/bin/python bench/int8_layers.py --data ../shared/data/goemotions [--phases schemes,greedy]
     [--scheme static|dynamic] [--reps N] [--out DIR]  (each phase takes minutes)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench import int8_graphs as graphs
from bench.long_chats import generate
from bench.worker_encode import CHAT, text_of
from memory.embedder import OnnxMiniLMEmbedder, cached_graph

Build = Callable[[list[str], str], Path]  # (MatMul names, file stem) -> the graph with them in int8
BAR = {"mean": 0.995, "min": 0.97, "top10": 0.95}
LENGTHS = (12, 40, 158)
CONFIRM = {  # files the other phases write
    "static QDQ per-channel, all": "s-qdq-pc.onnx",
    "static greedy mix": "mix.onnx",
    "dynamic per-channel, all": "d-pc.onnx",
    "dynamic greedy mix (alone)": "d-mix.onnx",
    "blockwise int8 b32, all": "nb8-32.onnx",
}


@dataclass(frozen=True)
class Quality:
    low: float  # min cosine over every set
    mean: float  # mean cosine over the union
    top10: float  # share of the same 10 nearest neighbours over the union
    moved: float  # max |alone - in runs|
    per_set: dict[str, tuple[float, float]]

    def passes(self) -> bool:
        return self.mean >= BAR["mean"] and self.low >= BAR["min"] and self.top10 >= BAR["top10"]


def eval_sets(data: Path) -> dict[str, list[str]]:
    rng = random.Random(2)
    dev = [row.split("\t")[0] for row in (data / "dev.tsv").read_text().splitlines() if row.strip()]
    rows = (Path(__file__).parent / "data" / "chat_emotions.tsv").read_text().splitlines()[1:]
    chats = generate(1)
    turns = sorted({t.text for chat in chats for t in chat.turns})
    sets = {
        "goemotions dev": rng.sample(dev, 400),
        "chat lines": [row.split("\t")[2] for row in rows],
        "recall turns+questions": rng.sample(turns, 400) + [q.text for c in chats for q in c.questions],
        "role-play 3-256 tok": [CHAT["bot_turn"].format(n=i) for i in range(20)]
        + [text_of(rng.randint(3, 256), CHAT["user_turn"].format(n=i)) for i in range(100)],
    }
    kept: dict[str, str] = {}  # each distinct text once, in the first set that has it
    for name, texts in sets.items():
        for t in texts:
            kept.setdefault(t, name)
    return {name: [t for t, first in kept.items() if first == name] for name in sets}


def neighbours(v: np.ndarray) -> np.ndarray:
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1)[:, :10]


class Judge:
    """fp32 reference vectors once; each variant's quality against them."""

    def __init__(self, fp32: OnnxMiniLMEmbedder, sets: dict[str, list[str]], *, alone: bool = False) -> None:
        self.sets, self.alone = sets, alone
        self.texts = [t for texts in sets.values() for t in texts]
        self.reference = np.array(fp32._embed(self.texts), dtype=np.float64)
        self.near = neighbours(self.reference)
        self.probe = random.Random(3).sample(self.texts, 64)

    def __call__(self, model: OnnxMiniLMEmbedder) -> Quality:
        if self.alone:
            got = np.array([model._embed([t])[0] for t in self.texts], dtype=np.float64)
        else:
            got = np.array(model._embed(self.texts), dtype=np.float64)
        cos = (got * self.reference).sum(axis=1) / np.linalg.norm(got, axis=1)
        per_set, start = {}, 0
        for name, texts in self.sets.items():
            part = cos[start : start + len(texts)]
            per_set[name], start = (float(part.min()), float(part.mean())), start + len(texts)
        same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(self.near, neighbours(got), strict=True)])
        alone = np.array([model._embed([t])[0] for t in self.probe])
        moved = float(np.abs(alone - np.array(model._embed(self.probe))).max())
        return Quality(float(cos.min()), float(cos.mean()), float(same), moved, per_set)


def cpu_ratios(models: dict[str, OnnxMiniLMEmbedder], reps: int) -> dict[str, list[float]]:
    """CPU ms per call at each of LENGTHS, every model alternating call by call; ratio to the first."""
    texts = [text_of(n) for n in LENGTHS]
    spent: dict[tuple[str, int], list[float]] = {(m, i): [] for m in models for i in range(len(texts))}
    for rep in range(reps):
        for name in list(models) if rep % 2 else list(models)[::-1]:
            for i, text in enumerate(texts):
                started = time.thread_time()
                models[name]._embed([text])
                spent[(name, i)].append(1000 * (time.thread_time() - started))
    base = next(iter(models))
    medians = {key: statistics.median(v) for key, v in spent.items()}
    return {
        m: [medians[(m, i)] for i in range(len(texts))]
        + [medians[(m, i)] / medians[(base, i)] for i in range(3)]
        for m in models
    }


def table(title: str, judge: Judge, paths: dict[str, Path], reps: int) -> dict[str, Quality]:
    """Quality and CPU of each graph against fp32 (and an fp32 control), printed as one table."""
    fp32 = cached_graph()
    models = {
        "fp32": OnnxMiniLMEmbedder.from_file(fp32),
        "fp32 again (control)": OnnxMiniLMEmbedder.from_file(fp32),
    }
    models.update({name: OnnxMiniLMEmbedder.from_file(path) for name, path in paths.items()})
    found = {name: judge(models[name]) for name in paths}
    cpu = cpu_ratios(models, reps)
    print(f"\n{title}")
    print(
        f"  {'variant':<34}{'cos min':>8}{'mean':>8}{'top-10':>8}{'alone vs runs':>14}"
        + "".join(f"{f'{n} tok ms (x)':>18}" for n in LENGTHS)
    )
    for name in models:
        q = found.get(name)
        cells = f"{q.low:8.4f}{q.mean:8.4f}{q.top10:8.3f}{q.moved:14.1e}" if q else f"{'':38}"
        times = "".join(f"{cpu[name][i]:10.2f} {cpu[name][3 + i]:5.2f}x " for i in range(3))
        print(f"  {name:<34}{cells}{times}{'  PASS' if q and q.passes() else ''}")
    for name, q in found.items():
        sets = "  ".join(f"{s[:14]} {lo:.3f}/{me:.4f}" for s, (lo, me) in q.per_set.items())
        print(f"    {name:<32} min/mean by set: {sets}")
    return found


def greedy(judge: Judge, single: dict[str, Quality], build: Build) -> list[str]:
    """Add groups least damaging per multiply-add first; keep each one only if the mix still passes."""

    def cost(name: str) -> float:
        q = single[name]
        return ((1 - q.mean) + (1 - q.top10) / 10) / graphs.share(graphs.groups()[name])

    chosen: list[str] = []
    for name in sorted(single, key=cost):
        trial = [*chosen, name]
        nodes = [n for g in trial for n in graphs.groups()[g]]
        q = judge(OnnxMiniLMEmbedder.from_file(build(nodes, f"mix{len(trial)}-{name.replace(' ', '_')}")))
        verdict = "kept" if q.passes() else "dropped"
        share = graphs.share(nodes)
        print(
            f"  + {name:<14} share {share:5.1%} cos {q.low:.4f}/{q.mean:.4f}  top-10 {q.top10:.3f}  {verdict}"
        )
        if q.passes():
            chosen = trial
    return chosen


def schemes(fp32: Path, pre: Path, cache: Path, out: Path) -> dict[str, Path]:
    every = graphs.every_node()
    no_ffn_out = [n for n in every if not n.endswith("/output/dense/MatMul")]
    return {
        "static QDQ per-channel": graphs.static(pre, cache, out / "s-qdq-pc.onnx", every),
        "static QDQ per-tensor": graphs.static(pre, cache, out / "s-qdq-pt.onnx", every, per_channel=False),
        "static QOperator per-channel": graphs.static(pre, cache, out / "s-qop-pc.onnx", every, qdq=False),
        "static QOperator per-tensor": graphs.static(
            pre, cache, out / "s-qop-pt.onnx", every, per_channel=False, qdq=False
        ),
        "static QDQ per-ch., FFN out fp32": graphs.static(
            pre, cache, out / "s-qdq-pc-noffo.onnx", no_ffn_out
        ),
        "dynamic per-channel": graphs.dynamic(pre, out / "d-pc.onnx", every),
        "dynamic per-tensor": graphs.dynamic(pre, out / "d-pt.onnx", every, per_channel=False),
        "blockwise int8 b32 (int8 compute)": graphs.blockwise(fp32, out / "nb8-32.onnx", every),
        "blockwise int8 b128 (int8 compute)": graphs.blockwise(fp32, out / "nb8-128.onnx", every, block=128),
        "blockwise int4 b32 (int8 compute)": graphs.blockwise(fp32, out / "nb4-32.onnx", every, bits=4),
        "blockwise int8 b32 (fp32 compute)": graphs.blockwise(fp32, out / "nb8-32-l1.onnx", every, level=1),
    }


def sensitivity(build: Build, label: str, judge: Judge, reps: int) -> dict[str, Quality]:
    """One group (and one whole layer) at a time in `build`'s scheme: a table per layer."""
    single: dict[str, Quality] = {}
    for layer in graphs.LAYERS:
        paths = {
            f"L{layer} {part}": build(graphs.group(layer, part), f"g{layer}-{part}") for part in graphs.PARTS
        }
        whole = [n for part in graphs.PARTS for n in graphs.group(layer, part)]
        paths[f"L{layer} whole layer"] = build(whole, f"layer{layer}")
        found = table(f"2. {label}, layer {layer} alone", judge, paths, reps)
        single.update({k: v for k, v in found.items() if "whole" not in k})
    return single


def main(data: Path, out: Path, reps: int, phases: set[str], scheme: str) -> None:
    fp32 = cached_graph()
    started = time.perf_counter()
    pre, cache = graphs.prepared(fp32, out, graphs.calibration_texts(data))
    print(f"calibrated in {time.perf_counter() - started:.0f} s; graphs in {out}; load {os.getloadavg()}")
    alone = scheme == "dynamic"  # its vectors depend on batch-mates: only ever run texts alone
    judge = Judge(OnnxMiniLMEmbedder.from_file(fp32), eval_sets(data), alone=alone)
    print({name: len(texts) for name, texts in judge.sets.items()}, "texts", "(each alone)" if alone else "")
    if "schemes" in phases:
        table("1. schemes, every weight MatMul", judge, schemes(fp32, pre, cache, out), reps)
    if "confirm" in phases:  # the candidates again, side by side, once the greedy runs have built them
        kept = {name: out / f for name, f in CONFIRM.items() if (out / f).exists()}
        table("4. the candidates again, side by side", judge, kept, 2 * reps)
    if "greedy" not in phases:
        return

    def static(nodes: list[str], name: str) -> Path:
        return graphs.static(pre, cache, out / f"{name}.onnx", nodes)

    def dynamic(nodes: list[str], name: str) -> Path:
        return graphs.dynamic(pre, out / f"d-{name}.onnx", nodes)

    build: Build = dynamic if alone else static
    label = "dynamic per channel" if alone else "static QDQ per channel"
    single = sensitivity(build, label, judge, reps)
    print(f"\n3. greedy mix ({label})")
    chosen = greedy(judge, single, build)
    nodes = [n for g in chosen for n in graphs.groups()[g]]
    print(f"  mix: {sorted(chosen)} ({graphs.share(nodes):.1%} of the weight multiply-adds)")
    if chosen:
        table(f"3. the greedy mix ({label})", judge, {"greedy mix": build(nodes, "mix")}, 2 * reps)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="GoEmotions folder (train.tsv, dev.tsv)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "anima-int8-layers")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument(
        "--phases", default="schemes,greedy", help="comma-separated: schemes, greedy, confirm"
    )
    parser.add_argument("--scheme", choices=("static", "dynamic"), default="static", help="for greedy")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    main(args.data, args.out, args.reps, set(args.phases.split(",")), args.scheme)
