"""Chat exports (WhatsApp, Slack, mbox) read as lines of text, each attributed to one resolved person.

Exports name a sender differently (contact name, phone, Slack id, "Name <mail>"); `resolve` merges the
names that share an e-mail, else a phone, else a username, so learning sees one person, not three.
Timestamps are naive for WhatsApp (the export has no zone) and aware for Slack and mail.
"""

from __future__ import annotations

import email.policy
import functools
import html
import json
import logging
import mailbox
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("anima.personas.sources")


class ExportError(ValueError):
    """A file that is not a readable chat export (unknown format, empty, malformed)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One person: `key` is `email:…`, else `phone:+…`, else `user:…`; identifiers are normalised."""

    key: str
    display_name: str
    emails: frozenset[str] = frozenset()
    phones: frozenset[str] = frozenset()
    usernames: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Line:
    sender: Identity
    text: str
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RawSender:
    """A sender as one export names it; with no identifier at all, `name` serves as the username."""

    name: str
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    usernames: tuple[str, ...] = ()


_LEVELS = ("emails", "phones", "usernames")  # key precedence, strongest evidence first


def normalise_phone(text: str) -> str:
    """Digits with a leading + ("+1 555 123-4567" -> "+15551234567"; "0044…" -> "+44…")."""
    digits = re.sub(r"\D", "", text)
    return "+" + (digits[2:] if digits.startswith("00") else digits)


def _normalised(sender: RawSender) -> dict[str, list[str]]:
    emails = [e.strip().casefold() for e in sender.emails if "@" in e]
    phones = [normalise_phone(p) for p in sender.phones if len(re.sub(r"\D", "", p)) >= 5]
    usernames = [u.strip().casefold() for u in sender.usernames if u.strip()]
    if not (emails or phones or usernames):
        usernames = [sender.name.strip().casefold()]
    return {"emails": emails, "phones": phones, "usernames": usernames, "names": [sender.name.strip()]}


