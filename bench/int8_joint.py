"""The joint emotion + recall graph (emotion/joint.py) with the same blockwise int8 as the recall embedder:
do its recall vectors match the int8 embedder's (stored and query vectors must come from the same
numbers), how far do its emotion scores move (the trunk is shared), and what does the request's one
pass cost? Side by side with the fp32 joint graph, one thread, CPU per call (median), calls alternating.
Run: .venv/bin/python bench/int8_joint.py [--layers 0,1,2,3,4,5] [--reps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench import int8_graphs as graphs
from bench.joint import MESSAGES
from bench.worker_encode import CHAT, text_of
from emotion import joint
from emotion.joint import JointEncoder
from emotion.labels import prepare_text
from memory import model_cache
from memory.embedder import OnnxMiniLMEmbedder, cached_graph


def joint_names(nodes: list[str], frozen: int) -> list[str]:
    """The embedder's MatMul names as the joint graph calls them: the trunk's layers, then recall's."""
    renamed = []
    for name in nodes:
        layer = int(name.split("/")[2].removeprefix("layer."))
        where = f"trunk.{layer}" if layer < frozen else f"recall.{layer - frozen}"
        renamed.append(name.replace(f"encoder/layer.{layer}", where))
    return renamed


def main(layers: list[int], out: Path, reps: int) -> None:
    nodes = [n for i in layers for part in graphs.PARTS for n in graphs.group(i, part)]
    frozen = joint.frozen_layers()
    found = model_cache.find(joint.graph_name())
    assert found is not None, "`anima models build` first"
    tag = "".join(map(str, layers))
    embed_q = graphs.blockwise(cached_graph(), out / f"embed-nb8-{tag}.onnx", nodes)
    joint_q = graphs.blockwise(found, out / f"joint-nb8-{tag}.onnx", joint_names(nodes, frozen))
    embedder = OnnxMiniLMEmbedder.from_file(embed_q)
    encoders = {"joint fp32": JointEncoder.from_file(found), "joint int8": JointEncoder.from_file(joint_q)}
    texts = MESSAGES + [CHAT["user_turn"].format(n=i) for i in range(20)] + [text_of(40), text_of(120)]
    emotion_texts = [prepare_text(t) for t in texts]
    (s32, _), (s8, v8) = (encoders[k].run(emotion_texts, texts) for k in encoders)
    alone = np.array(embedder._embed(texts))
    print(f"layers {layers} (trunk = the lowest {frozen}); load {os.getloadavg()}")
    print(f"joint int8 recall vectors vs int8 embedder: max |diff| {np.abs(v8 - alone).max():.1e}")
    print(f"joint int8 emotion scores vs fp32: max |diff| {np.abs(s8 - s32).max():.4f}")
    spent: dict[tuple[str, int], list[float]] = {(k, i): [] for k in encoders for i in range(len(MESSAGES))}
    for rep in range(reps):
        for name in list(encoders) if rep % 2 else list(encoders)[::-1]:
            for i, text in enumerate(MESSAGES):
                started = time.thread_time()
                encoders[name].run([prepare_text(text)], [text])
                spent[(name, i)].append(1000 * (time.thread_time() - started))
    base = [statistics.median(spent[("joint fp32", i)]) for i in range(len(MESSAGES))]
    for name in encoders:
        ms = [statistics.median(spent[(name, i)]) for i in range(len(MESSAGES))]
        ratio = sum(ms) / sum(base)
        per_line = " ".join(f"{m:.1f}" for m in ms)
        print(f"  {name:<12} CPU ms per line {per_line}  total {sum(ms):.1f} ({ratio:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="0,1,2,3,4,5", help="encoder layers in blockwise int8")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "anima-int8-layers")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    main([int(i) for i in args.layers.split(",")], args.out, args.reps)
