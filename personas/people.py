"""People in chat exports: one resolved identity per person however each export names them.

Exports name a sender differently (contact name, phone, Slack id, "Name <mail>"); `resolve` merges the
names that share an e-mail, else a phone, else a username, so learning sees one person, not three.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime


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


def attributed(raw: Iterable[tuple[RawSender, str, datetime | None]]) -> list[Line]:
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
