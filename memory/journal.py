"""The turn journal: turns answered while Postgres was unreachable, kept until they can be stored.

Each entry is one JSON line, written and fsync'd before the method returns, so a turn survives the
outage and a restart of the process; when the database is back, entries are stored in order and
removed. Every entry carries a `turn_id` that is stored with the turn, so an entry whose store did
commit (but whose acknowledgement was lost) is recognised and not stored twice. The journal is
bounded: when full, a new turn is refused (logged and counted), never an old one dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("anima.journal")


class TurnJournal:
    def __init__(self, path: Path, *, max_entries: int = 10_000) -> None:
        self.path, self.max_entries = path, max_entries
        self.refused = 0
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = self._load()

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash mid-write: the turn was never acked
                log.warning("journal %s: line %d is incomplete and skipped", self.path, n)
        if entries:
            log.warning(
                "journal %s: %d turn(s) from before the restart wait to be stored", self.path, len(entries)
            )
        return entries

    @classmethod
    def open(cls, folder: Path, *, max_entries: int = 10_000) -> TurnJournal:
        """This process's journal (one file per worker process); files left by processes that are no
        longer running are adopted, so their turns are stored by this one."""
        folder.mkdir(parents=True, exist_ok=True)
        journal = cls(folder / f"turns-{os.getpid()}.jsonl", max_entries=max_entries)
        for orphan in sorted(folder.glob("turns-*.jsonl")):
            pid = orphan.stem.removeprefix("turns-")
            if orphan == journal.path or not pid.isdigit() or _running(int(pid)):
                continue
            adopted = cls(orphan, max_entries=max_entries)
            for entry in adopted.entries():
                journal.append(entry)
            orphan.unlink()
        return journal

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def append(self, entry: dict[str, Any]) -> bool:
        """Write one turn durably; False when the journal is full."""
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self.refused += 1
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._entries.append(entry)
            return True

    def remove(self, turn_ids: set[str]) -> None:
        """Forget stored entries: the remaining ones are rewritten to a new file that replaces the old."""
        with self._lock:
            self._entries = [e for e in self._entries if e["turn_id"] not in turn_ids]
            temporary = self.path.with_suffix(".tmp")
            with temporary.open("w", encoding="utf-8") as f:
                for entry in self._entries:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
