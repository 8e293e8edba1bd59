"""Anima's HTTP layer: the OpenAI wire protocol, the request pipeline and the backends."""

import sys

# httpx imports its command-line client (click, rich, pygments: ~0.15 s of CPU at every start) whenever
# those happen to be installed, as dev tools pull them in; Anima never runs it. Marked absent before
# httpx's first import, httpx defines its stub `httpx.main` instead (bench/startup.py measures starts).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
