"""One encoder pass for a message that needs both its emotion and its recall vector.

The emotion model is the package's MiniLM with its word embeddings and lowest `frozen_layers`
(emotion/model/meta.json; 2 when absent) left as shipped, so up to there both models compute the same
thing. The joint graph runs that shared trunk once per distinct token sequence, then two branches:
the package's upper layers + mean pooling + L2 norm (the recall embedding, as memory/embedder.py's
graph) and the tuned upper layers + head (the emotion scores, as detector.py's graph). `embed_rows`
and `emotion_rows` pick which trunk rows each branch reads, so a text whose emotion input tokenizes
as its recall input (no emoji, asterisks or emoticons to spell out, short enough) runs the trunk once;
one that differs still costs a single `run()`. Built at install (`anima models build`), never at serve.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emotion.classifier import PROBES, classifier
from emotion.detector import MAX_TOKENS, MODEL_DIR, model_meta
from emotion.labels import prepare_text
from memory import embedder, model_cache, onnx_export
from memory.embedder import _encode_batch, _load_tokenizer, _max_seq_length, _model_dir, _session, padded

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

log = logging.getLogger("anima.emotion")

OUTPUTS = ("sentence_embedding", "scores")
_REVISION = 1  # bump when _export() changes what it writes


def frozen_layers(model_dir: Path = MODEL_DIR) -> int:
    """How many of the lowest layers training left as shipped (the shared trunk's depth)."""
    return int(model_meta(model_dir).get("frozen_layers", 2))


def graph_name(model_dir: Path = MODEL_DIR) -> str:
    """Changes with the emotion weights, the frozen depth and the embedder's own graph name."""
    meta = model_meta(model_dir)
    key = [meta["weights_sha256"], frozen_layers(model_dir), embedder.graph_name(), _REVISION]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    return f"joint-minilm-{digest}.onnx"


def build_graph(target: Path, model_dir: Path = MODEL_DIR) -> None:
    """Install-time step (`anima models build`): export the joint graph to `target` (needs torch)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _export(target, model_dir)


def _export(target: Path, model_dir: Path) -> None:
    """Trunk + two branches from the two torch models, checked against each of them alone."""
    import torch
    from transformers import BertModel

    frozen = frozen_layers(model_dir)
    base: Any = BertModel.from_pretrained(str(_model_dir()), attn_implementation="eager")
    base.eval()
    tuned = classifier(model_dir)
    _check_shared(base, tuned.encoder, frozen)

    def run(layers: Any, x: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            out = layer(x, attention_mask=additive)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    class Joint(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings, self.head = base.embeddings, tuned.head
            self.trunk = torch.nn.ModuleList(base.encoder.layer[:frozen])
            self.recall = torch.nn.ModuleList(base.encoder.layer[frozen:])
            self.emotion = torch.nn.ModuleList(tuned.encoder.encoder.layer[frozen:])

        def forward(self, ids: Any, mask: Any, embed_rows: Any, emotion_rows: Any) -> tuple[Any, Any]:
            x = self.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
            m = mask.to(x.dtype)
            additive = (1.0 - m).unsqueeze(1).unsqueeze(2) * torch.finfo(x.dtype).min
            x = run(self.trunk, x, additive)
            a, am = x.index_select(0, embed_rows), m.index_select(0, embed_rows)
            b, bm = x.index_select(0, emotion_rows), m.index_select(0, emotion_rows)
            a = run(self.recall, a, additive.index_select(0, embed_rows))
            b = run(self.emotion, b, additive.index_select(0, emotion_rows))
            vector = torch.nn.functional.normalize(pooled(a, am), p=2.0, dim=1)
            return vector, torch.sigmoid(self.head(pooled(b, bm)))

    texts = [prepare_text(p) for p in PROBES]
    ids, mask = _encode_batch(_load_tokenizer(truncate_at=MAX_TOKENS), texts)  # padded: mask is traced
    rows = np.arange(len(texts), dtype=np.int64)
    with torch.no_grad():
        tokens = (torch.from_numpy(ids), torch.from_numpy(mask))
        alone = [embedding_model(base)(*tokens).numpy(), tuned(*tokens).numpy()]
    onnx_export.export_onnx(
        Joint().eval(),
        {"input_ids": ids, "attention_mask": mask, "embed_rows": rows, "emotion_rows": rows[::-1].copy()},
        {"sentence_embedding": {0: "embed_rows"}, "scores": {0: "emotion_rows"}},
        target,
        agrees=lambda got, _: _close(got[0], alone[0]) and _close(got[1], alone[1][::-1]),
        stale="joint-minilm-*.onnx",
    )


def _close(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.shape == expected.shape and float(np.abs(got - expected).max()) <= 1e-4


def _check_shared(base: Any, tuned: Any, frozen: int) -> None:
    """The contract the trunk relies on: the tuned model's embeddings and lowest layers are the package's."""
    own = base.state_dict()
    for name, value in tuned.state_dict().items():
        shared = name.startswith("embeddings.") or any(
            name.startswith(f"encoder.layer.{i}.") for i in range(frozen)
        )
        if shared and not bool((own[name] == value).all()):
            raise RuntimeError(
                f"the emotion model changed {name}: it does not share the first {frozen} layers"
            )


def embedding_model(bert: Any) -> Any:
    """The recall embedder in torch, as memory/embedder.py exports it (for the agreement check)."""
    import torch

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(
            onnx_export.mean_pooled(bert, input_ids, attention_mask), p=2.0, dim=1
        )

    return forward


class JointEncoder:
    """The joint graph on one thread: emotion scores and recall vectors from one `run()`."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session
        self._emotion: Tokenizer = _load_tokenizer(truncate_at=MAX_TOKENS)
        self._recall: Tokenizer = _load_tokenizer(truncate_at=_max_seq_length())

    @classmethod
    def open(cls, model_dir: Path = MODEL_DIR) -> JointEncoder | None:
        """The joint graph from the shared model cache, or None (and a hint) when install did not build it."""
        found = model_cache.find(graph_name(model_dir))
        if found is None:
            log.info("no joint emotion+recall graph in the model cache: `anima models build` adds it")
            return None
        return cls.from_file(found)

    @classmethod
    def from_file(cls, model_file: Path) -> JointEncoder:
        joint = cls(_session(model_file))
        joint.run(["Warming up."], ["Warming up."])  # the first run allocates: not on a user's request
        return joint

    def run(self, emotion_texts: list[str], recall_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities for `emotion_texts` (prepared: emoji as words) and unit vectors for
        `recall_texts` (as written); a token sequence both need goes through the trunk once."""
        vectors, scores = self._session.run(list(OUTPUTS), self.feed(emotion_texts, recall_texts))
        return scores, vectors

    def feed(self, emotion_texts: list[str], recall_texts: list[str]) -> dict[str, np.ndarray]:
        """The graph's inputs: each distinct token sequence once (emotion reads at most 128 tokens,
        recall 256), and which of them each branch reads."""
        sequences: dict[tuple[int, ...], int] = {}

        def rows(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
            ids = [tuple(tokenizer.encode(t).ids) for t in texts]
            return np.array([sequences.setdefault(i, len(sequences)) for i in ids], dtype=np.int64)

        emotion_rows, embed_rows = rows(self._emotion, emotion_texts), rows(self._recall, recall_texts)
        ids, mask = padded(list(sequences))
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "embed_rows": embed_rows,
            "emotion_rows": emotion_rows,
        }
