"""At debug level, with ANIMA_LOG_CONTENT unset, no log line carries message text: not Anima's, not a
library's (issue 12, item 9: sse_starlette logged every streamed chunk)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from tests.proxy.test_access import build, client, new_key, running

PLANTED = "ZEPHYR-4471-PLANTED"


async def chat_streaming(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, **values: bool
) -> None:
    _, key = await new_key(sessions, "logs")
    application, memory = build(stub_url, sessions, counter, **values)
    body = {
        "model": "stub/mirror",  # the reply repeats the planted text, so it is streamed back too
        "messages": [{"role": "user", "content": f"my code is {PLANTED}"}],
        "stream": True,
    }
    async with running(application) as transport, client(transport, key) as c:
        resp = await c.post("/chat/completions", json=body)
        assert resp.status_code == 200 and PLANTED in resp.text
        await memory.settle()


async def test_debug_logs_of_a_streamed_chat_carry_no_message_text(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await chat_streaming(stub_url, sessions, counter)
    assert caplog.records, "nothing was logged at debug level"
    leaks = [f"{r.name}: {r.getMessage()[:120]}" for r in caplog.records if PLANTED in r.getMessage()]
    assert not leaks
    caplog.clear()
    await chat_streaming(stub_url, sessions, counter, log_content=True)
    assert PLANTED in caplog.text  # enabled, the content shows (so the check above can fail)
