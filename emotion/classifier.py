"""The fine-tuned emotion classifier in torch and its ONNX graph: install time only (needs torch).

The package's MiniLM with the shipped tuned layers and head (emotion/model/) loaded over it;
`build_graph` exports it as the detector's graph, and emotion/joint.py builds the joint graph from the
same model. Serving only opens the graphs (emotion/detector.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emotion.detector import MAX_TOKENS, MODEL_DIR
from emotion.labels import LABELS, prepare_text
from memory.embedder import _encode_batch, _load_tokenizer, _model_dir
from memory.onnx_export import export_graph, mean_pooled

PROBES = ("I can't believe they did that to me!", "ok", "Thanks so much, this made my day :)")


def build_graph(target: Path, model_dir: Path = MODEL_DIR) -> None:
    """Install-time step (`anima models build`): export the graph to `target` (needs torch)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _export_onnx(target, model_dir)


def _export_onnx(target: Path, model_dir: Path) -> None:
    """Package MiniLM + the tuned layers and head → one graph from token ids to class probabilities."""
    model = classifier(model_dir)
    tokenizer = _load_tokenizer(truncate_at=MAX_TOKENS)
    ids, mask = _encode_batch(tokenizer, [prepare_text(p) for p in PROBES])  # padded: mask is traced
    export_graph(
        model,
        ids,
        mask,
        target,
        output="scores",
        agrees=lambda got, expected: float(np.abs(got - expected).max()) <= 1e-3,
        stale="emotion-minilm-*.onnx",
    )


def classifier(model_dir: Path = MODEL_DIR) -> Any:
    """The fine-tuned model in torch (eval mode): the package's MiniLM with the shipped tuned layers
    and head loaded over it (export time only: needs torch)."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertModel

    class Classifier(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.encoder = bert
            self.head = torch.nn.Linear(bert.config.hidden_size, len(LABELS))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.head(mean_pooled(self.encoder, input_ids, attention_mask)))

    model = Classifier(BertModel.from_pretrained(str(_model_dir()), attn_implementation="eager"))
    tuned = {name: value.float() for name, value in load_file(str(model_dir / "weights.safetensors")).items()}
    missing = set(tuned) - set(model.state_dict())
    if missing:
        raise RuntimeError(f"emotion weights do not fit the base model: {sorted(missing)[:3]}")
    model.load_state_dict(tuned, strict=False)
    return model.eval()
