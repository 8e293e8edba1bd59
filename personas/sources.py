"""Chat exports (WhatsApp, Slack, mbox) read as lines of text, each attributed to one resolved person
(`personas/people.py`). This module picks the reader for a path and reads WhatsApp's text export;
Slack's and mail's readers live beside it. Timestamps are naive for WhatsApp (the export has no zone)
and aware for Slack and mail.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from personas.mail_export import read_mbox
from personas.people import ExportError, Line, RawSender, attributed
from personas.slack_export import read_slack

__all__ = ["ExportError", "Line", "read_export", "read_mbox", "read_slack", "read_whatsapp"]


def read_export(path: Path) -> list[Line]:
    """Read a WhatsApp .txt, an mbox, or a Slack export (directory, .zip or channel-day .json)."""
    if not path.exists():
        raise ExportError(f"{path}: no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise ExportError(f"{path}: file is empty")
    reader = _reader(path)
    if reader is None:
        raise ExportError(f"{path}: unknown export format (expected WhatsApp .txt, Slack export or mbox)")
    lines = reader(path)
    if not lines:
        raise ExportError(f"{path}: no messages found")
    return lines


def _reader(path: Path) -> Callable[[Path], list[Line]] | None:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".json", ".zip"):
        return read_slack
    if suffix in (".mbox", ".mbx"):
        return read_mbox
    if suffix == ".txt":
        return lambda p: read_whatsapp(_read_text(p))
    with path.open("rb") as file:
        head = file.read(4096)
    if head.startswith(b"From "):
        return read_mbox
    if re.match(rb"\s*\[\s*[{\]]", head):
        return read_slack
    first = head.decode("utf-8", "ignore").lstrip("\ufeff\u200e \r\n").split("\n", 1)[0]
    if _WA_HEADER.match(first.translate(_SPACES)):
        return lambda p: read_whatsapp(_read_text(p))
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path}: not UTF-8 text ({exc.reason})") from exc


# --- WhatsApp -------------------------------------------------------------------------------------

_WA_HEADER = re.compile(
    r"^\[?(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4}),?\s+(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)"
    r"(?:\s*(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?(?:\]|\s+-)\s?(?P<rest>.*)$"
)
_WA_SENDER = re.compile(r"^(?P<sender>[^:\"]{1,100}?):\s(?P<text>.*)$", re.DOTALL)
_WA_MEDIA = re.compile(
    r"^(?:<media omitted>|<attached: [^\n]*>|[^\n]* \(file attached\)|(?:image|video|audio|sticker|gif"
    r"|document|contact card) omitted|this message was deleted\.?|you deleted this message\.?|null)$",
    re.IGNORECASE | re.DOTALL,
)
_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
_SPACES = dict.fromkeys(map(ord, "\u00a0\u202f\u2009"), " ")


def read_whatsapp(text: str) -> list[Line]:
    """Messages of a WhatsApp "Export chat" .txt (Android or iOS, 12h or 24h clock).

    Lines without a timestamp continue the previous message; system notices (no sender, or iOS text
    starting with U+200E) and media placeholders are skipped.
    """
    messages: list[tuple[str, re.Match[str], list[str]]] = []
    current: list[str] | None = None
    for raw_line in text.splitlines():
        line = raw_line.translate(_SPACES)
        header = _WA_HEADER.match(line.lstrip("\u200e\ufeff"))
        sender = _WA_SENDER.match(header["rest"]) if header else None
        if header and sender and not sender["text"].startswith("\u200e"):
            current = [sender["text"]]
            messages.append((sender["sender"].translate(_MARKS).strip(), header, current))
        elif header:
            current = None  # a system notice; its continuation lines go with it
        elif current is not None:
            current.append(line)
    day_first = _day_first(
        [h["date"] for _, h, _ in messages], twelve_hour=any(h["ampm"] for _, h, _ in messages)
    )
    raw = []
    for name, header, parts in messages:
        body = "\n".join(parts).translate(_MARKS).replace("<This message was edited>", "").strip()
        if body and not _WA_MEDIA.match(body):
            raw.append((_wa_sender(name), body, _wa_datetime(header, day_first=day_first)))
    return attributed(raw)


def _wa_sender(name: str) -> RawSender:
    if re.fullmatch(r"\+?[\d\s().-]{7,}", name):
        return RawSender(name, phones=(name,))
    return RawSender(name, usernames=(name,))  # a saved contact name is the chat's username


def _day_first(dates: list[str], *, twelve_hour: bool) -> bool:
    """Whether dates read D/M (decided once per file: a field above 12 settles it, else the clock)."""
    parts = [re.split(r"[./-]", d) for d in dates if not re.match(r"\d{4}", d)]
    if any(int(p[0]) > 12 for p in parts):
        return True
    if any(int(p[1]) > 12 for p in parts):
        return False
    return not twelve_hour  # US exports use M/D with a 12-hour clock


def _wa_datetime(header: re.Match[str], *, day_first: bool) -> datetime | None:
    fields = [int(f) for f in re.split(r"[./-]", header["date"])]
    if header["date"][:4].isdigit():
        year, month, day = fields
    else:
        (day, month, year) = fields if day_first else (fields[1], fields[0], fields[2])
    hour, minute, second = ([int(f) for f in re.split(r"[:.]", header["time"])] + [0])[:3]
    ampm = (header["ampm"] or "").lower()
    if ampm:
        hour = hour % 12 + (12 if ampm.startswith("p") else 0)
    try:
        return datetime(year + 2000 if year < 100 else year, month, day, hour, minute, second)
    except ValueError:
        return None
