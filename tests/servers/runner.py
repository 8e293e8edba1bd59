"""Run an ASGI app under a real uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class ServerThread:
    def __init__(self, app: ASGIApp | str, **config: object) -> None:
        options: dict[str, object] = {
            "host": "127.0.0.1",
            "port": 0,
            "log_level": "warning",
            "lifespan": "on",
            "timeout_graceful_shutdown": 1,
        }
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout_s: float = 60.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextlib.contextmanager
def serving(app: ASGIApp | str, **config: object) -> Iterator[str]:
    """`with serving(app) as url:` — the app is reachable at `url` until the block ends."""
    server = ServerThread(app, **config).start()
    try:
        yield server.url
    finally:
        server.stop()
