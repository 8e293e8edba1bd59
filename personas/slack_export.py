"""Slack exports (a directory, a .zip, or one channel-day .json) read as attributed lines."""

from __future__ import annotations

import functools
import html
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personas.people import ExportError, Line, RawSender, attributed

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
    return attributed(raw)


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
