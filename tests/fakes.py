"""Fakes for unit tests of our own logic (never standing in for a component an issue names)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

DIM = 384
_WORD = re.compile(r"[^\W_]+")


class FakeEmbedder:
    """Hashes words into a fixed-size unit vector: deterministic, shared words → similar vectors."""

    dim = DIM

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        return [self._one(text) for text in texts]

    @staticmethod
    def _one(text: str) -> list[float]:
        vector = [0.0] * DIM
        for word in _WORD.findall(text.lower()):
            vector[int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "big") % DIM] += 1.0
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]
