"""A conversation's mood: per-turn emotion scores smoothed with exponential decay, so one odd
message does not swing the tone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


def smooth(turns: Iterable[Mapping[str, float]], *, decay: float = 0.6) -> list[dict[str, float]]:
    """The running mood after each turn: mood = decay · mood + (1 - decay) · scores."""
    mood: dict[str, float] | None = None
    out = []
    for scores in turns:
        current = {label: float(scores.get(label, 0.0)) for label in LABELS}
        mood = current if mood is None else {k: decay * mood[k] + (1 - decay) * current[k] for k in LABELS}
        out.append(mood)
    return out


def dominant(mood: Mapping[str, float]) -> tuple[str, float]:
    label = max(LABELS, key=lambda k: mood.get(k, 0.0))
    return label, float(mood.get(label, 0.0))
