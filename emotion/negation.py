"""Negation: "not happy at all" is not joy, "I'm not worried anymore" is not fear.

The fine-tuned model reads most negations right; this rule catches the ones it does not, where a
negator stands up to three words before an emotion word and the model still picked that word's class.
It then hands that class's probability to the class the negated phrase means (sadness for a negated
positive, neutral for a negated negative).
"""

from __future__ import annotations

import re

_NEGATORS = (
    r"(?:not|no|never|n't|hardly|barely|nothing|nowhere|without|cannot|cant|dont|didnt|isnt|wasnt|aint)"
)
_FILLER = r"(?:\s+\w+){0,2}?"
_WORDS = {
    "joy": (
        "happy|glad|good|great|fine|okay|ok|excited|thrilled|pleased|cheerful|joyful|content|satisfied|fun"
        "|enjoy(?:ing|ed)?|love|like|amazing|awesome|wonderful|proud|grateful|thankful|hopeful|optimistic"
    ),
    "sadness": "sad|upset|unhappy|depressed|down|disappointed|sorry|lonely|heartbroken|miserable",
    "anger": "angry|mad|annoyed|furious|pissed|irritated|frustrated|upset",
    "fear": "scared|afraid|worried|anxious|nervous|frightened|terrified|concerned|stressed",
    "surprise": "surprised|shocked|amazed",
    "disgust": "disgusted|grossed out|sickened",
}
_FLIP = {"joy": "sadness", "sadness": "neutral", "anger": "neutral", "fear": "neutral", "surprise": "neutral"}
_PATTERNS = {
    label: re.compile(rf"\b{_NEGATORS}{_FILLER}\s+(?:{words})\b", re.IGNORECASE)
    for label, words in _WORDS.items()
    if label in _FLIP
}


def _normalise(text: str) -> str:
    text = text.replace("\u2019", "'")  # typographic apostrophe
    return re.sub(r"n't\b", " n't", text)


def negate(text: str, scores: dict[str, float]) -> dict[str, float]:
    """Scores with a negated emotion's probability moved to its opposite, when the model missed it."""
    top = max(scores, key=scores.__getitem__)
    pattern = _PATTERNS.get(top)
    if pattern is None or not pattern.search(_normalise(text)):
        return scores
    target = _FLIP[top]
    swapped = dict(scores)
    swapped[top], swapped[target] = min(scores[top], scores[target]), max(scores[top], scores[target])
    return swapped
