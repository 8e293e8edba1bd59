"""Fixtures (what SillyTavern sent, what it showed), raw results, and the scenario table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.recorder import Recording


@dataclass
class Outcome:
    flow: str
    what: str
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None

    def reason(self) -> str:
        if self.error:
            return f"error: {self.error}"
        return "; ".join(self.failures[:3]) + (
            f" (+{len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        )


def save_fixture(
    folder: Path,
    flow: str,
    sent: list[Recording],
    chats: list[list[dict[str, Any]]],
    seen: list[list[dict[str, Any]]],
) -> None:
    """`<flow>.jsonl`: one request per line (method, path, headers, body, status, reply, completed), in
    the order sent; `<flow>.display.json`: SillyTavern's chat(s) as shown at the end of the flow
    (`chats`, one per chat the flow made) and after each action (`seen`)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r.fixture(), ensure_ascii=False) for r in sent]
    (folder / f"{flow}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / f"{flow}.display.json").write_text(
        json.dumps({"flow": flow, "chats": chats, "seen": seen}, ensure_ascii=False, indent=1) + "\n"
    )


def save_result(folder: Path, flow: str, result: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{flow}.json").write_text(json.dumps(result, ensure_ascii=False, indent=1, default=str))


def table(outcomes: list[Outcome]) -> str:
    rows = ["| flow | result | reason |", "|---|---|---|"]
    for o in outcomes:
        reason = o.reason().replace("|", "\\|")
        rows.append(f"| {o.flow} | {'pass' if o.passed else 'FAIL'} | {reason} |")
    return "\n".join(rows)
