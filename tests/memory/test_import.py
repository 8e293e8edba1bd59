"""Importing chats: the file formats, and `anima import` / `anima db upgrade` against the real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.db import make_engine
from memory.importers import ImportFormatError, parse_openai, parse_sillytavern, read_chat
from memory.models import ConversationRow, MessageRow
from memory.users import create_key

FIXTURE = Path(__file__).parent.parent / "fixtures" / "sillytavern" / "chat-bob.jsonl"


def test_sillytavern_chat_file_is_read_with_roles_names_dates() -> None:
    chat = read_chat(FIXTURE)
    assert chat.character == "Bob" and chat.title == "Bob chat"
    assert [(m.role, m.name, m.content) for m in chat.messages] == [
        ("assistant", "Bob", "*Bob looks up from the anvil.* What do you want?"),
        ("user", "User", "Hello Bob, can you fix my axe?"),
        ("assistant", "Bob", "Aye, leave it here. Ten silver."),
        ("user", "User", "Deal."),
    ]  # the hidden system note is left out
    assert chat.messages[0].created_at == datetime(2026, 11, 20, 19, 12, tzinfo=UTC)
    assert chat.messages[2].created_at == datetime(2026, 11, 20, 19, 14, 5, tzinfo=UTC)
    assert chat.messages[3].created_at is not None and chat.messages[3].created_at.year == 2026
    assert chat.messages[2].metadata == {
        "sillytavern": {
            "swipes": ["Aye, leave it here. Ten silver.", "Fine."],
            "extra": {"api": "custom", "model": "local/smollm2"},
        }
    }


def test_openai_messages_json_and_bad_files() -> None:
    chat = parse_openai(
        {"title": "t", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    )
    assert [(m.role, m.content) for m in chat.messages] == [("user", "hi")] and chat.title == "t"
    assert len(parse_openai([{"role": "assistant", "content": "yo", "name": "Bot"}]).messages) == 1
    with pytest.raises(ImportFormatError, match="message 0"):
        parse_openai([{"role": "wizard", "content": "x"}])
    with pytest.raises(ImportFormatError, match="line 2"):
        parse_sillytavern('{"user_name": "u"}\n{"name": "x"}')
    with pytest.raises(ImportFormatError, match="empty"):
        parse_sillytavern("")


def run_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"ANIMA_DATABASE_URL": database_url, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, env=env, timeout=120
    )


async def test_anima_import_stores_a_sillytavern_chat(
    pg_url: str, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with sessions.begin() as s:
        user, key = await create_key(s, "importer")
    result = run_cli("import", str(FIXTURE), "--key", key, "--id", "bob-chat", database_url=pg_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bob-chat"
    async with sessions() as s:
        row = await s.scalar(select(ConversationRow).where(ConversationRow.user_id == user))
        assert row is not None and row.public_id == "bob-chat" and row.title == "Bob chat"
        n = await s.scalar(
            select(func.count()).where(MessageRow.conversation_id == row.id, MessageRow.source == "imported")
        )
    assert n == 4
    openai_file = tmp_path / "chat.json"
    openai_file.write_text(
        json.dumps({"messages": [{"role": "user", "content": f"m{i}"} for i in range(1200)]})
    )
    big = run_cli("import", str(openai_file), "--key", key, database_url=pg_url)
    assert big.returncode == 0 and "1200/1200" in big.stderr  # the progress bar reached the end
    failed = run_cli("import", str(openai_file), "--key", "anima-wrong", database_url=pg_url)
    assert failed.returncode != 0 and "no user has that API key" in failed.stderr


async def test_anima_db_upgrade_migrates_an_empty_database(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text("DROP DATABASE IF EXISTS fresh_upgrade"))
        await conn.execute(text("CREATE DATABASE fresh_upgrade"))
    await engine.dispose()
    url = pg_url.replace("/anima?", "/fresh_upgrade?")
    result = run_cli("db", "upgrade", database_url=url)
    assert result.returncode == 0, result.stderr
    fresh = make_engine(url, pool_size=1)
    async with fresh.connect() as conn:
        tables = set(await conn.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")))
        extension = await conn.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
    await fresh.dispose()
    assert {"app_user", "conversation", "message", "message_embedding", "summary", "turn_context"} <= tables
    assert extension is not None
