"""Another commit's recall code, importable beside this one, so a bench can run both side by side.

The shared machine's load changes from minute to minute, so latency is compared in one run on the same
data, alternating the two code paths. `recall_at("main")` reads memory/recall.py, memory/lexical.py and
(where that revision has it) memory/recall_sql.py as they are at that git revision and imports them under
private names (the rest of `memory` is this checkout's: the recall modules only use its types and models).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _source(revision: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def _load(name: str, source: str, folder: Path) -> ModuleType:
    file = folder / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _exists(revision: str, path: str) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{revision}:{path}"], cwd=ROOT, capture_output=True)
    return found.returncode == 0


def _private_imports(source: str, loaded: dict[str, str]) -> str:
    """`source` with its imports of the modules loaded already pointed at their private copies."""
    lines = []
    for line in source.splitlines(keepends=True):
        if line.startswith("from memory import "):
            names = [n.strip() for n in line.removeprefix("from memory import ").split(",")]
            rest = [n for n in names if n not in loaded]
            line = "".join(f"import {loaded[n]} as {n}\n" for n in names if n in loaded)
            line += f"from memory import {', '.join(rest)}\n" if rest else ""
        for module, private in loaded.items():
            line = line.replace(f"from memory.{module} import", f"from {private} import")
        lines.append(line)
    return "".join(lines)


def recall_at(revision: str) -> ModuleType:
    """That revision's memory.recall module (its Fusion, RecallQuery and recall), with its own lexical
    and, where that revision has one, its own recall_sql."""
    tag = "".join(ch if ch.isalnum() else "_" for ch in revision)
    folder = Path(tempfile.mkdtemp(prefix="anima-baseline-"))
    loaded: dict[str, str] = {}  # module name in memory/ -> its private copy's name
    module = None
    for name in ("lexical", "recall_sql", "recall"):
        if name != "recall" and not _exists(revision, f"memory/{name}.py"):
            continue
        source = _private_imports(_source(revision, f"memory/{name}.py"), loaded)
        module = _load(f"baseline_{name}_{tag}", source, folder)
        loaded[name] = module.__name__
    assert module is not None
    return module
