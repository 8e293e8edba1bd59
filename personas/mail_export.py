"""mbox files read as attributed lines: the sender from From, the plain-text body without quotes and
signature."""

from __future__ import annotations

import email.policy
import html
import logging
import mailbox
import re
from datetime import datetime
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path

from personas.people import ExportError, Line, RawSender, attributed

log = logging.getLogger("anima.personas.sources")

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
    return attributed(raw)


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
