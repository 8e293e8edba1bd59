"""The MiniLM graphs as onnxruntime's offline transformer optimizer fuses them, against the shipped export
(issue 15, "Fused encoder graphs" in docs/benchmarks.md): every variant side by side in one run, one thread.

Variants of the recall embedder's graph: the shipped export under `ORT_ENABLE_ALL` (what serving runs),
the same again in a second session (the run's noise floor), `ORT_ENABLE_BASIC`, its
`ORT_ENABLE_EXTENDED` result saved at build time, denormals as zero; `optimize_model(model_type="bert")`
on the shipped export (SkipLayerNorm, BiasGelu: its Attention does not fuse), and on a re-export that
lets Attention fuse (`_reexport`): Attention only, and every fusion. The joint graph (emotion/joint.py,
the request's pass) with and without the optimizer's fusions.

Prints the fused op counts (the optimizer's, and what `ORT_ENABLE_ALL` leaves in each graph), session
start-up CPU, per-call CPU (median) and wall p50/p95 for short lines and long replies with each variant's
ratio to the shipped graph (alternating, same inputs), kernel time per op type, and how far each variant
moves vectors and emotion scores over ~300 chat lines and replies, alone and batched.
Run: .venv/bin/python bench/encoder_graphs.py [--reps N] (about 4 minutes; needs torch for the re-export).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script: make sure nothing is fetched

import numpy as np
import onnx
import onnxruntime

from bench.worker_encode import CHAT, TOKENIZER, feed, text_of
from emotion import joint
from emotion.joint import JointEncoder
from emotion.labels import prepare_text
from memory import embedder, model_cache
from memory.embedder import _encode_batch, cached_graph

LINES = [
    row.split("\t")[2]
    for row in (Path(__file__).parent / "data" / "chat_emotions.tsv").read_text().splitlines()[1:]
]
LENGTHS = (12, 25, 40, 158, 256)
FUSED = (
    "Attention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
    "FusedMatMul",
    "LayerNormalization",
)
Options = dict[str, str]


def corpus() -> list[str]:
    """~300 texts: the chat lines of bench/data (actions, emoji, sarcasm, other languages) and role-play
    lines and replies of 3-256 tokens."""
    rng = random.Random(15)
    made = [text_of(rng.randint(3, 256), CHAT["user_turn"].format(n=i)) for i in range(100)]
    return LINES + [CHAT["bot_turn"].format(n=i) for i in range(20)] + made


def session(path: Path, level: str = "ALL", config: Options | None = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimized(source: Path, target: Path, **disable: bool) -> Path:
    """`optimize_model` as a build step would run it; `disable` turns fusions off (FusionOptions names)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name, off in disable.items():
        setattr(options, name, not off)
    model = optimize_model(str(source), "bert", num_heads=12, hidden_size=384, optimization_options=options)
    counts = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    print(f"  optimizer fused in {target.name}: {counts}")
    model.save_model_to_file(str(target))
    return target


def runtime_ops(path: Path, folder: Path) -> dict[str, int]:
    """What `ORT_ENABLE_ALL` leaves: the fused op types in the graph onnxruntime actually runs."""
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(folder / f"rt-{path.name}")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {op: ops[op] for op in FUSED if ops[op]}


def saved_extended(source: Path, target: Path) -> Path:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target


