"""The turn journal: turns answered while Postgres was unreachable, kept until they can be stored.

Each entry is one JSON line, written and fsync'd before the method returns, so a turn survives the
outage and a restart of the process; when the database is back, entries are stored in order and
removed. Every entry carries a `turn_id` that is stored with the turn, so an entry whose store did
commit (but whose acknowledgement was lost) is recognised and not stored twice. The journal is
bounded: when full, a new turn is refused (logged and counted), never an old one dropped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory.types import Annotation, Message, SessionKey, ToolCall, TurnRecord

log = logging.getLogger("anima.journal")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journaled turn: who, the request's messages (re-recognised when stored) and the turn.

    The only place the journal's line format is written and read. `public_id`: the conversation the
    turn was recognised into, when it was (a deletion of that conversation drops the turn).

    The turn's `vectors` (the request's query vector, ≈ 8 kB of JSON a line) are left out, and ignored
    in lines written before: they only spare the embedding worker one message, every replay stores
    through `TurnStore.store_turn`, which stores a turn without them as unembedded rows the worker
    embeds, and a vector kept across a restart could come from another embedding model."""

    session: SessionKey
    turn: TurnRecord
    public_id: str | None = None

    @property
    def turn_id(self) -> str:
        return self.turn.turn_id

    def without_vectors(self) -> JournalEntry:
        """The entry as its line holds it, so a replay is the same from RAM as from the file."""
        if not self.turn.vectors:
            return self
        return dataclasses.replace(self, turn=dataclasses.replace(self.turn, vectors={}))

    def to_json(self) -> dict[str, Any]:
        turn = {
            f.name: getattr(self.turn, f.name) for f in dataclasses.fields(self.turn) if f.name != "vectors"
        }
        turn["newest"] = dataclasses.asdict(self.turn.newest) if self.turn.newest else None
        turn["incoming"] = [journal_row(m) for m in self.turn.incoming]
        turn["reply_tool_calls"] = [dataclasses.asdict(c) for c in self.turn.reply_tool_calls]
        session = dataclasses.asdict(self.session)
        return {"turn_id": self.turn_id, "session": session, "turn": turn, "public_id": self.public_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        turn = dict(data["turn"])
        turn.pop("vectors", None)  # written by older versions: the worker embeds instead
        newest = turn.pop("newest", None)
        incoming = tuple(from_journal(row) for row in turn.pop("incoming", None) or data.get("messages", []))
        calls = tuple(ToolCall(**c) for c in turn.pop("reply_tool_calls", None) or ())
        record = TurnRecord(
            **turn, newest=Annotation(**newest) if newest else None, incoming=incoming, reply_tool_calls=calls
        )
        return cls(SessionKey(**data["session"]), record, data.get("public_id"))


def journal_row(m: Message) -> list[Any]:
    """A message as a journal entry: [role, content, name], plus its tool fields when it has any."""
    row: list[Any] = [m.role, m.content, m.name]
    if m.tool_calls or m.tool_call_id is not None:
        calls = [dataclasses.asdict(c) for c in m.tool_calls]
        row.append({"tool_calls": calls, "tool_call_id": m.tool_call_id})
    return row


def from_journal(row: list[Any]) -> Message:
    extra = row[3] if len(row) > 3 else {}
    calls = tuple(ToolCall(**c) for c in extra.get("tool_calls") or ())
    return Message(row[0], row[1], row[2], tool_calls=calls, tool_call_id=extra.get("tool_call_id"))


class TurnJournal:
    def __init__(self, path: Path, *, max_entries: int = 10_000) -> None:
        self.path, self.max_entries = path, max_entries
        self.refused = 0
        self._lock = threading.Lock()
        self._entries: list[JournalEntry] = self._load()

    def _load(self) -> list[JournalEntry]:
        if not self.path.exists():
            return []
        entries = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(JournalEntry.from_json(json.loads(line)))
            except (
                json.JSONDecodeError,
                KeyError,
                TypeError,
            ):  # a line cut short by a crash mid-write: the turn was never acked
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

    def waiting(self, user_id: int, conversation: str | None) -> bool:
        """Turns of this conversation (or, without an id, of this user) wait in the journal."""
        with self._lock:
            return any(
                e.session.user_id == user_id
                and (conversation is None or e.session.conversation == conversation)
                for e in self._entries
            )

    def entries(self) -> list[JournalEntry]:
        with self._lock:
            return list(self._entries)

    def append(self, entry: JournalEntry) -> bool:
        """Write one turn durably; False when the journal is full."""
        entry = entry.without_vectors()
        line = json.dumps(entry.to_json(), ensure_ascii=False) + "\n"
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
            self._entries = [e for e in self._entries if e.turn_id not in turn_ids]
            temporary = self.path.with_suffix(".tmp")
            with temporary.open("w", encoding="utf-8") as f:
                for entry in self._entries:
                    f.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
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


class InFlight:
    """Write-ahead lines for turns being answered: a SIGKILL mid-stream loses nothing the client saw.

    At request start a turn gets a file holding its journal entry (the request's messages); each
    streamed piece of the reply is appended; the file is removed once the turn is stored or journaled.
    Nothing is fsync'd: a write reaches the kernel's page cache in ~12 µs and survives the process's
    death (fsync costs ~3 ms at p50 here, 16 ms at p95: see docs/faults.md). Files left by a process
    that is no longer running are turned into journal entries (partial turns) by the next one.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def begin(self, entry: JournalEntry) -> Path:
        path = self.folder / f"{os.getpid()}-{entry.turn_id}.wal"
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
        return path

    @staticmethod
    def add(path: Path, text: str) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(text, ensure_ascii=False) + "\n")

    @staticmethod
    def end(path: Path) -> None:
        path.unlink(missing_ok=True)

    def recover(self, journal: TurnJournal) -> int:
        """Turn the files of dead processes into journal entries holding what was streamed."""
        recovered = 0
        for path in sorted(self.folder.glob("*.wal")):
            pid = path.name.split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            try:
                entry = JournalEntry.from_json(json.loads(lines[0]))
            except (IndexError, json.JSONDecodeError, KeyError, TypeError):
                log.warning("in-flight turn %s is unreadable and skipped", path.name)
                path.unlink()
                continue
            pieces = _pieces(lines[1:])
            turn = dataclasses.replace(entry.turn, reply="".join(pieces), status="partial")
            if journal.append(dataclasses.replace(entry, turn=turn)):
                recovered += 1
                path.unlink()
        if recovered:
            log.warning("%d turn(s) in flight when a process died are journaled", recovered)
        return recovered


def _pieces(lines: list[str]) -> list[str]:
    """The streamed pieces, up to a line the crash cut short."""
    pieces: list[str] = []
    for line in lines:
        try:
            pieces.append(str(json.loads(line)))
        except json.JSONDecodeError:
            break
    return pieces
