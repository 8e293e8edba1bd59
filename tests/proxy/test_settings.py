"""Settings: env, TOML routing table, validation, the embedded default, and the `anima` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.backends.registry import Registry
from proxy.errors import ModelNotFound
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.conftest import make_settings

TOML = """
retries = 4
[backends.ollama]
kind = "ollama"
base_url = "http://127.0.0.1:1/"
[backends.gem]
kind = "gemini"
api_key = "k"
[[models]]
name = "ollama/llama3.1"
backend = "ollama"
model = "llama3.1"
context_window = 8192
fallbacks = ["gem/gemini-2.0-flash"]
"""


def test_settings_default_is_the_embedded_model() -> None:
    settings = make_settings()
    assert settings.backends == {"local": BackendSettings(kind="embedded")}
    assert [r.name for r in settings.models] == ["local/smollm2"]


def test_settings_read_toml_routing_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "anima.toml").write_text(TOML)
    monkeypatch.setenv("ANIMA_CONFIG", str(tmp_path / "anima.toml"))
    monkeypatch.setenv("ANIMA_RETRIES", "1")  # the environment beats the file
    settings = make_settings()
    assert settings.retries == 1
    assert settings.backends["ollama"].url() == "http://127.0.0.1:1"
    assert settings.models == [
        RouteSettings(
            name="ollama/llama3.1",
            backend="ollama",
            model="llama3.1",
            context_window=8192,
            fallbacks=["gem/gemini-2.0-flash"],
        )
    ]


def test_settings_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANIMA_BACKENDS__UP__KIND", "openai")
    monkeypatch.setenv("ANIMA_BACKENDS__UP__BASE_URL", "http://127.0.0.1:9/v1")
    settings = make_settings()
    assert settings.backends["up"].kind == "openai"
    assert "local" not in settings.backends  # configuring a backend replaces the embedded default


def test_settings_reject_routes_to_unknown_backends() -> None:
    with pytest.raises(ValidationError, match="unknown backend 'nope'"):
        make_settings(
            backends={"a": BackendSettings(kind="openai")},
            models=[RouteSettings(name="x", backend="nope", model="m")],
        )


def test_registry_resolves_table_dynamic_names_and_fallbacks() -> None:
    from proxy.backends.openai_compat import OpenAICompatBackend

    settings = make_settings(
        backends={"a": BackendSettings(kind="openai"), "b": BackendSettings(kind="openai")},
        models=[RouteSettings(name="main", backend="a", model="m1", fallbacks=["b/m2", "main"])],
    )
    backends = {n: OpenAICompatBackend.from_settings(n, c) for n, c in settings.backends.items()}
    registry = Registry(backends, settings.models)
    assert [(r.backend.name, r.model) for r in registry.resolve("main")] == [("a", "m1"), ("b", "m2")]
    assert [(r.backend.name, r.model) for r in registry.resolve("b/any:7b")] == [("b", "any:7b")]
    with pytest.raises(ModelNotFound):
        registry.resolve("c/m")


def test_cli_serve_help_documents_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("ANIMA_HOST", "ANIMA_PORT", "ANIMA_RETRIES", "ANIMA_SSE_PING_S", "BASE_URL", "FALLBACKS"):
        assert name in out


def test_cli_models_lists_routes(tmp_path: Path) -> None:
    config = tmp_path / "anima.toml"
    config.write_text(TOML)
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "models", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        env={"ANIMA_HEALTH_TIMEOUT_S": "0.5", "PATH": ""},
    ).stdout
    assert out.splitlines() == ["ollama/llama3.1\tollama"]
