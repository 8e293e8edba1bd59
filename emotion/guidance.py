"""The emotional-context block: concrete tone guidance for how the user feels right now.

It goes into the volatile block at the end of the prompt (it changes every turn). Nothing is added
for a confident neutral message, so a plain question gets a plain answer.
"""

from __future__ import annotations

from collections.abc import Sequence

GUIDANCE = {
    "sadness": (
        "Respond with warmth and patience. Acknowledge the feeling before anything else; do not rush to fix"
        " it, minimise it or change the subject. Keep sentences gentle and invite them to say more."
    ),
    "anger": (
        "Stay calm and non-defensive. Acknowledge the frustration and what caused it, take their side of the"
        " problem seriously, avoid jokes and lecturing, and offer a concrete next step."
    ),
    "fear": (
        "Be steady and reassuring. Name the worry, give clear, concrete information, break things into small"
        " manageable steps, and avoid alarming language."
    ),
    "joy": (
        "Share the good mood: be warm and upbeat, celebrate with them, and match their energy without"
        " overdoing it."
    ),
    "surprise": (
        "Engage with what surprised them: be curious, help make sense of it, and match their sense of"
        " discovery."
    ),
    "disgust": (
        "Take their reaction seriously without amplifying it; be respectful and matter-of-fact, and steer"
        " towards what can be done about it."
    ),
}


def intensity_word(confidence: float) -> str:
    return "strongly" if confidence >= 0.8 else "clearly" if confidence >= 0.6 else "somewhat"


def emotional_context(
    label: str,
    confidence: float,
    *,
    uncertain: bool,
    mood: tuple[str, float] | None = None,
    similar: Sequence[str] = (),
) -> str | None:
    """The block for this turn, or None when there is nothing to say (confident neutral / uncertain)."""
    if uncertain or label not in GUIDANCE:
        return None
    lines = [
        f"Emotional context: the user seems {intensity_word(confidence)} {_adjective(label)} right now"
        f" (confidence {confidence:.0%}). {GUIDANCE[label]}"
    ]
    if mood is not None and mood[0] not in ("neutral", label):
        lines.append(f"Over the last few messages their mood has leaned towards {_adjective(mood[0])}.")
    if similar:
        lines.append("Earlier moments when they felt this way (quoted, from memory):")
        lines += [f"- {moment}" for moment in similar]
    return "\n".join(lines)


def _adjective(label: str) -> str:
    return {
        "sadness": "sad",
        "anger": "angry or frustrated",
        "fear": "anxious or afraid",
        "joy": "happy",
        "surprise": "surprised",
        "disgust": "disgusted",
        "neutral": "calm",
    }[label]
