"""Starting the server (`anima serve`): what can be checked before the slow start-up is checked first
(`preflight`), the embedded Postgres and the model loads begin before uvicorn imports the app, and
several workers get a shared metrics folder. Apart from proxy/cli.py, which only reads the command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

from proxy.settings import ConfigError, Settings


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
