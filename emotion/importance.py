"""How much a message matters to remember: a 0-1 score stored with every message.

Signals, each in [0, 1]: emotional intensity (a confident non-neutral emotion), self-disclosure
(first-person statements about oneself, names, plans, preferences), questions, emphasis (!, CAPITALS,
repeated letters) and length. The weights favour what a friend would remember: what you told them
about yourself and how you felt.
"""

from __future__ import annotations

import math
import re

NEUTRAL = "neutral"

_DISCLOSURE = re.compile(
    r"\b(i am|i'm|im|i was|i've|i have|i feel|i felt|my|mine|i live|i work|"
    r"i love|i hate|i like|i want|i need|"
    r"i will|i'll|i plan|i'm going to|i am going to|i never|i always|"
    r"call me|my name)\b",
    re.IGNORECASE,
)
_NAME = re.compile(r"\b(my name is|call me|i'm called|named|called)\s+[A-Z][a-z]+")
_PLAN = re.compile(
    r"\b(tomorrow|next (week|month|year)|on (monday|tuesday|wednesday|thursday|friday|saturday|sunday)|"
    r"going to|plan(ning)? to|will)\b",
    re.IGNORECASE,
)
_CAPS = re.compile(r"\b[A-Z]{3,}\b")
_STRETCH = re.compile(r"(\w)\1{2,}")

WEIGHTS = {"emotion": 0.35, "disclosure": 0.30, "question": 0.10, "emphasis": 0.10, "length": 0.15}


def signals(text: str, *, label: str = NEUTRAL, confidence: float = 0.0) -> dict[str, float]:
    words = max(1, len(text.split()))
    disclosure = min(1.0, len(_DISCLOSURE.findall(text)) / 2)
    if _NAME.search(text):
        disclosure = 1.0
    elif _PLAN.search(text) and disclosure:
        disclosure = min(1.0, disclosure + 0.3)
    emphasis = min(1.0, text.count("!") / 2 + len(_CAPS.findall(text)) / 2 + len(_STRETCH.findall(text)) / 2)
    return {
        "emotion": confidence if label != NEUTRAL else 0.0,
        "disclosure": disclosure,
        "question": 1.0 if "?" in text else 0.0,
        "emphasis": emphasis,
        "length": min(1.0, math.log1p(words) / math.log1p(120)),
    }


def importance(text: str, *, label: str = NEUTRAL, confidence: float = 0.0) -> float:
    """0 (small talk) … 1 (an intense, personal, emphatic disclosure)."""
    if not text.strip():
        return 0.0
    parts = signals(text, label=label, confidence=confidence)
    return round(min(1.0, sum(WEIGHTS[k] * v for k, v in parts.items())), 3)
