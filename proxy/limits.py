"""Per-key rate limits (a token bucket per key for requests and one for tokens, in this process) and
the one size check every write route applies to the messages it is given.

Each worker process keeps its own buckets, so with `--workers N` a key can reach up to N times its
limit in the worst case (documented; a shared limiter would put Postgres on every request's path).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from memory.budget import TokenCounter
from memory.users import User
from proxy.errors import RateLimited, RequestTooLarge
from proxy.outgoing import to_message, tool_tokens, tools_of
from proxy.protocol import ChatCompletionRequest
from proxy.setting_groups import LimitSettings


def check_sizes(texts: Sequence[str], limits: LimitSettings) -> None:
    """413 for messages that are valid but more or longer than this server accepts: chat, import and
    append share these limits, so no route stores what another refuses."""
    if len(texts) > limits.max_messages:
        raise RequestTooLarge(
            f"{len(texts)} messages is more than this server accepts ({limits.max_messages}).",
            param="messages",
        )
    for i, text in enumerate(texts):
        if len(text) > limits.max_message_chars:
            raise RequestTooLarge(
                f"Message {i} is longer than this server accepts ({limits.max_message_chars} characters).",
                param=f"messages.{i}.content",
            )


def prompt_estimate(body: ChatCompletionRequest, counter: TokenCounter) -> int:
    """What a chat request's prompt takes from the key's token bucket, counted as the prompt budget
    counts it: each message's text (tool results included) and its tool calls' names and arguments
    (`TokenCounter.of`), and the tool definitions (`outgoing.tool_tokens`). Text alone let a request
    made mostly of tool traffic through nearly free."""
    messages = (to_message(m) for m in body.messages)
    prompt = sum(counter.of(m.content, m.tool_calls) for m in messages)
    return prompt + tool_tokens(tools_of(body)["tools"], counter)


@dataclass(slots=True)
class Bucket:
    capacity: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60)
        self.stamp = now

    def wait_s(self, need: float) -> float:
        """Seconds until the bucket holds `need` (capped at the capacity)."""
        return max(0.0, (min(need, self.capacity) - self.level) * 60 / self.capacity)


class RateLimiter:
    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self._buckets: dict[tuple[int, str], Bucket] = {}

    def _bucket(self, user: User, kind: str) -> Bucket | None:
        limit = (
            user.requests_per_minute or self.requests_per_minute
            if kind == "requests"
            else user.tokens_per_minute or self.tokens_per_minute
        )
        if limit is None:
            return None
        now = time.monotonic()
        bucket = self._buckets.get((user.id, kind))
        if bucket is None or bucket.capacity != limit:
            bucket = self._buckets[(user.id, kind)] = Bucket(float(limit), float(limit), now)
        bucket.refill(now)
        return bucket

    def request(self, user: User | None) -> None:
        """Take one request from the key's bucket, or raise 429 with the seconds to wait."""
        bucket = self._bucket(user, "requests") if user is not None else None
        if bucket is None:
            return
        if bucket.level < 1:
            raise RateLimited(
                f"Rate limit reached: {bucket.capacity:g} requests per minute for this key.",
                retry_after_s=bucket.wait_s(1),
            )
        bucket.level -= 1

    def tokens(self, user: User | None, estimate: int) -> None:
        """Refuse a request while the key's token bucket cannot cover this prompt's estimate."""
        bucket = self._bucket(user, "tokens") if user is not None else None
        if bucket is not None and bucket.level < min(estimate, bucket.capacity):
            raise RateLimited(
                f"Rate limit reached: {bucket.capacity:g} tokens per minute for this key.",
                retry_after_s=bucket.wait_s(estimate),
            )

    def charge(self, user: User | None, used: int) -> None:
        """Count what a finished request really used (prompt + reply); the level may go below zero."""
        bucket = self._bucket(user, "tokens") if user is not None else None
        if bucket is not None:
            bucket.level -= used
