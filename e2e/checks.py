"""The assertions: what Anima stored and what reached the backend, against what SillyTavern sent and
shows. Each check returns readable failure reasons; an empty list is a pass."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from e2e.recorder import Recording

Line = tuple[str, str]  # (role, normalised text)


@dataclass
class Stored:
    """One conversation as Anima's memory API returns it."""

    id: str
    messages: list[dict[str, Any]]

    def branch(self) -> list[dict[str, Any]]:
        """The path from the newest message back to the root, oldest first."""
        by_id = {m["id"]: m for m in self.messages}
        if not by_id:
            return []
        path: list[dict[str, Any]] = []
        node: dict[str, Any] | None = by_id[max(by_id)]
        while node is not None:
            path.append(node)
            node = by_id.get(node["parent_id"])
        return path[::-1]


def normalise(text: str, names: set[str]) -> str:
    """Presentation does not change a turn: a leading "Name: " of a known speaker and outer whitespace."""
    text = text.strip()
    for name in names:
        if text.startswith(f"{name}:"):
            return text[len(name) + 1 :].strip()
    return text


def displayed(chat: list[dict[str, Any]], names: set[str]) -> list[Line]:
    return [
        ("user" if m["is_user"] else "assistant", normalise(m["mes"], names))
        for m in chat
        if not m["is_system"]
    ]


def stored_lines(messages: list[dict[str, Any]], names: set[str]) -> list[Line]:
    return [
        (m["role"], normalise(m["content"], names)) for m in messages if m["role"] in ("user", "assistant")
    ]


def squash(text: str, names: set[str]) -> str:
    return re.sub(r"\s+", "", normalise(text, names))


def duplicates(conv: Stored, names: set[str]) -> list[str]:
    """Two stored siblings (same parent, same role) that are one turn: equal up to presentation, or one
    a prefix of the other (a continued reply stored again, a Stop partial stored next to ST's copy)."""
    found = []
    for i, a in enumerate(conv.messages):
        for b in conv.messages[i + 1 :]:
            if (a["parent_id"], a["role"]) != (b["parent_id"], b["role"]):
                continue
            x, y = squash(a["content"], names), squash(b["content"], names)
            if x.startswith(y) or y.startswith(x):
                found.append(
                    f"{conv.id}: {a['role']} stored twice: {a['id']} {_short(a['content'])!r}"
                    f" and {b['id']} {_short(b['content'])!r}"
                )
    return found


def strays(
    conv: Stored, chats: list[list[dict[str, Any]]], sent: list[Recording], names: set[str]
) -> list[str]:
    """Stored messages SillyTavern never sent nor showed (with that role): a quiet or impersonate
    answer stored as a reply, a Stop partial longer than what ST kept, a role rewritten."""
    known = {(role, squash(text, names)) for role, text in _sent_lines(sent)}
    for chat in chats:
        for m in chat:
            role = "user" if m["is_user"] else "assistant"
            for text in [m["mes"], *(m.get("swipe_texts") or [])]:
                known.add((role, squash(text, names)))
    return [
        f"{conv.id}: stored {m['role']} {m['id']} {_short(m['content'])!r} was never sent or shown by ST"
        for m in conv.messages
        if m["role"] in ("user", "assistant") and (m["role"], squash(m["content"], names)) not in known
    ]


def _sent_lines(sent: list[Recording]) -> list[tuple[str, str]]:
    return [
        (m["role"], _text(m))
        for r in sent
        if r.method == "POST" and isinstance(r.body, dict)
        for m in r.body.get("messages", [])
        if m.get("role") in ("user", "assistant")
    ]


def branch_matches(conv: Stored, chat: list[dict[str, Any]], names: set[str]) -> list[str]:
    """The stored branch is exactly what SillyTavern shows, message by message."""
    want, got = displayed(chat, names), stored_lines(conv.branch(), names)
    if want == got:
        return []
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        if w != g:
            return [f"{conv.id}: stored branch differs at #{i}: ST shows {_line(w)}, Anima has {_line(g)}"]
    return [
        f"{conv.id}: ST shows {len(want)} messages, the stored branch has {len(got)}"
        + (
            f" (first extra: {_line(got[len(want)])})"
            if len(got) > len(want)
            else f" (first missing: {_line(want[len(got)])})"
        )
    ]


