"""Personas on the production path (settings → lifespan → Postgres → folder watcher, on uvicorn) and the
`anima personas` commands: a card imported into the folder and picked up without a restart, learning
from a WhatsApp export through the running server, and learning with the real SmolLM2 model behind a
real `llama_cpp.server`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.users import create_key
from personas.cards import card_png
from proxy.cli import main
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, MemorySettings, PersonaSettings, RouteSettings
from tests.conftest import make_settings
from tests.memory.test_e2e import data_dir_with_models, models_cache  # noqa: F401 (fixture)
from tests.servers.runner import serving

pytestmark = pytest.mark.slow
EXPORTS = Path(__file__).parent.parent / "fixtures" / "exports"
BAKER = [
    "omg the sourdough finally rose!!! 🍞🍞",
    "walked Biscuit before sunrise, he stole a croissant lol",
    "ugh no coffee yet, don't talk to me",
    "new rye recipe tomorrow, who wants to taste?",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("personas")


@pytest.fixture(scope="module")
def served(
    pg_url: str,
    stub_url: str,
    llama_server: str,
    folder: Path,
    models_cache: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    settings = make_settings(
        database_url=pg_url,
        data_dir=data_dir_with_models(tmp_path_factory.mktemp("data"), models_cache),
        memory=MemorySettings(enabled=True),
        personas=PersonaSettings(folder=folder, reload_s=0.1),
        backends={
            "stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1"),
            "llamacpp": BackendSettings(
                kind="openai", base_url=f"{llama_server}/v1", schema_style="json_object"
            ),
        },
        models=[
            RouteSettings(name="stub/echo", backend="stub", model="echo"),
            RouteSettings(name="stub/profile", backend="stub", model="profile-bad-first"),
            RouteSettings(name="llamacpp/smollm2", backend="llamacpp", model="smollm2", context_window=2048),
        ],
        retries=0,
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, value = await create_key(s, "persona-e2e")
    return value


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_imported_card_is_picked_up_by_the_watcher_and_choosable(
    served: str,
    key: str,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Bob the Builder",
            "description": "{{char}} fixes things.",
            "first_mes": "Can we fix it?",
        },
    }
    png = tmp_path / "bob.png"
    png.write_bytes(card_png(card))
    monkeypatch.setenv("ANIMA_PERSONAS__FOLDER", str(folder))
    with pytest.raises(SystemExit) as done:
        main(["personas", "import", str(png)])
    assert done.value.code == 0
    written = folder / "bob-the-builder.yaml"
    assert capsys.readouterr().out.strip() == str(written) and written.exists()
    with pytest.raises(SystemExit) as again:
        main(["personas", "import", str(png)])
    assert "exists" in str(again.value.code)

    names = wait_for(
        lambda: (
            "bob-the-builder"
            in {p["name"] for p in httpx.get(f"{served}/v1/personas", headers=auth(key)).json()["data"]}
        )
    )
    assert names, "the watcher did not load the imported card"
    models = {m["id"] for m in httpx.get(f"{served}/v1/models", headers=auth(key)).json()["data"]}
    assert "bob-the-builder@stub/echo" in models and "aria@stub/echo" in models
    reply = httpx.post(
        f"{served}/v1/chat/completions",
        json={"model": "bob-the-builder@stub/echo", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth(key),
    )
    assert reply.status_code == 200 and reply.headers["x-anima-persona"] == "bob-the-builder;v=1"

    with pytest.raises(SystemExit) as listed:
        main(["personas", "list", "--url", served, "--key", key])
    assert listed.value.code == 0 and "bob-the-builder\tv1\tfile\tshared" in capsys.readouterr().out


def learn_jane(export: str, url: str, key: str, *extra: str) -> list[str]:
    return [
        "personas",
        "learn",
        "jane",
        "--from",
        export,
        "--url",
        url,
        "--key",
        key,
        "--model",
        "stub/profile",
        *extra,
    ]


def test_cli_learns_one_senders_style_from_a_whatsapp_export(
    served: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    export = str(EXPORTS / "whatsapp-android.txt")
    with pytest.raises(SystemExit) as ambiguous:
        main(learn_jane(export, served, key))
    assert "--sender" in str(ambiguous.value.code) and "Jane Doe" in str(ambiguous.value.code)
    with pytest.raises(SystemExit) as learned:
        main(learn_jane(export, served, key, "--sender", "Jane Doe"))
    assert learned.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("jane v1: learned from")
    jane = httpx.get(f"{served}/v1/personas/jane", headers=auth(key)).json()
    assert jane["source"] == "learned" and jane["persona"]["display_name"] == "Jane Doe"
    assert jane["persona"]["traits"]["humor"] == 0.9 and "learned from" in jane["note"]


def test_learning_with_the_local_llama_cpp_model(served: str, key: str) -> None:
    response = httpx.post(
        f"{served}/v1/personas/mira/learn",
        json={"messages": BAKER, "model": "llamacpp/smollm2", "display_name": "Mira"},
        timeout=600,
        headers=auth(key),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["source"] == "learned" and body["version"] == 1 and body["note"].endswith("llamacpp/smollm2")
    traits = body["persona"]["traits"]
    assert set(traits) >= {"openness", "humor", "formality"} and all(0 <= v <= 1 for v in traits.values())
    assert body["persona"]["description"] == body["profile"]["summary"] != ""
    assert json.dumps(body["profile"])  # the validated profile is returned as JSON
    stored = httpx.get(f"{served}/v1/personas/mira/versions", headers=auth(key)).json()["data"]
    assert [v["source"] for v in stored] == ["learned"]
