"""Exporting torch models to ONNX graphs at install time (`anima models build`): the recall embedder's
graph here, and the helpers the emotion graphs use. Needs torch; serving never imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from memory.embedder import _OPSET, _PROBES, _encode_batch, _load_tokenizer, _model_dir, _session


def export_recall_graph(target: Path) -> None:
    """Export BertModel + mean pooling + L2 norm as one graph, check it against torch, then publish it.

    Pooling lives inside the graph so one `run()` returns finished embeddings. The mask is built here
    rather than by transformers, whose mask helper branches on tensor values, which tracing would freeze.
    """
    import torch
    from transformers import BertModel

    class Pooled(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            pooled = mean_pooled(self.bert, input_ids, attention_mask)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    bert = BertModel.from_pretrained(str(_model_dir()), attn_implementation="eager")
    ids, mask = _encode_batch(_load_tokenizer(truncate_at=None), list(_PROBES))  # padded: mask is traced
    export_graph(
        Pooled(bert).eval(),
        ids,
        mask,
        target,
        output="sentence_embedding",
        agrees=lambda got, expected: float((got * expected).sum(axis=1).min()) >= 0.999,
        stale="all-MiniLM-L6-v2-*.onnx",
    )


def mean_pooled(bert: Any, input_ids: Any, attention_mask: Any) -> Any:
    """BERT's last hidden states mean-pooled over real tokens, written to trace cleanly into ONNX."""
    import torch

    x = bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
    mask = attention_mask.to(x.dtype)
    additive = (1.0 - mask).unsqueeze(1).unsqueeze(2) * torch.finfo(x.dtype).min
    hidden = bert.encoder(x, attention_mask=additive).last_hidden_state
    weights = mask.unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def export_graph(
    model: Any,
    ids: np.ndarray,
    mask: np.ndarray,
    target: Path,
    *,
    output: str,
    agrees: Callable[[np.ndarray, np.ndarray], bool],
    stale: str,
) -> None:
    """Export a torch module (token ids, mask → one output) to ONNX, check onnxruntime agrees with
    torch on the probe batch, then publish it atomically and remove older exports matching `stale`."""
    export_onnx(
        model,
        {"input_ids": ids, "attention_mask": mask},
        {output: {0: "batch"}},
        target,
        agrees=lambda got, expected: agrees(got[0], expected[0]),
        stale=stale,
    )


def export_onnx(
    model: Any,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, dict[int, str]],
    target: Path,
    *,
    agrees: Callable[[list[np.ndarray], list[np.ndarray]], bool],
    stale: str,
) -> None:
    """`export_graph` for any named inputs and outputs: token inputs get dynamic batch and sequence
    axes, other inputs a dynamic first axis; `outputs` names each output's dynamic axes."""
    import torch

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tensors = tuple(torch.from_numpy(v) for v in inputs.values())
    axes: dict[str, dict[int, str]] = {
        name: {0: "batch", 1: "sequence"} if value.ndim == 2 else {0: name} for name, value in inputs.items()
    }
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                tensors,
                str(tmp),
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=axes | outputs,
                opset_version=_OPSET,
                dynamo=False,  # the torch.export-based exporter would need the onnxscript package
            )
            expected = model(*tensors)
        expected = [t.numpy() for t in expected] if isinstance(expected, tuple) else [expected.numpy()]
        got = _session(tmp).run(list(outputs), inputs)
        if not agrees(got, expected):
            raise RuntimeError(f"ONNX export {target.name} disagrees with torch")
        os.replace(tmp, target)  # atomic: a reader sees the old file, no file, or the whole new one
        for old in target.parent.glob(stale):  # exports of older versions
            if old != target:
                old.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
