"""The `anima` command: `anima serve`, `anima models`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from proxy import persona_commands
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
    from proxy.settings import (
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
    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"], help="apply every migration (Alembic upgrade head)")
    imports = commands.add_parser(
        "import", help="import a SillyTavern .jsonl chat or an OpenAI messages JSON"
    )
    imports.add_argument("file", help="the chat file")
    imports.add_argument("--id", dest="conversation_id", help="conversation id (default: generated)")
    imports.add_argument("--title", help="conversation title")
    imports.add_argument("--persona", help="persona name to file it under")
    imports.add_argument("--key", help="API key of the owning user (default: the local user)")
    persona_commands.add_parser(commands)
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
    return parser


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


def check_port(host: str, port: int) -> None:
    """A port in use is found now, not after the slow start-up (models, embedded Postgres)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cannot listen on {host}:{port} (ANIMA_HOST/ANIMA_PORT): {reason}") from exc


def check_database(raw_url: str, timeout_s: int = 10) -> None:
    """A wrong ANIMA_DATABASE_URL is one line, found before the slow start-up."""
    import psycopg
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from memory.db import async_url

    try:
        url = make_url(async_url(raw_url))
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"ANIMA_DATABASE_URL is not a database URL: {exc}") from exc
    shown = url.render_as_string(hide_password=True)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, connect_timeout=timeout_s):
            pass
    except psycopg.Error as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"cannot connect to the database {shown} (ANIMA_DATABASE_URL): {reason}") from exc


def preflight(settings: Settings) -> None:
    """What would otherwise fail only after the models load: the port, and the database."""
    check_port(settings.host, settings.port)
    if settings.memory.enabled and settings.database_url is not None:
        check_database(settings.database_url.get_secret_value())


def serve(settings: Settings) -> None:
    import logging.config

    from proxy.logs import log_config

    config = log_config(settings.log_level, json=settings.log_json)
    logging.config.dictConfig(config)
    if settings.memory.enabled and settings.database_url is None and settings.workers == 1:
        from memory.embedded_pg import start_early

        start_early(settings.data_dir)  # overlaps the app's imports; the app adopts it
    if settings.workers == 1:
        from proxy import early

        early.begin(settings)  # the models too
    import uvicorn

    with metrics_folder(settings.workers):
        uvicorn.run(
            "proxy.main:app_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=config,
            log_level=settings.log_level,
            access_log=False,  # proxy/logs.py writes one access line per request, with its latency
            timeout_graceful_shutdown=10,
            # uvicorn kills a worker that does not answer its health check in time (5 s by default); a
            # worker loading models on a busy machine can hold the GIL longer than that, and was killed
            # and restarted forever.
            timeout_worker_healthcheck=settings.worker_healthcheck_s,
        )


@contextlib.contextmanager
def metrics_folder(workers: int) -> Iterator[None]:
    """Several workers share their metrics through files (prometheus-client's multi-process mode):
    a fresh folder per run, set before the workers import prometheus-client, removed afterwards."""
    if workers < 2 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    folder = tempfile.mkdtemp(prefix="anima-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


async def list_models(settings: Settings) -> list[tuple[str, str]]:
    from proxy.backends.registry import Registry, build_backends

    registry = Registry(build_backends(settings.backends), settings.models)
    try:
        return await registry.model_names(timeout_s=settings.health_timeout_s)
    finally:
        for backend in registry.backends.values():
            await backend.aclose()


def build_models(*, prune: bool = False) -> int:
    """Install-time step: every ONNX graph `anima serve` opens, exported into the shared model cache
    (memory/model_cache.py) unless already there. Prints each graph's path; exit status 1 on failure."""
    from emotion import detector, joint
    from memory import embedder, model_cache
    from memory.embedded_pg import build_template, template_name

    logging.getLogger("anima").setLevel(logging.INFO)
    graphs = [
        ("recall embedder", embedder.graph_name(), embedder.build_graph),
        ("emotion detector", detector.graph_name(), detector.build_graph),
        ("joint emotion+recall", joint.graph_name(), joint.build_graph),  # one trunk pass for both
    ]
    kept: set[Path] = set()
    missing = [name for _, name, _ in graphs if model_cache.find(name) is None]
    if missing and not model_cache.torch_available():
        print(
            f"anima models build: torch is needed to build {', '.join(missing)} (pip install torch)",
            file=sys.stderr,
        )
        return 1
    try:
        for what, name, build in graphs:
            found = model_cache.find(name)
            if found is None:
                started = time.perf_counter()
                found = model_cache.build_dir() / name
                print(f"building the {what} graph into {found} ...", flush=True)
                build(found)
                print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
            print(f"{what}: {found}")
            kept.add(found)
    except (model_cache.ModelCacheError, ImportError, OSError, RuntimeError) as exc:
        print(f"anima models build: {exc}", file=sys.stderr)
        return 1
    if model_cache.find_dir(template_name()) is None:
        started = time.perf_counter()
        target = model_cache.build_dir() / template_name()
        print(f"building the embedded Postgres template cluster into {target} ...", flush=True)
        try:
            build_template(target)
        except Exception as exc:  # a fresh data dir then runs initdb itself: slower, not broken
            print(f"  skipped: {exc}", file=sys.stderr)
        else:
            print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
    for old in model_cache.stale(
        kept, ("all-MiniLM-L6-v2-*.onnx", "emotion-minilm-*.onnx", "joint-minilm-*.onnx")
    ):
        if prune:
            old.unlink(missing_ok=True)
        print(f"{'removed' if prune else 'older graph (--prune removes it)'}: {old}")
    return 0


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
