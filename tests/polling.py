"""Waiting for background work in tests: poll a condition under a generous bound.

The bound only ends a hang; it never decides a result on a busy 2-core machine (CI saw a 5 s bound fail
at load 20), so it is a minute, not a guess at how long the work takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(done: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Poll `done()` every 20 ms until it is true; fail naming `what` after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)