def resolve(senders: Iterable[RawSender]) -> dict[RawSender, Identity]:
    """Map each sender to one identity: same e-mail, else same phone, else same username, is one person.

    Weaker evidence never joins two groups that stronger evidence tells apart (different e-mails).
    """
    unique = list(dict.fromkeys(senders))
    own = [_normalised(s) for s in unique]
    groups = [{k: list(v) for k, v in ids.items()} for ids in own]
    parent = list(range(len(unique)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for depth, level in enumerate(_LEVELS):
        first: dict[str, int] = {}
        for i, ids in enumerate(own):
            for value in ids[level]:
                a, b = sorted((root(first.setdefault(value, i)), root(i)))  # first-seen group absorbs
                if a != b and not any(_conflict(groups[a][lv], groups[b][lv]) for lv in _LEVELS[:depth]):
                    parent[b] = a
                    groups[a] = {k: list(dict.fromkeys(v + groups[b][k])) for k, v in groups[a].items()}
    identities = {r: _identity(groups[r]) for r in {root(i) for i in range(len(unique))}}
    return {sender: identities[root(i)] for i, sender in enumerate(unique)}


def merge(*exports: Iterable[Line]) -> list[Line]:
    """The lines of several exports with identities resolved across them (a WhatsApp phone and a Slack
    profile with that phone become one person)."""
    lines = [line for export in exports for line in export]
    identities = resolve(_raw(line.sender) for line in lines)
    return [Line(identities[_raw(line.sender)], line.text, line.at) for line in lines]


def _raw(person: Identity) -> RawSender:
    def ordered(values: frozenset[str]) -> tuple[str, ...]:  # the key's identifier first keeps the key
        return tuple(sorted(values, key=lambda v: (not person.key.endswith(":" + v), v)))

    return RawSender(
        person.display_name, ordered(person.emails), ordered(person.phones), ordered(person.usernames)
    )


def _conflict(left: list[str], right: list[str]) -> bool:
    return bool(left and right and not set(left) & set(right))


def _identity(group: Mapping[str, list[str]]) -> Identity:
    level = next(lv for lv in _LEVELS if group[lv])
    prefix = {"emails": "email", "phones": "phone", "usernames": "user"}[level]
    identifiers = {*group["emails"], *group["phones"]}
    names = [n for n in group["names"] if n and normalise_phone(n) not in identifiers]
    names = [n for n in names if n.casefold() not in identifiers] or group["names"]
    return Identity(
        key=f"{prefix}:{group[level][0]}",
        display_name=names[0] or group[level][0],
        emails=frozenset(group["emails"]),
        phones=frozenset(group["phones"]),
        usernames=frozenset(group["usernames"]),
    )


def _lines(raw: Iterable[tuple[RawSender, str, datetime | None]]) -> list[Line]:
    items = list(raw)
    identities = resolve(sender for sender, _, _ in items)
    return [Line(identities[sender], text, at) for sender, text, at in items]


def select(lines: Iterable[Line], who: str) -> list[Line]:
    """The lines of one person, named by key, e-mail, phone, username or display name (any case)."""
    wanted = who.strip().casefold()
    phone = normalise_phone(who) if re.fullmatch(r"[+\d\s().-]{5,}", who.strip()) else None

    def matches(person: Identity) -> bool:
        names = {person.key.casefold(), person.display_name.casefold(), *person.emails, *person.usernames}
        return wanted in names or phone in person.phones

    return [line for line in lines if matches(line.sender)]


def speakers(lines: Iterable[Line]) -> list[tuple[Identity, int]]:
    """Each person with their number of lines, most active first (ties in order of appearance)."""
    return Counter(line.sender for line in lines).most_common()


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
    return _lines(raw)


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


# --- Slack ----------------------------------------------------------------------------------------

_SLACK_DAY = re.compile(r"(?:^|/)\d{4}-\d{2}-\d{2}\.json$")  # channel/day, or a channel folder's day
_SLACK_MARKUP = re.compile(r"<([@#!]?)([^<>|]+)(?:\|([^<>]*))?>")
_SLACK_KEPT_SUBTYPES = {"thread_broadcast", "me_message", "file_share"}


@dataclass
class _SlackUsers:
    senders: dict[str, RawSender] = field(default_factory=dict)

    def add(self, user: Mapping[str, Any], user_id: str | None = None) -> None:
        uid = str(user.get("id") or user_id or "")
        if not uid or (uid in self.senders and user_id):  # users.json wins over per-message profiles
            return
        nested = user.get("profile")
        profile: Mapping[str, Any] = nested if isinstance(nested, Mapping) else user
        pick = (
            profile.get("display_name"),
            profile.get("real_name"),
            user.get("real_name"),
            user.get("name"),
        )
        name = next((str(n) for n in pick if n), uid)
        self.senders[uid] = RawSender(
            name,
            emails=tuple(e for e in [profile.get("email")] if isinstance(e, str)),
            phones=tuple(p for p in [profile.get("phone")] if isinstance(p, str) and p),
            usernames=tuple(str(u) for u in (user.get("name"), uid) if u),  # handle first: the key
        )

    def mention(self, match: re.Match[str]) -> str:
        sigil, target, label = match.groups()
        if sigil == "@":
            return "@" + (self.senders[target].name if target in self.senders else label or target)
        if sigil == "#":
            return "#" + (label or target)
        return "@" + target if sigil == "!" else label or target


def read_slack(path: Path) -> list[Line]:
    """Messages of a Slack export: a directory or .zip (users.json + channel/YYYY-MM-DD.json), or one day."""
    files = dict(_slack_files(path))
    if not files:
        raise ExportError(f"{path}: not a Slack export (no users.json or channel/YYYY-MM-DD.json files)")
    users = _SlackUsers()
    for user in _json_list(files.pop("users.json", b"[]"), "users.json"):
        users.add(user)
    messages = [m for name, data in sorted(files.items()) for m in _json_list(data, name)]
    for message in messages:
        if isinstance(message.get("user_profile"), Mapping) and message.get("user"):
            users.add(message["user_profile"], str(message["user"]))
    raw = []
    for message in messages:
        uid, text, subtype = message.get("user"), message.get("text"), message.get("subtype")
        if message.get("type", "message") != "message" or (subtype and subtype not in _SLACK_KEPT_SUBTYPES):
            continue
        if isinstance(uid, str) and isinstance(text, str) and text.strip():
            if uid not in users.senders:
                users.add({"id": uid})
            text = html.unescape(_SLACK_MARKUP.sub(users.mention, text)).strip()
            raw.append((users.senders[uid], text, _slack_time(message.get("ts"))))
    return _lines(raw)


def _slack_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """("users.json" | "channel/day.json", content) for the files of an export that matter."""
    if path.is_file() and path.suffix.lower() == ".json":
        yield (
            ("users.json" if path.name == "users.json" else f"{path.parent.name}/{path.name}"),
            path.read_bytes(),
        )
    elif path.is_dir():
        yield from _slack_members(
            {p.relative_to(path).as_posix(): p.read_bytes for p in path.rglob("*.json")}
        )
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                yield from _slack_members({n: functools.partial(archive.read, n) for n in archive.namelist()})
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:  # e.g. encrypted
            raise ExportError(f"{path}: not a Slack export zip ({exc})") from exc


def _slack_members(members: Mapping[str, Callable[[], bytes]]) -> Iterator[tuple[str, bytes]]:
    users = sorted((n for n in members if n.rsplit("/", 1)[-1] == "users.json"), key=len)
    if users:  # the top-level one, if the zip wraps the export in a folder
        yield "users.json", members[users[0]]()
    for name, read in members.items():
        if _SLACK_DAY.search(name):
            yield name, read()


def _json_list(data: bytes, name: str) -> list[Mapping[str, Any]]:
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{name}: malformed JSON ({exc})") from exc
    if not isinstance(value, list):
        raise ExportError(f"{name}: expected a JSON list, got {type(value).__name__}")
    return [item for item in value if isinstance(item, Mapping)]


def _slack_time(ts: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(str(ts)), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


# --- mbox -----------------------------------------------------------------------------------------

_WROTE = re.compile(r"^(?:On\b.*|.*\bwrote|.*\bschrieb|.*\ba écrit)\s*:?\s*$", re.IGNORECASE)
_FORWARD_CUT = re.compile(r"^(?:-{3,}\s*Original Message\s*-{3,}|_{10,})\s*$", re.IGNORECASE)


def read_mbox(path: Path) -> list[Line]:
    """Mails of an mbox file: sender from From, the plain-text body without quotes and signature."""
    try:
        box = mailbox.mbox(path, create=False)
        keys = box.keys()
    except (OSError, mailbox.Error) as exc:
        raise ExportError(f"{path}: not an mbox file ({exc})") from exc
    try:
        raw = [mail for key in keys if (mail := _mail(box.get_bytes(key), key))]
    finally:
        box.close()
    return _lines(raw)


def _mail(data: bytes, key: str) -> tuple[RawSender, str, datetime | None] | None:
    """(sender, text, date) of one mail; None for a mail without text or sender."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    try:
        name, address = parseaddr(str(message.get("From", "")))
        text = strip_reply(_body(message)) if isinstance(message, EmailMessage) else ""
        date = _mail_date(message.get("Date"))
    except (LookupError, ValueError, IndexError, TypeError, AttributeError) as exc:
        # the stdlib's header parser can still trip over malformed mail: skip that one, keep the rest
        log.warning("skipping unreadable mail %s: %r", key, exc)
        return None
    if not text or not (name or address):
        return None
    return RawSender(name or address.split("@")[0], emails=(address,) if address else ()), text, date


def strip_reply(text: str) -> str:
    """A mail body without quoted lines, their "On … wrote:" header, forwarded parts and signature."""
    lines = text.replace("\r\n", "\n").split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        if line.rstrip() == "--" or _FORWARD_CUT.match(line):
            break
        if line.startswith(">"):
            continue
        if _WROTE.match(line) and next((n for n in lines[i + 1 :] if n.strip()), "").startswith(">"):
            if kept and kept[-1].startswith("On ") and not line.startswith("On "):
                kept.pop()  # the header wrapped over two lines
            continue
        kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if not isinstance(part, EmailMessage):
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # unknown or wrong charset: decode what we can
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    return _html_text(content) if part.get_content_subtype() == "html" else content


def _html_text(markup: str) -> str:
    text = re.sub(r"(?is)<(script|style|blockquote)\b.*?</\1>", "", markup)
    text = re.sub(r"(?i)<br\s*/?>|</(?:p|div|li|tr|h\d)>", "\n", text)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _mail_date(value: object) -> datetime | None:
    try:
        return parsedate_to_datetime(str(value)) if value else None
    except (TypeError, ValueError):
        return None