def _reexport(target: Path) -> None:
    """The embedder exported with the mask built in the matcher's order (Unsqueeze before Sub) and the
    attention scale as a Div: transformers' eager attention scales with a Mul beside the mask's Mul and
    the matcher takes the first Mul parent, so on the shipped export Attention never fuses."""
    import torch
    from onnx import numpy_helper

    from memory import onnx_export

    def mean_pooled(bert: Any, input_ids: Any, attention_mask: Any) -> Any:
        x = bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        hidden = bert.encoder(x, attention_mask=additive).last_hidden_state
        weights = attention_mask.to(x.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    original, onnx_export.mean_pooled = onnx_export.mean_pooled, mean_pooled
    try:
        embedder.build_graph(target)
    finally:
        onnx_export.mean_pooled = original
    model = onnx.load(str(target))
    made = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:  # scores * 1/sqrt(d)  ->  scores / sqrt(d)
        scale = made.get(node.input[1]) if node.op_type == "Mul" and len(node.input) == 2 else None
        if "attention/self/Mul" in node.name and scale is not None and scale.op_type == "Constant":
            value = numpy_helper.to_array(scale.attribute[0].t)
            name = f"{node.name}_divisor"
            model.graph.initializer.append(numpy_helper.from_array((1.0 / value).astype(np.float32), name))
            node.op_type, node.input[1] = "Div", name
    onnx.save(model, str(target))


def embedder_variants(folder: Path) -> dict[str, tuple[Path, str, Options]]:
    shipped = cached_graph()
    reexport = folder / "reexport.onnx"
    _reexport(reexport)
    no_skip = {"enable_skip_layer_norm": True, "enable_bias_skip_layer_norm": True}
    return {
        "shipped (ORT_ENABLE_ALL)": (shipped, "ALL", {}),
        "shipped, a second session": (shipped, "ALL", {}),  # the noise floor: same graph, same options
        "shipped, ORT_ENABLE_BASIC": (shipped, "BASIC", {}),
        "shipped, EXTENDED saved at build": (saved_extended(shipped, folder / "ext.onnx"), "ALL", {}),
        "shipped, denormals as zero": (shipped, "ALL", {"session.set_denormal_as_zero": "1"}),
        "optimizer on shipped export": (optimized(shipped, folder / "opt.onnx"), "ALL", {}),
        "re-export, Attention only": (
            optimized(reexport, folder / "attn.onnx", enable_embed_layer_norm=True, **no_skip),
            "ALL",
            {},
        ),
        "re-export, every fusion": (optimized(reexport, folder / "all.onnx"), "ALL", {}),
    }


def cpu_wall(run: Callable[[], Any]) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    run()
    return (time.thread_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


def latency(
    sessions: dict[str, onnxruntime.InferenceSession], feeds: dict[str, dict[str, np.ndarray]], reps: int
) -> None:
    """CPU median and wall p50/p95 per call, variants alternating call by call, ratio to the first."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = collections.defaultdict(list)
    for rep in range(reps):
        for name in list(sessions) if rep % 2 else list(sessions)[::-1]:
            for label, inputs in feeds.items():
                s = sessions[name]
                samples[(name, label)].append(cpu_wall(lambda: s.run(None, inputs)))  # noqa: B023
    base = next(iter(sessions))
    print(f"  {'CPU ms (ratio) | wall p50/p95':<34}" + "".join(f"{label:>26}" for label in feeds))
    for name in sessions:
        row = ""
        for label in feeds:
            cpu = statistics.median(c for c, _ in samples[(name, label)])
            ratio = cpu / statistics.median(c for c, _ in samples[(base, label)])
            q = statistics.quantiles([w for _, w in samples[(name, label)]], n=20)
            row += f"{cpu:7.2f} {ratio:4.2f}x {q[9]:5.1f}/{q[18]:5.1f}"
        print(f"  {name:<34}{row}")


def kernel_ms(
    s: onnxruntime.InferenceSession, inputs: dict[str, np.ndarray], folder: Path, runs: int = 20
) -> dict[str, float]:
    """Kernel time per op type (onnxruntime's profiler) for one input, ms per call."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling, options.profile_file_prefix = True, str(folder / "profile")
    profiled = onnxruntime.InferenceSession(s._model_path, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        profiled.run(None, inputs)
    spent: collections.Counter[str] = collections.Counter()
    for event in json.loads(Path(profiled.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"] / runs / 1000
    return dict(spent.most_common(7))


def startup_ms(variants: dict[str, tuple[Path, str, Options]], rounds: int = 3) -> dict[str, float]:
    """Process CPU to open each variant's session (graph load + online optimisation), alternating."""
    spent: dict[str, list[float]] = collections.defaultdict(list)
    for rep in range(rounds):
        for name in list(variants) if rep % 2 else list(variants)[::-1]:
            started = time.process_time()
            session(*variants[name])
            spent[name].append((time.process_time() - started) * 1000)
    return {name: statistics.median(ms) for name, ms in spent.items()}


def vectors(s: onnxruntime.InferenceSession, texts: list[str], *, batched: bool) -> np.ndarray:
    """Each text's vector, alone or in runs of 8 by length (as the worker pads them), in input order."""
    if not batched:
        return np.concatenate(
            [
                s.run(
                    None,
                    dict(zip(("input_ids", "attention_mask"), _encode_batch(TOKENIZER, [t]), strict=True)),
                )[0]
                for t in texts
            ]
        )
    order = sorted(range(len(texts)), key=lambda i: len(TOKENIZER.encode(texts[i]).ids))
    out = np.zeros((len(texts), embedder.EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(order), 8):
        run = order[start : start + 8]
        ids, mask = _encode_batch(TOKENIZER, [texts[i] for i in run])
        out[run] = s.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return out


def moved(got: np.ndarray, reference: np.ndarray) -> str:
    a, b = got.astype(np.float64), reference.astype(np.float64)  # float32 dot products round to ~1e-7
    cosine = float(((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
    return f"max |diff| {float(np.abs(got - reference).max()):.1e}, min cosine {cosine:.8f}"


def embedder_section(folder: Path, reps: int) -> None:
    variants = embedder_variants(folder)
    for path in dict.fromkeys(p for p, _, _ in variants.values()):
        print(f"  ORT_ENABLE_ALL runs {path.name}: {runtime_ops(path, folder)}")
    print("  session start-up CPU ms:", {k: round(v) for k, v in startup_ms(variants).items()})
    sessions = {name: session(*v) for name, v in variants.items()}
    feeds = {f"{n} tokens": feed([text_of(n)]) for n in LENGTHS}
    feeds["8 lines of 14-24"] = feed([text_of(n) for n in (14, 16, 18, 19, 20, 21, 22, 24)])
    print("\n1. recall embedder, one call")
    latency(sessions, feeds, reps)
    reply = feeds["158 tokens"]
    for name in ("shipped (ORT_ENABLE_ALL)", "re-export, every fusion"):
        print(
            f"  kernel ms by op, 158 tokens, {name}:",
            {k: round(v, 2) for k, v in kernel_ms(sessions[name], reply, folder).items()},
        )
    texts = corpus()
    reference = vectors(sessions["shipped (ORT_ENABLE_ALL)"], texts, batched=False)
    print(f"\n2. vectors against the shipped graph's, {len(texts)} texts alone / in runs of 8")
    for name, s in sessions.items():
        alone, batched = vectors(s, texts, batched=False), vectors(s, texts, batched=True)
        print(f"  {name:<34} alone: {moved(alone, reference)}; batched: {moved(batched, reference)}")


def joint_section(folder: Path, reps: int) -> None:
    shipped = model_cache.find(joint.graph_name())
    if shipped is None:
        print("\n3. no joint graph in the model cache: `anima models build`")
        return
    variants: dict[str, tuple[Path, str, Options]] = {
        "joint shipped": (shipped, "ALL", {}),
        "joint + optimizer": (optimized(shipped, folder / "joint.onnx"), "ALL", {}),
    }
    ops = runtime_ops(variants["joint + optimizer"][0], folder)
    print(f"  ORT_ENABLE_ALL runs the joint + optimizer graph: {ops}")
    sessions = {name: session(*v) for name, v in variants.items()}
    encoder = JointEncoder(sessions["joint shipped"])
    lines = ["ok", "yesss we won the match 🙌🎉", CHAT["user_turn"].format(n=4), text_of(40, "I told you")]
    feeds = {line[:18]: encoder.feed([prepare_text(line)], [line]) for line in lines}
    print("\n3. joint emotion + recall pass, one user line")
    latency(sessions, feeds, reps)
    texts = corpus()
    batches = [texts[i : i + 8] for i in range(0, len(texts), 8)]
    for label, groups in (("alone", [[t] for t in texts]), ("in batches of 8", batches)):
        got: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        for group in groups:
            inputs = encoder.feed([prepare_text(t) for t in group], group)
            for name, s in sessions.items():
                got[name] += s.run(list(joint.OUTPUTS), inputs)
        vec = [np.concatenate(got[name][0::2]) for name in sessions]
        prob = [np.concatenate(got[name][1::2]) for name in sessions]
        diff = float(np.abs(prob[1] - prob[0]).max())
        print(f"  optimizer vs shipped, {label}: vectors {moved(vec[1], vec[0])}; max |prob diff| {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40, help="alternating calls per variant and input (40)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        embedder_section(Path(tmp), args.reps)
        joint_section(Path(tmp), args.reps)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
