"""Another commit's recall code, importable beside this one, so a bench can run both side by side.

The shared machine's load changes from minute to minute, so latency is compared in one run on the same
data, alternating the two code paths. `recall_at("main")` reads memory/recall.py and memory/lexical.py
as they are at that git revision and imports them under private names (the rest of `memory` is this
checkout's: the recall modules only use its types and models).
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


def recall_at(revision: str) -> ModuleType:
    """That revision's memory.recall module (its Fusion, RecallQuery and recall), with its own lexical."""
    tag = "".join(ch if ch.isalnum() else "_" for ch in revision)
    folder = Path(tempfile.mkdtemp(prefix="anima-baseline-"))
    lexical = _load(f"baseline_lexical_{tag}", _source(revision, "memory/lexical.py"), folder)
    source = _source(revision, "memory/recall.py")
    source = source.replace("from memory import lexical\n", f"import {lexical.__name__} as lexical\n")
    source = source.replace("from memory.lexical import", f"from {lexical.__name__} import")
    return _load(f"baseline_recall_{tag}", source, folder)
