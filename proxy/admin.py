"""Operator commands that touch the database directly: schema upgrade, chat import, API keys."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.archive import Archive
from memory.budget import TokenCounter
from memory.db import check_pgvector, make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.importers import read_chat
from memory.recall import Fusion
from memory.users import create_key, list_keys, local_user, revoke_key, user_for_key
from memory.window import WorkingMemory
from proxy.settings import Settings

IMPORT_BATCH = 500


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured database, or the embedded one started for the duration of the command."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    server = EmbeddedPostgres(settings.data_dir)
    try:
        yield server.start()
    finally:
        server.stop()


def upgrade(settings: Settings) -> None:
    with database_url(settings) as url:
        upgrade_schema(url)
    print("database schema is up to date", file=sys.stderr)


@contextlib.asynccontextmanager
async def _sessions(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(url, pool_size=2)
    try:
        await check_pgvector(engine)
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def import_file(settings: Settings, args: argparse.Namespace) -> str:
    """Import a chat file in batches with a progress bar; embeddings follow when the server runs."""
    from tqdm import tqdm

    chat = read_chat(Path(args.file))
    if not chat.messages:
        raise ValueError("the file holds no messages")
    with database_url(settings) as url:
        if settings.database_url is None:
            await anyio.to_thread.run_sync(upgrade_schema, url)
        async with _sessions(url) as sessions:
            async with sessions.begin() as s:
                user = await user_for_key(s, args.key) if args.key else await local_user(s)
            if user is None:
                raise LookupError("no user has that API key")
            archive = Archive(
                sessions, TokenCounter(), WorkingMemory(turns=1, conversations=1), None, Fusion()
            )
            batches = [
                chat.messages[i : i + IMPORT_BATCH] for i in range(0, len(chat.messages), IMPORT_BATCH)
            ]
            with tqdm(total=len(chat.messages), unit="msg", desc="importing", file=sys.stderr) as bar:
                public_id = await archive.create(
                    user,
                    batches[0],
                    public_id=args.conversation_id,
                    title=args.title or chat.title,
                    persona=args.persona or chat.character,
                )
                bar.update(len(batches[0]))
                for batch in batches[1:]:
                    await archive.append(user, public_id, batch)
                    bar.update(len(batch))
    return public_id


async def keys_command(settings: Settings, args: argparse.Namespace) -> str:
    """`anima keys create|list|revoke`: straight on the database (the server need not run)."""
    with database_url(settings) as url:
        if settings.database_url is None:
            await anyio.to_thread.run_sync(upgrade_schema, url)
        async with _sessions(url) as sessions, sessions.begin() as s:
            if args.action == "create":
                user_id, key = await create_key(
                    s, args.name, admin=args.admin, requests_per_minute=args.rpm, tokens_per_minute=args.tpm
                )
                role = "admin key" if args.admin else "key"
                print(f"created {role} {user_id} for {args.name!r}; it is shown only now:", file=sys.stderr)
                return key
            if args.action == "revoke":
                revoked = await revoke_key(s, args.who)
                if not revoked:
                    raise LookupError(f"no active key matches {args.who!r}")
                return f"revoked {revoked} key(s); running servers stop accepting them within 10 s"
            lines = ["id\tname\tprefix\tadmin\trevoked\trpm\ttpm\tcreated"]
            for k in await list_keys(s):
                row = (k.id, k.name, k.prefix, k.admin, k.revoked, k.requests_per_minute, k.tokens_per_minute)
                lines.append(
                    "\t".join("-" if v is None else str(v) for v in row) + f"\t{k.created_at:%Y-%m-%d}"
                )
            return "\n".join(lines)
