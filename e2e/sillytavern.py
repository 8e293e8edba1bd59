"""SillyTavern 1.19.0 from the npm registry, on loopback, with its config, settings and secrets written
by us: Chat Completion source "Custom (OpenAI-compatible)" at the recording proxy's /v1, streaming on."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.anima import MODEL
from e2e.cards import Card, write_card, write_group
from e2e.procs import Child, free_port

VERSION = "1.19.0"
USER = "User"
API_KEY = "sk-e2e-test"


def installed(cache: Path) -> Path:
    """The npm package's folder (installed by `make e2e`), checked to be the pinned version."""
    root = cache / "node_modules" / "sillytavern"
    meta = json.loads((root / "package.json").read_text())
    if meta["version"] != VERSION:
        raise RuntimeError(f"{root} is SillyTavern {meta['version']}, not {VERSION}: run `make e2e`")
    return root


def config_yaml(data_root: Path, port: int) -> str:
    """Loopback only, no whitelist surprises, nothing fetched from the internet."""
    return f"""dataRoot: "{data_root}"
listen: false
port: {port}
protocol:
  ipv4: true
  ipv6: false
whitelistMode: false
browserLaunch:
  enabled: false
heartbeatInterval: 0
enableDownloadableTokenizers: false
skipContentCheck: false
extensions:
  enabled: true
  autoUpdate: false
  models:
    autoDownload: false
logging:
  enableAccessLog: false
  minLogLevel: 1
backups:
  chat:
    enabled: false
"""


def settings(root: Path, api_url: str) -> dict[str, Any]:
    """SillyTavern's shipped default settings, switched to the custom OpenAI-compatible source."""
    data: dict[str, Any] = json.loads((root / "default" / "content" / "settings.json").read_text())
    data.update(firstRun=False, username=USER, main_api="openai")
    data["power_user"].update(auto_connect=True, confirm_message_delete=False)
    data["oai_settings"].update(
        chat_completion_source="custom",
        custom_url=api_url,
        custom_model=MODEL,
        stream_openai=True,
        openai_max_context=8192,
        openai_max_tokens=300,
        names_behavior=0,
        continue_prefill=False,
        bypass_status_check=True,
    )
    return data


def secrets() -> dict[str, Any]:
    return {"api_key_custom": [{"id": "e2e", "value": API_KEY, "label": "e2e", "active": True}]}


@dataclass
class SillyTavern:
    root: Path
    work: Path
    api_url: str

    @property
    def user_dir(self) -> Path:
        return self.work / "st-data" / "default-user"

    def prepare(self, cards: list[Card], groups: dict[str, tuple[str, list[Card]]]) -> None:
        self.port = free_port()
        data_root = self.work / "st-data"
        shutil.rmtree(data_root, ignore_errors=True)
        self.user_dir.mkdir(parents=True)
        (self.work / "st-config.yaml").write_text(config_yaml(data_root, self.port))
        (self.user_dir / "settings.json").write_text(json.dumps(settings(self.root, self.api_url), indent=1))
        (self.user_dir / "secrets.json").write_text(json.dumps(secrets()))
        for card in cards:
            write_card(self.user_dir / "characters", card)
        for group_id, (name, members) in groups.items():
            write_group(self.user_dir / "groups", group_id, name, members)

    def launch(self) -> Child:
        """Start SillyTavern (it compiles its frontend first: a minute or more); wait for `url`."""
        argv = [
            "node", "server.js",
            "--configPath", str(self.work / "st-config.yaml"),
            "--dataRoot", str(self.work / "st-data"),
            "--port", str(self.port),
            "--listen", "false",
            "--browserLaunchEnabled", "false",
        ]  # fmt: skip
        env = dict(os.environ, NODE_ENV="production")
        return Child("sillytavern", argv, cwd=self.root, env=env, log=self.work / "sillytavern.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
