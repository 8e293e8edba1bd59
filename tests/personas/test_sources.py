"""Chat exports: WhatsApp, Slack and mbox readers on real files, identity resolution, select/speakers."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest

from personas.mail_export import read_mbox, strip_reply
from personas.people import Identity, Line, RawSender, merge, resolve, select, speakers
from personas.sources import ExportError, read_export, read_slack, read_whatsapp

EXPORTS = Path(__file__).parent.parent / "fixtures" / "exports"


def texts(lines: list[Line]) -> list[tuple[str, str]]:
    return [(line.sender.key, line.text) for line in lines]


def test_read_whatsapp_android_12h() -> None:
    lines = read_export(EXPORTS / "whatsapp-android.txt")
    assert texts(lines) == [
        ("user:jane doe", "Happy new year everyone!"),
        ("user:jane doe", "Who is bringing snacks?\nChips would be great\n\nand dip too"),
        ("phone:+15551234567", "I'll bring the chips"),
        ("user:bob", "See you at 10: don't be late"),
        ("user:jane doe", "Best party ever"),
        ("phone:+15551234567", "thanks for hosting"),
    ]
    assert [line.at for line in lines[3:]] == [
        datetime(2023, 12, 31, 21, 9),
        datetime(2024, 1, 1, 0, 15),
        datetime(2024, 1, 1, 13, 30),
    ]
    phone = lines[2].sender
    assert lines[5].sender is phone  # "+1 555 123 4567" and "+1 (555) 123-4567" are one person
    assert (phone.display_name, phone.phones, phone.usernames) == (
        "+1 555 123 4567",
        frozenset({"+15551234567"}),
        frozenset(),
    )
    assert lines[0].sender.usernames == frozenset({"jane doe"})


def test_read_whatsapp_ios_24h_skips_marked_system_and_media_lines() -> None:
    lines = read_export(EXPORTS / "whatsapp-ios.txt")
    assert texts(lines) == [
        ("user:jane doe", "Happy new year!"),
        ("user:marco", "Ciao! Sto arrivando\ncon la torta"),
        ("user:marco", "Buon anno 🎉"),
    ]
    assert lines[0].at == datetime(2023, 12, 31, 21, 5, 3)
    assert lines[2].at == datetime(2024, 1, 1, 0, 1)


def test_read_whatsapp_date_order_and_placeholders() -> None:
    text = (
        "05/03/2024, 09:15 - Ana: first\n"  # no field above 12 and a 24h clock: day first
        "05/03/2024, 09:16 - Ana: <Media omitted>\n"
        "05/03/2024, 09:17 - Ana: sticker omitted\n"
        "05/03/2024, 09:18 - Ana added Ben\n"
        "continuation of a system line\n"
        "2024-03-06 10:00 - Ben: iso dates too\n"
    )
    lines = read_whatsapp(text)
    assert [(line.sender.display_name, line.text, line.at) for line in lines] == [
        ("Ana", "first", datetime(2024, 3, 5, 9, 15)),
        ("Ben", "iso dates too", datetime(2024, 3, 6, 10, 0)),
    ]
    us = read_whatsapp("3/5/24, 9:15 AM - Ana: hi\n")
    assert us[0].at == datetime(2024, 3, 5, 9, 15)  # 12-hour clock: US month/day
    assert read_whatsapp("just some text\nwithout any header\n") == []


def test_read_slack_directory() -> None:
    lines = read_export(EXPORTS / "slack")
    assert texts(lines) == [
        ("email:jane@x.org", "Morning @Bob Smith! Ready for the launch?"),
        ("phone:+15551234567", "Yes & the docs are done"),
        ("email:jane@x.org", "Posting from my other account, see #general"),
        ("user:lena", "Hi all, new here"),
        ("user:marco", "multi\nline message with a link"),
    ]
    jane = lines[0].sender
    assert lines[2].sender is jane  # U01 and U04 share an e-mail (in different case)
    assert jane == Identity(
        key="email:jane@x.org",
        display_name="Jane",
        emails=frozenset({"jane@x.org"}),
        usernames=frozenset({"jane", "u01", "jane-alt", "u04"}),
    )
    assert lines[0].at == datetime(2024, 1, 1, 10, 0, 0, 200, tzinfo=UTC)
    assert lines[3].sender.display_name == "Lena"  # known only from the message's user_profile


def test_read_slack_zip_and_single_day(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (EXPORTS / "slack").rglob("*.json"):
            zf.write(path, "My Workspace Slack export/" + path.relative_to(EXPORTS / "slack").as_posix())
    assert texts(read_export(archive)) == texts(read_export(EXPORTS / "slack"))

    day = tmp_path / "2024-01-01.json"
    shutil.copy(EXPORTS / "slack" / "general" / "2024-01-01.json", day)
    lines = read_slack(day)  # no users.json: identities come from the user id only
    assert texts(lines) == [
        ("user:u01", "Morning @U02! Ready for the launch?"),
        ("user:u02", "Yes & the docs are done"),
    ]


def test_read_mbox_strips_quotes_signature_and_decodes_headers() -> None:
    lines = read_export(EXPORTS / "mail.mbox")
    assert [(line.sender.key, line.sender.display_name, line.text) for line in lines] == [
        ("email:jane@x.org", "Jane Doe", "Hi Jose,\n\nthe launch is on Friday. Can you check the docs?"),
        ("email:jose@y.org", "José Pérez", "Perfecto, lo reviso mañana."),
        ("email:jane@x.org", "Jane Doe", "Thanks José!\nSee you Friday."),
    ]
    assert lines[0].sender is lines[2].sender  # "Jane Doe <jane@x.org>" and "J. Doe <JANE@x.org>"
    assert lines[1].at == datetime(2024, 1, 1, 11, 0, tzinfo=timezone(timedelta(0)))


def test_read_mbox_html_only_mail(tmp_path: Path) -> None:
    mail = EmailMessage()
    mail["From"] = "Ana Lima <ana@z.org>"
    mail["Date"] = "Tue, 02 Jan 2024 09:00:00 +0100"
    mail.set_content("<p>Ol&aacute;!<br>Tudo bem?</p><blockquote>old text</blockquote>", subtype="html")
    path = tmp_path / "mail"  # no extension: detected by the leading "From " line
    path.write_bytes(b"From ana@z.org Tue Jan  2 09:00:00 2024\n" + mail.as_bytes() + b"\n")
    lines = read_export(path)
    assert texts(lines) == [("email:ana@z.org", "Olá!\nTudo bem?")]
    assert lines[0].at == datetime(2024, 1, 2, 8, 0, tzinfo=UTC)
    assert read_mbox(path)[0].sender.display_name == "Ana Lima"


def test_strip_reply() -> None:
    body = (
        "Sounds good.\n\nOn Tue, Jan 2, 2024, Ana wrote:\n> earlier\n> > older\n\nInline answer\n\n-- \nAna\n"
    )
    assert strip_reply(body) == "Sounds good.\n\nInline answer"
    assert strip_reply("Yes\n\n-----Original Message-----\nFrom: x\nold") == "Yes"
    assert strip_reply("On a scale from 1 to 10: an 8") == "On a scale from 1 to 10: an 8"


def test_resolve_merges_by_email_then_phone_then_username() -> None:
    jane = RawSender("Jane Doe", emails=("jane@x.org",))
    j_doe = RawSender("J. Doe", emails=("JANE@X.org",), phones=("+1 555 000 1111",))
    by_phone = RawSender("+1 555-000-1111", phones=("+15550001111",))
    handle = RawSender("jd", usernames=("JaneD",), phones=("5550001111",))
    other = RawSender("Jane Doe", emails=("jane@other.org",), usernames=("janed",))
    ids = resolve([jane, j_doe, by_phone, handle, other])
    assert ids[jane] is ids[j_doe] is ids[by_phone]
    assert ids[jane].key == "email:jane@x.org"
    assert ids[jane].display_name == "Jane Doe"
    assert ids[jane].phones == frozenset({"+15550001111"})
    assert ids[handle] is ids[other]  # same username, and no e-mail or phone tells them apart
    assert ids[other].key == "email:jane@other.org"
    assert ids[other].phones == frozenset({"+5550001111"})  # no country code: not Jane's number


def test_resolve_weaker_evidence_does_not_join_different_emails() -> None:
    a = RawSender("Alex", emails=("alex@a.org",), usernames=("alex",))
    b = RawSender("Alex", emails=("alex@b.org",), usernames=("alex",))
    c = RawSender("Alex", phones=("+44 20 7946 0000",))
    d = RawSender("Alex", emails=("alex@c.org",), phones=("0044 20 7946 0000",))
    ids = resolve([a, b, c, d])
    assert ids[a].key == "email:alex@a.org" and ids[b].key == "email:alex@b.org"
    assert ids[c] is ids[d] and ids[c].key == "email:alex@c.org"
    assert resolve([RawSender("Only A Name")])[RawSender("Only A Name")].key == "user:only a name"


def test_merge_joins_exports_by_phone() -> None:
    lines = merge(read_export(EXPORTS / "whatsapp-android.txt"), read_export(EXPORTS / "slack"))
    bob = [line.text for line in select(lines, "+1 555 123 4567")]
    assert bob == ["I'll bring the chips", "thanks for hosting", "Yes & the docs are done"]
    assert {line.sender.key for line in select(lines, "bob.s")} == {"phone:+15551234567"}
    assert select(lines, "Bob Smith")[0].sender.display_name == "Bob Smith"


def test_select_and_speakers() -> None:
    lines = read_export(EXPORTS / "slack")
    assert [line.text for line in select(lines, "JANE@x.org")] == [
        "Morning @Bob Smith! Ready for the launch?",
        "Posting from my other account, see #general",
    ]
    assert len(select(lines, "email:jane@x.org")) == len(select(lines, "jane-alt")) == 2
    assert len(select(lines, "jane")) == 2  # the username; "Jane" is also the display name
    assert [line.text for line in select(lines, "marco")] == ["multi\nline message with a link"]
    assert select(lines, "(555) 123-4567") == []  # no country code: not Bob's number
    assert select(lines, "+15551234567")[0].sender.display_name == "Bob Smith"
    assert select(lines, "nobody") == []
    assert [(who.key, n) for who, n in speakers(lines)] == [
        ("email:jane@x.org", 2),
        ("phone:+15551234567", 1),
        ("user:lena", 1),
        ("user:marco", 1),
    ]


def test_read_export_errors(tmp_path: Path) -> None:
    def error(name: str, content: bytes | str | None) -> str:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.mkdir()
        with pytest.raises(ExportError) as exc:
            read_export(path)
        return str(exc.value)

    assert "no such file" in error("missing.txt", None)
    assert "file is empty" in error("empty.txt", b"")
    assert "unknown export format" in error("notes.doc", b"hello")
    assert "no messages found" in error("chat.txt", b"nothing here\n")
    assert "not UTF-8" in error("latin.txt", "Café".encode("latin-1"))
    assert "malformed JSON" in error("bad.json", b"[{")
    assert "expected a JSON list, got dict" in error("2024-01-01.json", b'{"a": 1}')
    assert "not a Slack export zip" in error("export.zip", b"PK not really")
    assert "not a Slack export" in error("emptydir", "dir")
    assert "no messages found" in error("box.mbox", b"not mail at all\n")
    channel = tmp_path / "c" / "2024-01-01.json"
    channel.parent.mkdir()
    channel.write_text(
        json.dumps([{"type": "message", "subtype": "channel_join", "user": "U1", "text": "x"}])
    )
    with pytest.raises(ExportError, match="no messages found"):
        read_export(tmp_path / "c")
