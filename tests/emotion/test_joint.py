"""The joint emotion+recall graph: the same numbers as the two separate graphs, from one trunk pass."""

from __future__ import annotations

import numpy as np
import pytest

from emotion import joint
from emotion.detector import MiniLMEmotionDetector
from emotion.joint import JointEncoder
from emotion.labels import prepare_text
from memory import model_cache
from memory.embedder import Embedder

TEXTS = [
    "I can't believe you forgot my birthday again.",
    "What did we say about the trip to Lisbon last spring?",
    "yesss 🙌🎉",
    "*sighs and looks away* fine, whatever.",
    "Oh great, another Monday. :(",
    "ok",
    " ".join(f"Part {i} of a long letter about the harbour, the boats and my brother." for i in range(15)),
]


@pytest.fixture(scope="session")
def encoder() -> JointEncoder:
    """The joint graph from the shared model cache (`anima models build` puts it there; built once if not)."""
    return JointEncoder.from_file(model_cache.ensure(joint.graph_name(), joint.build_graph, "joint"))


async def test_the_joint_graph_gives_the_separate_graphs_numbers(
    encoder: JointEncoder, detector: MiniLMEmotionDetector, embedder: Embedder
) -> None:
    scores, vectors = encoder.run([prepare_text(t) or "." for t in TEXTS], TEXTS)
    separate_scores = np.stack([detector._raw([t])[0] for t in TEXTS])
    separate_vectors = np.array([(await embedder.embed([t]))[0] for t in TEXTS])
    assert np.abs(scores - separate_scores).max() < 1e-5
    assert np.abs(vectors - separate_vectors).max() < 1e-5


async def test_detect_and_embed_reads_as_detect(
    encoder: JointEncoder, detector: MiniLMEmotionDetector, embedder: Embedder
) -> None:
    emotions, vectors = await detector.with_joint(encoder).detect_and_embed(TEXTS, TEXTS)
    alone = await detector.detect(TEXTS)
    assert [(e.label, e.uncertain, e.language) for e in emotions] == [
        (e.label, e.uncertain, e.language) for e in alone
    ]
    for got, expected in zip(emotions, alone, strict=True):
        assert max(abs(got.scores[k] - expected.scores[k]) for k in got.scores) <= 1e-4  # stored rounded
    assert np.abs(np.array(vectors) - np.array(await embedder.embed(TEXTS))).max() < 1e-5


def test_a_text_read_the_same_way_by_both_runs_the_trunk_once(encoder: JointEncoder) -> None:
    plain = "What did we say about the trip to Lisbon last spring?"
    feed = encoder.feed([prepare_text(plain)], [plain])
    assert feed["input_ids"].shape[0] == 1 and feed["embed_rows"].tolist() == feed[
        "emotion_rows"
    ].tolist() == [0]
    emoji = "yesss 🙌🎉"  # the emotion branch reads the emoji as words: two sequences, one run
    feed = encoder.feed([prepare_text(emoji)], [emoji])
    assert feed["input_ids"].shape[0] == 2


def test_the_trunk_depth_comes_from_the_models_meta(tmp_path: pytest.TempPathFactory) -> None:
    """A retrained model with another frozen depth gets another graph (never the old trunk)."""
    import json
    import shutil
    from pathlib import Path

    from emotion.detector import MODEL_DIR

    folder = Path(str(tmp_path)) / "model"
    shutil.copytree(MODEL_DIR, folder)
    meta = json.loads((folder / "meta.json").read_text())
    assert joint.frozen_layers(folder) == meta.get("frozen_layers", 2)
    before = joint.graph_name(folder)
    meta["frozen_layers"] = 3
    (folder / "meta.json").write_text(json.dumps(meta))
    assert joint.frozen_layers(folder) == 3 and joint.graph_name(folder) != before
    del meta["frozen_layers"]
    (folder / "meta.json").write_text(json.dumps(meta))
    assert joint.frozen_layers(folder) == 2
