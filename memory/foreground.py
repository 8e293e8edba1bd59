"""Foreground: the turns whose request path is running, and background work that waits for them.

A store wakes the embedding worker as it lands, and with a client that answers at once (or a swipe)
that is exactly when the next turn arrives: encoding the reply (a few tens of ms of one core) then
competes with that turn's recognition, encoder pass, recall and upstream request for this machine's
cores. Work that nobody waits for yields: it starts once no turn is being prepared, or after
`WAKE_DEFER_S` at the latest, so a proxy that is never idle still embeds (in larger batches).
Issue 15, side by side: 0.67-0.96x the added latency at 1 client, 0.84-0.95x at 8, on a loaded
machine (docs/benchmarks.md: within its noise, to re-measure quiet).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

WAKE_DEFER_S = 0.25


class Foreground:
    def __init__(self, defer_s: float = WAKE_DEFER_S) -> None:
        self.defer_s = defer_s
        self.preparing = 0  # turns between their arrival and their first upstream byte
        self._waiting: list[Callable[[], None]] = []
        self._latest: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One turn's request path: what `after()` was given meanwhile runs when the last one ends."""
        self.preparing += 1
        try:
            yield
        finally:
            self.preparing -= 1
            if not self.preparing:
                self._run()

    def after(self, work: Callable[[], None]) -> None:
        """Run `work` (quick: it sets an event) now if no turn is being prepared, else when none is,
        or after `defer_s` at the latest."""
        if not self.preparing:
            work()
            return
        if work not in self._waiting:
            self._waiting.append(work)
        if self._latest is None:
            self._latest = asyncio.get_running_loop().call_later(self.defer_s, self._run)

    def _run(self) -> None:
        if self._latest is not None:
            self._latest.cancel()
            self._latest = None
        waiting, self._waiting = self._waiting, []
        for work in waiting:
            work()