def speakers(conv: Stored, chat: list[dict[str, Any]], names: set[str]) -> list[str]:
    """Group chats: every stored reply carries, in its `name`, the speaker SillyTavern shows for it."""
    shown = [m for m in chat if not m["is_user"] and not m["is_system"]]
    kept = [m for m in conv.branch() if m["role"] == "assistant"]
    out = []
    for s, k in zip(shown, kept, strict=False):
        if k.get("name") != s["name"]:
            out.append(
                f"{conv.id}: reply {_short(k['content'])!r} stored with speaker {k.get('name')!r},"
                f" ST shows {s['name']!r}"
            )
    return out[:3]


def forwarded(sent: list[Recording], upstream: list[tuple[float, dict[str, Any]]]) -> list[str]:
    """Every chat request reached the backend with all of SillyTavern's user/assistant messages,
    verbatim and in order (all of our chats fit the 8192-token window)."""
    posts = [r for r in sent if r.method == "POST" and r.path.endswith("/chat/completions")]
    out = []
    for k, post in enumerate(posts):
        end = posts[k + 1].at if k + 1 < len(posts) else float("inf")
        candidates = [body for at, body in upstream if post.at <= at < end]
        chat = [(m["role"], _text(m)) for m in post.body["messages"] if m["role"] in ("user", "assistant")]
        if not candidates:
            out.append(f"request {k + 1}: never reached the backend (status {post.status})")
            continue
        best = max(candidates, key=lambda b: _kept(chat, b))
        kept = _kept(chat, best)
        if kept < len(chat):
            missing = _first_missing(chat, best)
            out.append(
                f"request {k + 1}: backend got {kept} of the {len(chat)} chat messages ST sent"
                f" in order (first missing: {_line(missing)})"
            )
    return out


def _kept(chat: list[tuple[str, str]], body: dict[str, Any]) -> int:
    """How many of `chat` appear, verbatim and in order, in the backend's messages."""
    return len(chat) - len(_missing(chat, body))


def _missing(chat: list[tuple[str, str]], body: dict[str, Any]) -> list[tuple[str, str]]:
    """`chat` messages not found, in order, among the backend's messages (greedy, in order)."""
    upstream = [(m["role"], _text(m)) for m in body.get("messages", [])]
    missing, j = [], 0
    for line in chat:
        try:
            j = upstream.index(line, j) + 1
        except ValueError:
            missing.append(line)
    return missing


def _first_missing(chat: list[tuple[str, str]], body: dict[str, Any]) -> tuple[str, str]:
    return _missing(chat, body)[0]


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _short(text: str, n: int = 60) -> str:
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _line(line: tuple[str, str]) -> str:
    return f"{line[0]} {_short(line[1])!r}"


def best_match(stored: dict[str, Stored], chat: list[dict[str, Any]], names: set[str]) -> Stored:
    """The conversation whose branch agrees with `chat` on the most messages."""

    def overlap(conv: Stored) -> int:
        want, got = displayed(chat, names), stored_lines(conv.branch(), names)
        return sum(1 for w, g in zip(want, got, strict=False) if w == g)

    return max(stored.values(), key=overlap)


@dataclass
class Evidence:
    """Everything one flow left behind: what ST showed (at the end, and after every action), what it
    sent, what Anima stored (the flow's new conversations) and what the backend received."""

    chats: list[list[dict[str, Any]]]
    seen: list[list[dict[str, Any]]]
    sent: list[Recording]
    stored: dict[str, Stored]
    upstream: list[tuple[float, dict[str, Any]]]
    names: set[str]


def flow_failures(ev: Evidence, *, conversations: int, group: bool = False) -> list[str]:
    """All checks for one flow; `conversations`: how many chats the flow made (each its own)."""
    failures: list[str] = []
    if len(ev.stored) != conversations:
        failures.append(f"{len(ev.stored)} new conversation(s) in Anima, expected {conversations}")
    for conv in ev.stored.values():
        failures += duplicates(conv, ev.names)
        failures += strays(conv, ev.chats + ev.seen, ev.sent, ev.names)
    for chat in ev.chats if ev.stored else []:
        conv = best_match(ev.stored, chat, ev.names)
        failures += branch_matches(conv, chat, ev.names)
        if group:
            failures += speakers(conv, chat, ev.names)
    return failures + forwarded(ev.sent, ev.upstream)
