"""`anima personas ...`: import a character card into the folder; list, reload and learn through the
running server (which owns the database, the backends and the folder watcher)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import httpx

from personas.cards import CardError, read_card
from personas.folder import write_persona_file
from personas.people import select, speakers
from personas.sources import ExportError, read_export
from proxy.settings import Settings


def add_parser(commands: Any) -> None:
    personas = commands.add_parser("personas", help="personas: import, list, reload, learn")
    actions = personas.add_subparsers(dest="action", required=True)
    imports = actions.add_parser("import", help="a SillyTavern card (.json or .png) into the personas folder")
    imports.add_argument("file", type=Path)
    imports.add_argument("--name", help="persona name (default: from the card's name)")
    imports.add_argument("--force", action="store_true", help="replace an existing file")
    for name, text in (("list", "list personas"), ("reload", "reload the personas folder now")):
        _server_options(actions.add_parser(name, help=text))
    learn = actions.add_parser("learn", help="profile someone's messages into persona NAME")
    learn.add_argument("name")
    learn.add_argument(
        "--from", dest="source", type=Path, required=True, help="WhatsApp .txt, Slack export, mbox"
    )
    learn.add_argument("--sender", help="whose messages (e-mail, phone, username or name)")
    learn.add_argument("--model", help="model that writes the profile (default: ANIMA_PERSONAS__LEARN_MODEL)")
    _server_options(learn)


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="Anima's base URL (default: http://HOST:PORT)")
    parser.add_argument("--key", help="API key (default: ANIMA_API_KEY)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one `anima personas` action; prints what happened, returns the exit code."""
    try:
        if args.action == "import":
            return _import(settings, args)
        with _client(settings, args) as client:
            if args.action == "list":
                for p in _ok(client.get("/v1/personas"))["data"]:
                    owner = "shared" if p["shared"] else "own"
                    print(f"{p['name']}\tv{p['version']}\t{p['source']}\t{owner}")
                return 0
            if args.action == "reload":
                report = _ok(client.post("/v1/personas/reload"))
                loaded, changed = ", ".join(report["loaded"]), ", ".join(report["changed"])
                print(f"loaded: {loaded or 'none'}; changed: {changed or 'none'}")
                for file, error in report["errors"].items():
                    print(f"error in {file}: {error}")
                return 1 if report["errors"] else 0
            return _learn(client, args)
    except (CardError, ExportError, OSError, httpx.HTTPError) as exc:
        raise SystemExit(f"anima personas {args.action}: {exc}") from exc


def _import(settings: Settings, args: argparse.Namespace) -> int:
    persona = read_card(args.file.read_bytes(), args.file.name)
    if args.name:
        persona = persona.model_copy(update={"name": args.name})
    folder = settings.personas_folder()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{persona.name}.yaml"
    if target.exists() and not args.force:
        raise SystemExit(f"anima personas import: {target} exists (use --force to replace it)")
    print(write_persona_file(persona, folder))
    return 0


def _learn(client: httpx.Client, args: argparse.Namespace) -> int:
    lines = read_export(args.source)
    people = speakers(lines)
    if args.sender is None and len(people) > 1:
        listed = "\n".join(f"  {who.key}\t{who.display_name}\t{count} messages" for who, count in people)
        raise SystemExit(
            f"anima personas learn: several people wrote in {args.source}; pick one with --sender:\n{listed}"
        )
    chosen = select(lines, args.sender) if args.sender else lines
    if not chosen:
        raise SystemExit(f"anima personas learn: no messages from {args.sender!r} in {args.source}")
    body: dict[str, Any] = {"messages": [line.text[:20_000] for line in chosen if line.text.strip()]}
    body["display_name"] = chosen[0].sender.display_name[:200]
    if args.model:
        body["model"] = args.model
    result = _ok(client.post(f"/v1/personas/{args.name}/learn", json=body, timeout=600))
    print(f"{result['name']} v{result['version']}: learned from {result['messages_used']} messages")
    print(json.dumps(result["profile"], indent=2, ensure_ascii=False))
    return 0


def _client(settings: Settings, args: argparse.Namespace) -> httpx.Client:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = args.url or f"http://{host}:{settings.port}"
    key = args.key or os.environ.get("ANIMA_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30)


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise SystemExit(f"anima personas: the server answered {response.status_code}: {message}")
    return response.json()
