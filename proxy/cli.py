"""The `anima` command line: options parsed, settings loaded (errors as one line), each command handed
to its owner (proxy/launch.py serves, proxy/install.py builds the graphs, proxy/admin.py and
proxy/persona_commands.py the rest)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from proxy import persona_commands
from proxy.install import build_models
from proxy.launch import preflight, serve
from proxy.settings import ConfigError, Settings, get_settings


def _setting_lines(model: type[BaseModel], prefix: str = "ANIMA_") -> Iterator[str]:
    for name, field in model.model_fields.items():
        if name in ("memory", "emotion", "personas", "limits"):
            continue  # their own sections below
        env = f"{prefix}{name.upper()}"
        if field.is_required():
            default = "required"
        else:
            value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            default = f"default: {value!r}"
        yield f"  {env:<36} {field.description or ''} ({default})"


def _epilog() -> str:
    from proxy.setting_groups import (
        BackendSettings,
        EmotionSettings,
        LimitSettings,
        MemorySettings,
        PersonaSettings,
        RouteSettings,
    )

    lines = ["Every setting (environment, .env, or the same keys in anima.toml):", *_setting_lines(Settings)]
    lines += ["", "Backend table [backends.NAME] (env ANIMA_BACKENDS__NAME__KEY):"]
    lines += [line.replace("ANIMA_", "  ", 1) for line in _setting_lines(BackendSettings)]
    lines += ["", "Memory [memory] (env ANIMA_MEMORY__KEY):"]
    lines += list(_setting_lines(MemorySettings, prefix="ANIMA_MEMORY__"))
    lines += ["", "Emotion [emotion] (env ANIMA_EMOTION__KEY):"]
    lines += list(_setting_lines(EmotionSettings, prefix="ANIMA_EMOTION__"))
    lines += ["", "Limits [limits] (env ANIMA_LIMITS__KEY):"]
    lines += list(_setting_lines(LimitSettings, prefix="ANIMA_LIMITS__"))
    lines += ["", "Personas [personas] (env ANIMA_PERSONAS__KEY):"]
    lines += list(_setting_lines(PersonaSettings, prefix="ANIMA_PERSONAS__"))
    lines += ["", "Routing table [[models]]:"]
    lines += [line.replace("ANIMA_", "  ", 1) for line in _setting_lines(RouteSettings)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anima", description="OpenAI-compatible proxy with persona, memory, emotion."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_models(commands)
    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"], help="apply every migration (Alembic upgrade head)")
    _add_import(commands)
    persona_commands.add_parser(commands)
    _add_keys(commands)
    return parser


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run the server", epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    serve.add_argument("--host", help="interface to bind (ANIMA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (ANIMA_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (ANIMA_WORKERS, default 1)")
    serve.add_argument("--config", help="TOML routing file (ANIMA_CONFIG, default ./anima.toml)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="ANIMA_LOG_LEVEL")
    serve.add_argument(
        "--log-json", action="store_true", default=None, help="JSON log lines (ANIMA_LOG_JSON)"
    )


def _add_models(commands: Any) -> None:
    models = commands.add_parser(
        "models", help="list every routed model; `anima models build`: the ONNX graphs, at install"
    )
    models.add_argument(
        "action",
        nargs="?",
        choices=["list", "build"],
        default="list",
        help="list (default): routed models; build: export the embedder and emotion graphs into the"
        " shared model cache (needs torch; a no-op when they are there)",
    )
    models.add_argument("--config", help="TOML routing file (ANIMA_CONFIG, default ./anima.toml)")
    models.add_argument("--prune", action="store_true", help="build: also delete older versions' graphs")


def _add_import(commands: Any) -> None:
    imports = commands.add_parser(
        "import", help="import a SillyTavern .jsonl chat or an OpenAI messages JSON"
    )
    imports.add_argument("file", help="the chat file")
    imports.add_argument("--id", dest="conversation_id", help="conversation id (default: generated)")
    imports.add_argument("--title", help="conversation title")
    imports.add_argument("--persona", help="persona name to file it under")
    imports.add_argument("--key", help="API key of the owning user (default: the local user)")


def _add_keys(commands: Any) -> None:
    keys = commands.add_parser("keys", help="API keys: create (printed once), list, revoke")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="a new key (a new user); only its hash is stored")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="may manage keys and other users' data")
    create.add_argument(
        "--rpm", type=int, help="requests per minute (default: ANIMA_LIMITS__REQUESTS_PER_MINUTE)"
    )
    create.add_argument(
        "--tpm", type=int, help="tokens per minute (default: ANIMA_LIMITS__TOKENS_PER_MINUTE)"
    )
    key_actions.add_parser("list", help="every key: id, name, prefix, admin, revoked, limits")
    revoke = key_actions.add_parser("revoke", help="revoke a key by id or name (its data stays)")
    revoke.add_argument("who")


SERVER_OPTIONS = ("host", "port", "workers", "config", "log_level", "log_json")


def _apply(args: argparse.Namespace) -> Settings:
    """Command-line options become ANIMA_* variables, so uvicorn's worker processes see them too."""
    options: dict[str, Any] = {k: v for k, v in vars(args).items() if k in SERVER_OPTIONS and v is not None}
    for key, value in options.items():
        os.environ[f"ANIMA_{key.upper()}"] = str(value)
    get_settings.cache_clear()
    return get_settings()


def _problem(exc: ConfigError | ValidationError) -> str:
    """A settings error as one line: the file or setting, and what is wrong with it."""
    if isinstance(exc, ConfigError):
        return str(exc)
    where = os.environ.get("ANIMA_CONFIG", "anima.toml")
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {str(e['msg']).removeprefix('Value error, ')}"
        for e in exc.errors()
    ]
    return f"invalid settings (environment, .env or {where}): " + "; ".join(problems)


async def list_models(settings: Settings) -> list[tuple[str, str]]:
    from proxy.backends.registry import Registry, build_backends

    registry = Registry(build_backends(settings.backends), settings.models)
    try:
        return await registry.model_names(timeout_s=settings.health_timeout_s)
    finally:
        for backend in registry.backends.values():
            await backend.aclose()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = _apply(args)
        if args.command == "serve":
            preflight(settings)
    except (ConfigError, ValidationError) as exc:
        raise SystemExit(f"anima {args.command}: {_problem(exc)}") from None
    if args.command != "serve":  # serve() configures logging at ANIMA_LOG_LEVEL, with timestamps
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        serve(settings)
    elif args.command == "models" and args.action == "build":
        raise SystemExit(build_models(prune=args.prune))
    elif args.command == "models":
        for name, backend in asyncio.run(list_models(settings)):
            print(f"{name}\t{backend}")
    elif args.command == "db":
        from proxy.admin import upgrade

        upgrade(settings)
    elif args.command == "import":
        from proxy.admin import import_file

        try:
            public_id = asyncio.run(import_file(settings, args))
        except (ValueError, LookupError, OSError) as exc:
            raise SystemExit(f"anima import: {exc}") from exc
        print(public_id)
    elif args.command == "keys":
        from proxy.admin import keys_command

        try:
            print(asyncio.run(keys_command(settings, args)))
        except (ValueError, LookupError, OSError) as exc:
            raise SystemExit(f"anima keys {args.action}: {exc}") from exc
    elif args.command == "personas":
        raise SystemExit(persona_commands.run(settings, args))
