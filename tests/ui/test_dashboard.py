"""The dashboard in a real browser: Debian's headless Chromium driven by playwright (its own browser
downloads are never used; `make test` installs the Debian package when it is missing).

Anima runs its production lifespan on the test Postgres with the real embedder and emotion detector.
Turns go in through the OpenAI SDK; the test then signs in with a key, finds the conversation, opens a
turn and sees its tiers and the memory recalled from another chat, moves a trait slider and sees the
next turn's prompt change, and deletes a conversation. Each page is saved as a screenshot (into
$ANIMA_SCREENSHOTS when set, e.g. docs/dashboard)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.users import create_key
from proxy.main import create_app
from proxy.setting_groups import (
    BackendSettings,
    EmotionSettings,
    MemorySettings,
    PersonaSettings,
    RouteSettings,
)
from tests.conftest import make_settings
from tests.memory.test_e2e import data_dir_with_models, models_cache  # noqa: F401 (fixture)
from tests.servers.runner import serving

pytestmark = pytest.mark.slow
BROWSERS = ("chromium-headless-shell", "chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


def browser_path() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium: `make test` installs Debian's chromium-headless-shell (apt-get) and could not here"
    )


@pytest.fixture
def anima(
    pg_url: str,
    stub_url: str,
    models_cache: Path,  # noqa: F811
    emotion_cache: Path,
    tmp_path: Path,
) -> Iterator[str]:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(
        backends=backends,
        models=routes,
        memory=MemorySettings(enabled=True, recall_scope="user", deadline_ms=10_000),
        emotion=EmotionSettings(enabled=True, deadline_ms=10_000),
        personas=PersonaSettings(examples=False, reload_s=0, folder=tmp_path / "personas"),
        database_url=pg_url,
        data_dir=data_dir_with_models(tmp_path / "data", models_cache, emotion_cache),
        retries=0,
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
async def admin_key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, key = await create_key(s, "dashboard-admin", admin=True)
    return key


@pytest.fixture
async def other_key(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, str, str]:
    """Another user's (not admin) key: (user id, name, key)."""
    name = f"dashboard-other-{uuid.uuid4().hex[:6]}"
    async with sessions.begin() as s:
        user_id, key = await create_key(s, name)
    return user_id, name, key


