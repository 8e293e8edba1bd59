"""Every SillyTavern flow recorded by `make e2e`, replayed against Anima without SillyTavern: the stub
answers each request with the reply SillyTavern got, then Anima's memory must hold exactly what
SillyTavern shows (no duplicate, no stray, the branch equal to the chat, one conversation per chat)
and the backend must have received every chat message SillyTavern sent, verbatim and in order.

The same checks as the e2e run (e2e/checks.py). Flows that fail on today's code are strict xfails
(issue 11): fixing a bug turns its xfail into an XPASS, which fails until the mark is removed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from e2e import checks
from e2e.recorder import Recording
from memory.users import create_key
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, EmotionSettings, MemorySettings, RouteSettings
from tests import sillytavern_flows as flows
from tests.conftest import make_settings
from tests.servers.openai_stub import StubState
from tests.servers.runner import serving

MODEL = "st/numbered"
# Flows known to fail (strict xfails, with the reason); issue 11 emptied it.
FAILING_TODAY: dict[str, str] = {}  # every flow passed once issue 11 was fixed (see git history)


def marked(flow: str) -> Any:
    reason = FAILING_TODAY.get(flow)
    return pytest.param(flow, marks=pytest.mark.xfail(reason=reason)) if reason else flow


@pytest.fixture(scope="module")
def anima(pg_url: str, stub_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")},
        models=[RouteSettings(name=MODEL, backend="stub", model="numbered", context_window=8192)],
        memory=MemorySettings(),
        emotion=EmotionSettings(enabled=False),
        database_url=pg_url,
        data_dir=tmp_path_factory.mktemp("st-flows"),
        retries=0,
        sse_ping_s=0,
    )
    with serving(create_app(settings)) as url:
        yield url


def settled(client: httpx.Client) -> dict[str, checks.Stored]:
    """The key's conversations once Anima stopped writing (turns are stored after the reply)."""
    last: Any = None
    stable, deadline = 0, time.monotonic() + 120
    while stable < 3 and time.monotonic() < deadline:
        ids = [c["id"] for c in client.get("/v1/conversations").json()["data"]]
        now = {i: client.get(f"/v1/conversations/{i}/messages?limit=1000").json()["data"] for i in ids}
        stable = stable + 1 if now == last else 0
        last = now
        time.sleep(0.5)
    return {i: checks.Stored(i, m) for i, m in (last or {}).items()}


@pytest.mark.parametrize("flow", [marked(f) for f in flows.names()])
async def test_replayed_flow(
    flow: str, anima: str, stub: StubState, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions.begin() as s:
        _, key = await create_key(s, f"st-{flow}")
    auth = {"Authorization": f"Bearer {key}"}
    since = time.time()
    async with httpx.AsyncClient(base_url=anima, headers=auth, timeout=120) as client:
        sent = await flows.replay(client, stub, flow, MODEL)
    with httpx.Client(base_url=anima, headers=auth, timeout=60) as sync:
        stored = settled(sync)
    shown = flows.display(flow)
    upstream = [(at, body) for at, body in zip(stub.received, stub.requests, strict=True) if at >= since]
    evidence = checks.Evidence(
        chats=shown["chats"],
        seen=shown["seen"],
        sent=[Recording(flow, at, r.method, r.path, r.headers, r.body) for at, r in sent],
        stored=stored,
        upstream=upstream,
        names={m["name"] for chat in shown["chats"] for m in chat} | {"User"},
    )
    assert checks.flow_failures(evidence, conversations=len(shown["chats"])) == []
