"""MemoryConfig: how memory/ behaves (window, recall, deadline, summaries, workers), built once from the
settings by proxy/services.py. Its own module so the parts MemoryService wires (memory/recaller.py) take
it without importing the service."""

from __future__ import annotations

from dataclasses import dataclass, field

from memory.recall import Fusion, Scope


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    window_turns: int = 64  # messages of each branch's tail cached in RAM: a cache, never a limit
    window_conversations: int = 1000
    recall_k: int = 40
    scope: Scope = "branch"
    fusion: Fusion = field(default_factory=Fusion)
    deadline_s: float = 0.25
    summaries: bool = True
    summary_min_messages: int = 8
    embed_batch: int = 64
    store_wait_s: float = 10.0
    drain_concurrency: int = 4  # conversations whose journaled turns are stored at once (pool minus headroom)
