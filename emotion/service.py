"""EmotionService: the emotion step of a turn, and everything built on its readings.

The request path starts `read()` before recognition and recall and collects it only where recall's
ranking and the prompt need it, so detection overlaps the memory work instead of following it. What it
knows goes four ways: stored with the user message (`annotation`), a recall boost for memories felt
the same way (`boost`), the emotional-context block in the prompt (`block`), and the mood trajectory.
No emotion label or score is ever logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from emotion.detector import Emotion, EmotionDetector
from emotion.guidance import emotional_context
from emotion.importance import importance
from emotion.labels import LABELS
from emotion.mood import dominant, smooth
from memory.recall import Boost
from memory.types import Annotation, Memory, StoredMessage

log = logging.getLogger("anima.emotion")

SIMILAR_MOMENTS = 2
EXCERPT_CHARS = 160


@dataclass(frozen=True, slots=True)
class EmotionConfig:
    disabled_personas: frozenset[str] = field(default_factory=frozenset)
    mood_decay: float = 0.6
    recall_boost: float = 1.0  # in units of one top rank of reciprocal-rank fusion, times importance
    rrf_k: int = 60
    deadline_s: float = 0.1


class EmotionService:
    def __init__(self, detector: EmotionDetector | None, config: EmotionConfig) -> None:
        self.detector, self.config = detector, config
        self.failures = 0
        self.deadline_misses = 0  # read by proxy/metrics.py
        self._running: set[asyncio.Future[None]] = set()  # joint passes in flight (kept referenced)

    def active_for(self, persona: str | None) -> bool:
        """Emotion is on for the deployment (a detector is loaded) and not off for this persona."""
        return self.detector is not None and (
            persona is None or persona.casefold() not in self.config.disabled_personas
        )

    # -- the request path ----------------------------------------------------------------------------

    def read(self, text: str) -> asyncio.Future[Emotion | None]:
        """Start detecting now (in a thread); `reading()` collects it. Callers check `active_for`."""

        async def detect() -> Emotion | None:
            if not text.strip() or self.detector is None:
                return None
            try:
                return (await self.detector.detect([text]))[0]
            except Exception as exc:
                self.failures += 1
                log.warning("emotion detection failed: %s", type(exc).__name__)  # never the text or scores
                return None

        return asyncio.ensure_future(detect())

    def read_and_embed(
        self, text: str
    ) -> tuple[asyncio.Future[Emotion | None], asyncio.Future[list[float] | None]] | None:
        """`read()` that also embeds the text for recall in the same encoder pass (the joint graph:
        emotion/joint.py), or None when the detector has no joint graph (the caller embeds apart).
        The two futures resolve together; cancelling one leaves the other, cancelling both the pass
        (its thread, once started, runs to its end)."""
        detector = self.detector
        if not isinstance(detector, JointDetector) or detector.joint is None:
            return None
        loop = asyncio.get_running_loop()
        feeling: asyncio.Future[Emotion | None] = loop.create_future()
        vector: asyncio.Future[list[float] | None] = loop.create_future()

        async def both() -> None:
            if not text.strip():
                emotion, embedding = None, None
            else:
                try:
                    found, vectors = await detector.detect_and_embed([text], [text])
                except Exception as exc:
                    self.failures += 1
                    log.warning("emotion detection failed: %s", type(exc).__name__)  # never the text
                    _settle(feeling, None)
                    if not vector.done():
                        vector.set_exception(exc)  # recall reports it as it reports its own embedding
                    return
                emotion, embedding = found[0], vectors[0]
            _settle(feeling, emotion)
            _settle(vector, embedding)

        def done(task: asyncio.Future[None]) -> None:
            self._running.discard(task)
            _settle(feeling, None)  # never left waiting, whatever ended the pass
            if not vector.done():
                vector.set_exception(RuntimeError("the joint encoder pass ended without a vector"))

        def abandoned(_: asyncio.Future[Any]) -> None:  # nobody waits for either: stop the pass
            if feeling.cancelled() and vector.cancelled():
                task.cancel()

        task = asyncio.ensure_future(both())
        self._running.add(task)
        task.add_done_callback(done)
        feeling.add_done_callback(abandoned)
        vector.add_done_callback(abandoned)
        return feeling, vector

    async def reading(self, pending: asyncio.Future[Emotion | None]) -> Emotion | None:
        """The detection result, or None when it failed or missed its deadline (never an error).

        Safe to call more than once on the same future; it never cancels the caller.
        """
        if not pending.done():
            try:
                async with asyncio.timeout(self.config.deadline_s):
                    await asyncio.wait({pending})
            except TimeoutError:
                self.deadline_misses += 1
                log.warning("emotion detection missed its %.0f ms deadline", self.config.deadline_s * 1000)
                pending.cancel()
                return None
        return None if pending.cancelled() else pending.result()

    def boost(self, emotion: Emotion | None) -> Boost | None:
        """Memories stored with the current emotion rank higher, in proportion to their importance."""
        if emotion is None or not emotion.felt or self.config.recall_boost == 0:
            return None
        unit = self.config.recall_boost / (self.config.rrf_k + 1)  # one top rank in one fused list

        def boost(memory: Memory) -> float:
            if memory.emotion_label != emotion.label:
                return 0.0
            return unit * (memory.importance if memory.importance is not None else 0.5)

        return boost

    def block(
        self, emotion: Emotion | None, path: Sequence[StoredMessage], memories: Sequence[Memory]
    ) -> str | None:
        """The emotional-context block for the prompt; None for confident neutral or no reading."""
        if emotion is None or not emotion.felt:
            return None
        similar = [
            f"{m.created_at:%Y-%m-%d}: {json.dumps(_excerpt(m.content), ensure_ascii=False)}"
            for m in memories
            if m.role == "user" and m.emotion_label == emotion.label
        ][:SIMILAR_MOMENTS]
        return emotional_context(
            emotion.label,
            emotion.confidence,
            uncertain=emotion.uncertain,
            mood=self.mood(path, emotion),
            similar=similar,
        )

    def mood(self, path: Sequence[StoredMessage], current: Emotion | None) -> tuple[str, float] | None:
        """The conversation's smoothed mood including this turn (None with nothing to go on)."""
        turns = [m.emotion_scores for m in path if m.role == "user" and m.emotion_scores]
        if current is not None:
            turns.append(current.scores)
        if not turns:
            return None
        return dominant(smooth(turns, decay=self.config.mood_decay)[-1])

    # -- storing -------------------------------------------------------------------------------------

    def annotation(self, text: str, emotion: Emotion | None) -> Annotation:
        """What is stored with a user message: importance always, emotion when it was detected."""
        if emotion is None:
            return Annotation(importance=importance(text))
        return Annotation(
            importance=importance(text, label=emotion.label, confidence=emotion.confidence),
            emotion_label=emotion.label,
            emotion_confidence=round(emotion.confidence, 4),
            emotion_scores=emotion.scores,
        )

    async def annotate(self, items: Sequence[tuple[str, str]]) -> list[Annotation]:
        """The embedding worker's hook for messages stored without the emotion step (imports, replies):
        user messages get an emotion reading when emotion is on, every message gets importance."""
        users = [i for i, (role, _) in enumerate(items) if role == "user"]
        readings: dict[int, Emotion] = {}
        if users and self.detector is not None:
            found = await self.detector.detect([items[i][1] for i in users])
            readings = dict(zip(users, found, strict=True))
        return [self.annotation(text, readings.get(i)) for i, (_, text) in enumerate(items)]

    # -- the API -------------------------------------------------------------------------------------

    async def analyze(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """label, confidence, scores and importance per text (POST /v1/emotions/analyze); `language`
        is set (and the reading uncertain) for text the detector cannot read."""
        if self.detector is None:
            raise RuntimeError("emotion detection is disabled")
        found = await self.detector.detect(list(texts))
        return [
            {
                "label": e.label,
                "confidence": round(e.confidence, 4),
                "uncertain": e.uncertain,
                "language": e.language,
                "scores": e.scores,
                "importance": self.annotation(text, e).importance,
            }
            for text, e in zip(texts, found, strict=True)
        ]

    def trajectory(self, messages: Sequence[StoredMessage]) -> list[dict[str, Any]]:
        """Per user turn of a branch: label, confidence and the smoothed mood after it."""
        turns = [m for m in messages if m.role == "user" and m.emotion_scores]
        moods = smooth([m.emotion_scores or {} for m in turns], decay=self.config.mood_decay)
        out = []
        for message, mood in zip(turns, moods, strict=True):
            label, level = dominant(mood)
            out.append(
                {
                    "message_id": message.id,
                    "created_at": message.created_at.isoformat(),
                    "label": message.emotion_label,
                    "confidence": message.emotion_confidence,
                    "importance": message.importance,
                    "mood": {"label": label, "intensity": round(level, 4)},
                    "mood_scores": {k: round(mood[k], 4) for k in LABELS},
                }
            )
        return out


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


@runtime_checkable
class JointDetector(Protocol):
    """A detector that can also embed for recall in the same pass (MiniLMEmotionDetector with the joint
    graph loaded: `joint` is None without it)."""

    joint: object | None

    async def detect_and_embed(
        self, texts: Sequence[str], recall: Sequence[str]
    ) -> tuple[list[Emotion], list[list[float]]]: ...


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1].rsplit(" ", 1)[0] + "…"
