"""`anima models build`: the install-time step that exports every ONNX graph `anima serve` opens, and
the embedded Postgres template cluster. Needs torch, which serving never imports; kept out of
proxy/cli.py so the command line does not carry the installer.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


def build_models(*, prune: bool = False) -> int:
    """Install-time step: every ONNX graph `anima serve` opens, exported into the shared model cache
    (memory/model_cache.py) unless already there. Prints each graph's path; exit status 1 on failure."""
    from emotion import classifier, detector, joint
    from memory import embedder, model_cache

    logging.getLogger("anima").setLevel(logging.INFO)
    graphs = [
        ("recall embedder", embedder.graph_name(), embedder.build_graph),
        ("emotion detector", detector.graph_name(), classifier.build_graph),
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
    _build_template()
    for old in model_cache.stale(
        kept, ("all-MiniLM-L6-v2-*.onnx", "emotion-minilm-*.onnx", "joint-minilm-*.onnx")
    ):
        if prune:
            old.unlink(missing_ok=True)
        print(f"{'removed' if prune else 'older graph (--prune removes it)'}: {old}")
    return 0


def _build_template() -> None:
    """The embedded Postgres template cluster a fresh data dir is copied from, unless already built."""
    from memory import model_cache
    from memory.embedded_pg import build_template, template_name

    if model_cache.find_dir(template_name()) is not None:
        return
    started = time.perf_counter()
    target = model_cache.build_dir() / template_name()
    print(f"building the embedded Postgres template cluster into {target} ...", flush=True)
    try:
        build_template(target)
    except Exception as exc:  # a fresh data dir then runs initdb itself: slower, not broken
        print(f"  skipped: {exc}", file=sys.stderr)
    else:
        print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
