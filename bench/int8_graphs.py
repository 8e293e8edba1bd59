"""int8 variants of the recall embedder's graph, for bench/int8_layers.py: which MatMuls, which scheme.

Three schemes, each applied to any subset of the 24 weight MatMuls (6 layers x QKV, attention output,
FFN in, FFN out; the two activation x activation attention MatMuls stay fp32):
- static: `quantize_static`, activations at scales calibrated once (MinMax over calibration texts fed
  one at a time, unpadded, so padding rows cannot widen a range), QDQ or QOperator, weights per channel
  or per tensor. Fixed scales: a vector does not depend on its batch-mates.
- dynamic: `quantize_dynamic`, an activation's scale taken per call over the whole batch tensor, so a
  vector moves with its batch-mates (unless every text runs alone).
- blockwise (`MatMulNBits`, written here with numpy: onnxruntime's own writer needs the `onnx_ir` package):
  weights int8 (or int4) in blocks of `block` along K with one scale each; with accuracy_level 4 the
  kernel quantises each activation row in blocks of K too, at run time, so every token row has its own
  scales and nothing depends on other rows or batch-mates.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bench.long_chats import generate
from bench.worker_encode import CHAT, text_of
from memory.embedder import _load_tokenizer

PARTS = {
    "qkv": ("attention/self/query", "attention/self/key", "attention/self/value"),
    "attn-out": ("attention/output/dense",),
    "ffn-in": ("intermediate/dense",),
    "ffn-out": ("output/dense",),
}
MACS = {"qkv": 3 * 384 * 384, "attn-out": 384 * 384, "ffn-in": 384 * 1536, "ffn-out": 1536 * 384}
LAYERS = range(6)


def group(layer: int, part: str) -> list[str]:
    """The MatMul node names of one part of one layer (as the export names them)."""
    return [f"/encoder/layer.{layer}/{p}/MatMul" for p in PARTS[part]]


def groups() -> dict[str, list[str]]:
    """Every (layer, part) group, e.g. "L3 ffn-out"."""
    return {f"L{i} {part}": group(i, part) for i in LAYERS for part in PARTS}


def share(nodes: Sequence[str]) -> float:
    """Share of the weight MatMuls' multiply-adds these nodes hold (attention scores excluded)."""
    chosen = set(nodes)
    total = sum(MACS.values()) * len(LAYERS)
    return sum(MACS[part] for i in LAYERS for part in PARTS if set(group(i, part)) <= chosen) / total


def every_node() -> list[str]:
    return [n for nodes in groups().values() for n in nodes]


def calibration_texts(data: Path, n: int = 256) -> list[str]:
    """GoEmotions *train* lines, turns of another seed of the recall generator, role-play replies."""
    lines = [row.split("\t")[0] for row in (data / "train.tsv").read_text().splitlines() if row.strip()]
    rng = random.Random(1)
    rng.shuffle(lines)
    turns = [t.text for chat in generate(7) for t in chat.turns]
    replies = [text_of(rng.randint(20, 256), CHAT["user_turn"].format(n=900 + i)) for i in range(32)]
    return lines[:n] + rng.sample(turns, 64) + replies


def calibrate(pre: Path, texts: list[str], cache: Path) -> None:
    """Activation ranges of every MatMul input, once, into `cache` (quantize_static reads it back)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    tokenizer = _load_tokenizer(truncate_at=256)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.texts = iter(texts)

        def get_next(self) -> dict[str, Any] | None:
            text = next(self.texts, None)
            if text is None:
                return None
            ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
            return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    quantize_static(
        str(pre),
        str(cache.with_suffix(".onnx")),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
        calibration_cache_path=cache,
    )


def prepared(fp32: Path, folder: Path, calibration: list[str]) -> tuple[Path, Path]:
    """The shape-inferred copy quantize_static wants, and its calibration cache (both made once)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, cache = folder / "pre.onnx", folder / "calibration.json"
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    if not cache.exists():
        calibrate(pre, calibration, cache)
    return pre, cache


def static(
    pre: Path, cache: Path, target: Path, nodes: Sequence[str], *, per_channel: bool = True, qdq: bool = True
) -> Path:
    """Static int8 of `nodes` (uint8 activations, int8 weights) from the cached calibration."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)
    if not target.exists():
        quantize_static(
            str(pre),
            str(target),
            None,
            quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=list(nodes),
            extra_options={"MatMulConstBOnly": True},
            calibration_cache_path=cache,
        )
    return target


def dynamic(pre: Path, target: Path, nodes: Sequence[str], *, per_channel: bool = True) -> Path:
    """Dynamic int8 of `nodes`: activation scales per call, over the whole batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not target.exists():
        quantize_dynamic(
            str(pre),
            str(target),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=list(nodes),
            extra_options={"MatMulConstBOnly": True},
        )
    return target


def blockwise(
    fp32: Path, target: Path, nodes: Sequence[str], *, bits: int = 8, block: int = 32, level: int = 4
) -> Path:
    """`nodes` as MatMulNBits: symmetric `bits`-bit weights per block of `block` inputs (zero point
    2^(bits-1), the op's default); `level` 4 computes in int8 with per-row blocked activation scales."""
    if target.exists():
        return target
    model = onnx.load(str(fp32))
    weights = {i.name: i for i in model.graph.initializer}
    chosen, replaced = set(nodes), []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name not in chosen:
            replaced.append(node)
            continue
        packed, scales = _blocks(numpy_helper.to_array(weights[node.input[1]]), bits, block)
        names = (f"{node.input[1]}_q{bits}", f"{node.input[1]}_scales")
        model.graph.initializer.extend(
            [numpy_helper.from_array(packed, names[0]), numpy_helper.from_array(scales, names[1])]
        )
        k, n = weights[node.input[1]].dims
        replaced.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *names],
                list(node.output),
                name=node.name + "_nbits",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=bits,
                block_size=block,
                accuracy_level=level,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(replaced)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(target))
    return target


def _blocks(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A [K, N] weight as MatMulNBits stores it: [N, K/block, block*bits/8] bytes and N*K/block scales."""
    k, n = weight.shape
    per = -(-k // block)
    columns = np.zeros((n, per * block), dtype=np.float32)
    columns[:, :k] = weight.T
    blocks = columns.reshape(n, per, block)
    top = 2 ** (bits - 1) - 1
    scales = np.abs(blocks).max(axis=2) / top
    scales[scales == 0] = 1.0
    q = (np.clip(np.rint(blocks / scales[..., None]), -top - 1, top) + top + 1).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scales.astype(np.float32).reshape(-1)
