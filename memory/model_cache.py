"""Where the ONNX graphs live: one cache shared by every data dir, filled at install time.

`anima models build` (run by `make install` and the Dockerfile) exports the recall embedder and the
emotion detector from their torch weights into this cache once; `anima serve` only opens the files it
finds there, so serving never imports torch and a fresh data dir starts in seconds. Each file's name
carries a content hash of what it was built from (package version or weights hash, export options),
so a new model version is a new file and an old one is never opened by mistake.

The cache is, in order: `$ANIMA_MODEL_CACHE` when set (alone); else `share/anima/models` inside the
Python environment (the venv `make install` builds, the image's /opt/venv), else the user's cache dir
(`platformdirs.user_cache_dir("anima")/models`). A graph is read from the first folder that has it and
built into the first folder that is writable.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import platformdirs

log = logging.getLogger("anima.models")

ENV = "ANIMA_MODEL_CACHE"


class ModelCacheError(RuntimeError):
    """A graph is missing and cannot be built here (no torch): said clearly at start-up."""


def cache_dirs() -> list[Path]:
    """Every folder a graph may be read from, in order of preference."""
    override = os.environ.get(ENV)
    if override:
        return [Path(override).expanduser()]
    return [
        Path(sys.prefix) / "share" / "anima" / "models",
        Path(platformdirs.user_cache_dir("anima")) / "models",
    ]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def build_dir() -> Path:
    """The first cache folder this process may write to (created if needed)."""
    for folder in cache_dirs():
        if _writable(folder):
            return folder
    raise ModelCacheError(f"no writable model cache among {', '.join(map(str, cache_dirs()))}; set {ENV}")


def find(name: str) -> Path | None:
    return next((folder / name for folder in cache_dirs() if (folder / name).is_file()), None)


def find_dir(name: str) -> Path | None:
    """A cached folder (the embedded Postgres template cluster)."""
    return next((folder / name for folder in cache_dirs() if (folder / name).is_dir()), None)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def ensure(name: str, build: Callable[[Path], None], what: str) -> Path:
    """The cached graph `name`, built once (with torch) when no cache folder has it yet.

    Serving normally finds it: `anima models build` ran at install. Building here is the fallback for
    an install that skipped it, and says so; without torch it is a clear error instead.
    """
    found = find(name)
    if found is not None:
        return found
    if not torch_available():
        raise ModelCacheError(
            f"the {what} ONNX graph {name} is not in the model cache ({', '.join(map(str, cache_dirs()))})"
            " and torch is not installed to build it: run `anima models build` where torch is installed"
            f" (pip install torch), or point {ENV} at a cache that has it"
        )
    target = build_dir() / name
    log.warning(
        "building the %s ONNX graph once into %s (`anima models build` does this at install)", what, target
    )
    started = time.perf_counter()
    build(target)
    log.info("built %s in %.1f s", name, time.perf_counter() - started)
    return target


def stale(keep: set[Path], patterns: tuple[str, ...]) -> list[Path]:
    """Cached graphs matching `patterns` that are not in `keep` (older model versions)."""
    found: list[Path] = []
    for folder in cache_dirs():
        for pattern in patterns:
            found += [p for p in folder.glob(pattern) if p not in keep]
    return sorted(set(found))
