"""Token usage comes from the backend (issue 15): an OpenAI-compatible server streams usage only when
asked, and without it Anima counted the whole prompt again with tiktoken on every request."""

from __future__ import annotations

import openai

from tests.servers.openai_stub import USAGE, StubState

HELLO = [{"role": "user", "content": "hi"}]


async def test_the_backend_is_asked_for_usage_and_its_figures_are_relayed(
    anima_url: str, stub: StubState
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{anima_url}/v1", api_key="test", max_retries=0)
    reply = await client.chat.completions.create(model="stub/echo", messages=HELLO)  # type: ignore[arg-type]
    assert stub.requests[-1]["stream"] is True
    assert stub.requests[-1]["stream_options"] == {"include_usage": True}
    assert reply.usage is not None and reply.usage.total_tokens == USAGE["total_tokens"]