def poll(check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def say(
    url: str,
    key: str,
    conversation: str,
    text: str,
    history: list[Any] | None = None,
    *,
    persona: bool = True,
    model: str = "stub/echo",
) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    headers = {"X-Anima-Conversation": conversation} | ({"X-Anima-Persona": "tester"} if persona else {})
    client.chat.completions.create(
        model=model,
        messages=[*(history or []), {"role": "user", "content": text}],
        extra_headers=headers,
    )


def stored(api: httpx.Client, conversation: str, messages: int) -> bool:
    """The turn is stored and embedded (both happen after the reply, in the background)."""
    info = api.get(f"/v1/conversations/{conversation}")
    return (
        info.status_code == 200
        and info.json()["message_count"] >= messages
        and not info.json()["pending_embeddings"]
    )


def test_dashboard_in_a_real_browser(
    anima: str, admin_key: str, other_key: tuple[int, str, str], tmp_path: Path
) -> None:
    executable = browser_path()
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("ANIMA_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:6]
    facts, chat = f"ui-facts-{run}", f"ui-chat-{run}"
    api = httpx.Client(base_url=anima, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    persona = {"description": "A friendly tester.", "traits": {"humor": 0.5}}
    assert api.put("/v1/personas/tester", json=persona).status_code in (200, 201)
    say(anima, admin_key, facts, "My cat is called Miso and she loves tuna.")
    assert poll(lambda: stored(api, facts, 2))
    say(anima, admin_key, chat, "I feel so happy today! What is my cat called?")
    assert poll(lambda: stored(api, chat, 2))
    other_id, other_name, other = other_key
    theirs = f"ui-other-{run}"
    say(anima, other, theirs, "Only the other user said this.", persona=False)
    as_other = {"X-Anima-As-User": str(other_id)}
    assert poll(
        lambda: stored(
            httpx.Client(base_url=anima, headers=as_other | {"Authorization": f"Bearer {admin_key}"}),
            theirs,
            2,
        )
    )
    refused = httpx.get(f"{anima}/v1/conversations", headers=as_other | {"Authorization": f"Bearer {other}"})
    assert refused.status_code == 403  # only an admin may look at another user's memory

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=FLAGS, timeout=TIMEOUT_MS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)

        def ready(hash_: str, shot: str | None = None) -> None:
            expect(page.locator("#view")).to_have_attribute("data-ready", hash_)
            if shot:
                page.screenshot(path=str(shots / f"{shot}.png"), full_page=True)

        page.goto(f"{anima}/ui")
        expect(page.locator("#login")).to_be_visible()
        page.screenshot(path=str(shots / "login.png"))
        page.fill("#api-key", admin_key)
        page.click("#login button[type=submit]")
        ready("#/", "conversations")
        expect(page.locator("#who")).to_contain_text("dashboard-admin")

        page.fill("#search", chat)  # the list filters as you type
        expect(page.locator("#conversations tbody tr")).to_have_count(1)
        page.click(f"text={chat}")
        ready(f"#/c/{chat}")
        expect(page.locator("#tree")).to_contain_text("What is my cat called?")
        expect(page.locator("#mood-plot circle.mood")).to_have_count(1)  # one user turn, one reading

        page.click("#tree .turn-link")
        ready(f"#/c/{chat}/turn/1", "turn")
        prompt = page.locator("#prompt")
        for tier in ("system", "volatile", "newest"):
            expect(prompt.locator(f".tier-{tier}").first).to_be_visible()
        expect(page.locator("#recalled")).to_contain_text("Miso")  # from the other conversation
        expect(page.locator("#scores")).to_contain_text("Miso")
        expect(page.locator("#tokens")).to_contain_text("persona / system")
        before = prompt.locator(".tier-system").first.inner_text()
        assert "Joke often" not in before

        page.goto(f"{anima}/ui#/p/tester")
        ready("#/p/tester")
        page.locator("input[data-trait=humor]").evaluate(
            "el => { el.value = '1'; el.dispatchEvent(new Event('change')); }"
        )
        expect(page.locator("#persona-status")).to_have_attribute("data-version", "2")
        page.reload()
        ready("#/p/tester")
        expect(page.locator("#diff .add")).to_contain_text('"humor": 1')
        page.screenshot(path=str(shots / "persona.png"), full_page=True)

        say(anima, admin_key, chat, "Tell me something about her.")
        assert poll(lambda: stored(api, chat, 4))
        page.goto(f"{anima}/ui#/c/{chat}")
        ready(f"#/c/{chat}")
        expect(page.locator("#mood-plot circle.mood")).to_have_count(2)
        page.goto(f"{anima}/ui#/c/{chat}/turn/2")
        ready(f"#/c/{chat}/turn/2", "turn-after-trait")
        expect(page.locator("#turn-persona")).to_have_text("tester v2")
        after = page.locator("#prompt .tier-system").first.inner_text()
        assert after != before and "Joke often" in after

        # a swipe: the client asks again for the last reply (same messages): a sibling in the tree
        history = [
            {"role": "user", "content": "I feel so happy today! What is my cat called?"},
            {"role": "assistant", "content": "Hello from the stub!"},
        ]
        # (another reply text: a swipe identical to a stored reply is that reply, not a second copy)
        say(anima, admin_key, chat, "Tell me something about her.", history, model="stub/mirror")
        assert poll(lambda: stored(api, chat, 5))
        page.goto(f"{anima}/ui#/c/{chat}")
        ready(f"#/c/{chat}", "conversation")
        expect(page.locator("#tree")).to_contain_text("swipe 2/2")
        expect(page.locator("#mood-plot circle.mood")).to_have_count(2)

        page.goto(f"{anima}/ui#/memory")
        ready("#/memory")
        page.fill("#memory-query", "What pet does the user have?")
        page.click("#memory-results >> xpath=.. >> button[type=submit]")
        expect(page.locator("#memory-results")).to_contain_text("Miso")
        page.screenshot(path=str(shots / "memory.png"), full_page=True)

        page.goto(f"{anima}/ui#/keys")
        ready("#/keys", "keys")
        expect(page.locator("#keys")).to_contain_text("dashboard-admin")
        page.click(f"#keys tr[data-key='{other_name}'] button.view-as")
        ready("#/", "admin-view")
        expect(page.locator("#viewing")).to_contain_text(other_name)
        expect(page.locator(f"#conversations tr[data-id='{theirs}']")).to_have_count(1)
        expect(page.locator(f"#conversations tr[data-id='{chat}']")).to_have_count(0)
        page.click("#viewing button")
        expect(page.locator("#viewing")).to_have_count(0)

        page.goto(f"{anima}/ui#/")
        ready("#/")
        page.on("dialog", lambda dialog: dialog.accept())
        page.locator(f"#conversations tr[data-id='{facts}'] button.danger").click()
        ready("#/")
        expect(page.locator(f"#conversations tr[data-id='{facts}']")).to_have_count(0)
        browser.close()
    assert api.get(f"/v1/conversations/{facts}").status_code == 404
